"""Semantic checks of Argo objects that no schema expresses.

Run after the schema check (validate.py). Finds what Argo itself would only
report at submit or run time: a missing entrypoint, a dangling template or
task reference, a parameter used but never declared, a value outside an
enum, and embedded Kubernetes manifests that would not validate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml

from autolfads.argo import depends
from autolfads.argo.manifests import (
    ManifestError,
    placeholders,
    resolve_workflow,
    substitute,
    templates_by_name,
    walk_strings,
)

POD_GC_STRATEGIES = {
    "OnPodCompletion",
    "OnPodSuccess",
    "OnWorkflowCompletion",
    "OnWorkflowSuccess",
}
RETRY_POLICIES = {"Always", "OnFailure", "OnError", "OnTransientError"}
RESOURCE_ACTIONS = {"get", "create", "apply", "delete", "replace", "patch"}
# Variables Argo defines everywhere (the ones a manifest may reasonably use).
GLOBAL_VARIABLES = {
    "workflow.name",
    "workflow.namespace",
    "workflow.uid",
    "workflow.serviceAccountName",
    "workflow.mainEntrypoint",
    "workflow.status",
    "workflow.failures",
    "workflow.duration",
    "workflow.creationTimestamp",
    "workflow.priority",
    "pod.name",
    "retries",
    "node.name",
}
SAMPLE_GLOBALS = {
    "workflow.name": "autolfads-x7k2p",
    "workflow.namespace": "autolfads",
    "workflow.uid": "00000000-0000-0000-0000-000000000000",
    "pod.name": "autolfads-x7k2p-trainer-1234567890",
    "retries": "0",
    "item": "0",
}
K8sValidator = Callable[[dict[str, Any]], list[str]]


def sample_lookup(
    spec: dict[str, Any], template: dict[str, Any] | None = None
) -> Callable[[str], str | None]:
    """Plausible values for every variable: declared values, else defaults,
    else a sample; used to check what a placeholder expands to."""
    workflow_params = {
        p["name"]: str(p.get("value", p.get("default", "sample")))
        for p in spec.get("arguments", {}).get("parameters", [])
    }
    inputs = {
        p["name"]: str(p.get("value", p.get("default", "0")))
        for p in (template or {}).get("inputs", {}).get("parameters", [])
    }

    def lookup(name: str) -> str | None:
        if name.startswith("workflow.parameters."):
            return workflow_params.get(name.removeprefix("workflow.parameters."))
        if name.startswith("inputs.parameters."):
            return inputs.get(name.removeprefix("inputs.parameters."))
        return SAMPLE_GLOBALS.get(name)

    return lookup


def check_argo_object(
    obj: dict[str, Any], templates: dict[str, dict[str, Any]], k8s: K8sValidator
) -> list[str]:
    kind = obj["kind"]
    spec = obj.get("spec", {})
    if kind == "CronWorkflow":
        return check_spec(spec.get("workflowSpec", {}), k8s, need_entrypoint=True)
    ref = spec.get("workflowTemplateRef")
    if ref is None:
        return check_spec(spec, k8s, need_entrypoint=kind == "Workflow")
    if ref.get("clusterScope"):
        return ["spec.workflowTemplateRef: ClusterWorkflowTemplates are not validated here"]
    target = templates.get(ref.get("name", ""))
    if target is None:
        return [f"spec.workflowTemplateRef: WorkflowTemplate {ref.get('name')!r} not found"]
    declared = {p["name"] for p in target["spec"].get("arguments", {}).get("parameters", [])}
    problems = [
        f"spec.arguments.parameters: {p['name']!r} is not a parameter of "
        f"WorkflowTemplate {ref['name']!r}"
        for p in spec.get("arguments", {}).get("parameters", [])
        if p["name"] not in declared
    ]
    try:
        resolved = resolve_workflow(obj, target)
    except ManifestError as err:
        return [*problems, str(err)]
    return problems + check_spec(resolved["spec"], k8s, need_entrypoint=True)


def check_spec(spec: dict[str, Any], k8s: K8sValidator, *, need_entrypoint: bool) -> list[str]:
    problems: list[str] = []
    names = [t.get("name") for t in spec.get("templates", [])]
    by_name = templates_by_name(spec)
    problems += [f"templates: duplicate name {n!r}" for n in set(names) if names.count(n) > 1]
    entry = spec.get("entrypoint")
    if entry is None and need_entrypoint:
        problems.append("spec.entrypoint: missing")
    elif entry is not None and entry not in by_name:
        problems.append(f"spec.entrypoint: template {entry!r} does not exist")
    if spec.get("onExit") and spec["onExit"] not in by_name:
        problems.append(f"spec.onExit: template {spec['onExit']!r} does not exist")
    strategy = spec.get("podGC", {}).get("strategy")
    if strategy is not None and strategy not in POD_GC_STRATEGIES:
        problems.append(
            f"spec.podGC.strategy: {strategy!r} is not one of {sorted(POD_GC_STRATEGIES)}"
        )
    problems += check_parameters(spec)
    problems += check_retry(spec.get("retryStrategy"), "spec.retryStrategy")
    declared = {p["name"] for p in spec.get("arguments", {}).get("parameters", [])}
    for template in spec.get("templates", []):
        where = f"templates[{template.get('name')}]"
        problems += [f"{where}.{p}" for p in check_template(template, spec, by_name, k8s)]
        problems += [
            f"{where}.{p}" for p in check_variables(template, declared, spec.get("templates", []))
        ]
    return problems


def check_parameters(spec: dict[str, Any]) -> list[str]:
    problems = []
    for param in spec.get("arguments", {}).get("parameters", []):
        enum = param.get("enum")
        value = param.get("value", param.get("default"))
        if enum and value is not None and str(value) not in enum:
            problems.append(
                f"spec.arguments.parameters[{param['name']}]: {value!r} is not one of {enum}"
            )
    return problems


def check_retry(retry: dict[str, Any] | None, where: str) -> list[str]:
    policy = (retry or {}).get("retryPolicy")
    if policy is not None and policy not in RETRY_POLICIES:
        return [f"{where}.retryPolicy: {policy!r} is not one of {sorted(RETRY_POLICIES)}"]
    return []


def check_template(
    template: dict[str, Any],
    spec: dict[str, Any],
    by_name: dict[str, dict[str, Any]],
    k8s: K8sValidator,
) -> list[str]:
    problems = check_retry(template.get("retryStrategy"), "retryStrategy")
    for kind in ("container", "script"):
        if kind in template and not template[kind].get("image"):
            problems.append(f"{kind}.image: missing")
    lookup = sample_lookup(spec, template)
    resource = template.get("resource")
    if resource is not None:
        problems += check_resource(resource, lookup, k8s)
    if "podSpecPatch" in template:
        try:
            patch = json.loads(substitute(template["podSpecPatch"], lookup))
        except json.JSONDecodeError as err:
            patch = None
            problems.append(f"podSpecPatch: not valid JSON after substitution ({err.msg})")
        if patch is not None and not isinstance(patch, dict):
            problems.append("podSpecPatch: must be a JSON object")
    tasks = template.get("dag", {}).get("tasks", [])
    steps = [s for group in template.get("steps", []) for s in group]
    problems += check_tasks(tasks, by_name, "dag.tasks", dag=True)
    problems += check_tasks(steps, by_name, "steps", dag=False)
    problems += check_items(tasks, "dag.tasks") + check_items(steps, "steps")
    return problems


def check_resource(
    resource: dict[str, Any], lookup: Callable[[str], str | None], k8s: K8sValidator
) -> list[str]:
    problems = []
    if resource.get("action") not in RESOURCE_ACTIONS:
        problems.append(f"resource.action: {resource.get('action')!r} is not a valid action")
    if "manifest" in resource:
        try:
            manifest = yaml.safe_load(substitute(resource["manifest"], lookup))
        except yaml.YAMLError:
            return [*problems, "resource.manifest: not valid YAML after substitution"]
        if not isinstance(manifest, dict):
            return [*problems, "resource.manifest: not a mapping"]
        problems += [f"resource.manifest: {p}" for p in k8s(manifest)]
    return problems


def check_tasks(
    tasks: list[dict[str, Any]], by_name: dict[str, dict[str, Any]], where: str, *, dag: bool
) -> list[str]:
    problems = []
    names = {t["name"] for t in tasks}
    for task in tasks:
        at = f"{where}[{task['name']}]"
        target = task.get("template")
        if "templateRef" in task or "inline" in task:
            continue  # cross-template references are resolved by check_argo_object
        if target not in by_name:
            problems.append(f"{at}.template: {target!r} does not exist")
            continue
        problems += check_arguments(task, by_name[target], at)
        if not dag:
            continue
        deps = list(task.get("dependencies", []))
        if "depends" in task:
            try:
                deps += depends.task_names(task["depends"])
            except depends.DependsError as err:
                problems.append(f"{at}.depends: {err}")
        problems += [f"{at}.depends: task {d!r} does not exist" for d in deps if d not in names]
        problems += check_aggregates(task, tasks, at)
    return problems


def check_aggregates(task: dict[str, Any], tasks: list[dict[str, Any]], at: str) -> list[str]:
    """AnySucceeded/AllFailed only of a task that loops (Argo refuses others)."""
    loops = ("withItems", "withSequence", "withParam")
    by_name = {t["name"]: t for t in tasks}
    try:
        tokens = depends.tokenize(task.get("depends", ""))
    except depends.DependsError:
        return []  # reported above
    problems = []
    for token in tokens:
        if "." not in token:
            continue
        name, result = token.split(".", 1)
        target = by_name.get(name)
        if result in depends.AGGREGATE_RESULTS and target and not any(k in target for k in loops):
            problems.append(
                f"{at}.depends: {token} needs a task with withItems/withSequence/withParam"
            )
    return problems


def check_arguments(task: dict[str, Any], target: dict[str, Any], at: str) -> list[str]:
    inputs = target.get("inputs", {}).get("parameters", [])
    accepted = {p["name"] for p in inputs}
    given = {p["name"] for p in task.get("arguments", {}).get("parameters", [])}
    problems = [
        f"{at}.arguments: {name!r} is not an input of template {target['name']!r}"
        for name in sorted(given - accepted)
    ]
    required = {p["name"] for p in inputs if "value" not in p and "default" not in p}
    problems += [
        f"{at}.arguments: input {name!r} of template {target['name']!r} is not given"
        for name in sorted(required - given)
    ]
    return problems


def check_variables(
    template: dict[str, Any], declared: set[str], all_templates: list[dict[str, Any]]
) -> list[str]:
    """Every `{{...}}` in a template names something that exists there."""
    inputs = template.get("inputs", {})
    in_params = {p["name"] for p in inputs.get("parameters", [])}
    in_artifacts = {a["name"] for a in inputs.get("artifacts", [])}
    tasks = {t["name"] for t in template.get("dag", {}).get("tasks", [])}
    steps = {s["name"] for group in template.get("steps", []) for s in group}
    global_outputs = {
        p.get("globalName")
        for t in all_templates
        for p in t.get("outputs", {}).get("parameters", [])
    }
    problems = []
    for path, text in walk_strings(template):
        for var in placeholders(text):
            problem = classify(var, path, declared, in_params, in_artifacts, tasks, steps)
            published = var.removeprefix("workflow.outputs.parameters.") in global_outputs
            if var.startswith("workflow.outputs.parameters.") and not published:
                problem = "no template publishes this global output"
            if problem:
                problems.append(f"{path}: {{{{{var}}}}}: {problem}")
    return problems


def classify(
    var: str,
    path: str,
    declared: set[str],
    in_params: set[str],
    in_artifacts: set[str],
    tasks: set[str],
    steps: set[str],
) -> str | None:
    """None if `var` is defined where it is used, else why not."""
    head, _, rest = var.partition(".")
    if var in GLOBAL_VARIABLES or var.startswith("workflow.outputs."):
        return None
    if var.startswith("workflow.parameters."):
        name = var.removeprefix("workflow.parameters.")
        return None if name in declared else "workflow parameter not declared in spec.arguments"
    if var.startswith("inputs.parameters."):
        name = var.removeprefix("inputs.parameters.")
        return None if name in in_params else "input parameter not declared in inputs.parameters"
    if var.startswith("inputs.artifacts."):
        name = var.removeprefix("inputs.artifacts.").split(".")[0]
        return None if name in in_artifacts else "input artifact not declared"
    if head in {"tasks", "steps"}:
        pool = tasks if head == "tasks" else steps
        return None if rest.split(".")[0] in pool else f"no {head[:-1]} of that name here"
    if head == "item":
        # Inside a task or step the loop check is done per task (check_items).
        if path.startswith(("dag.tasks[", "steps[")):
            return None
        return "{{item}} outside a withItems/withSequence/withParam task"
    return "unknown variable"


def check_items(tasks: list[dict[str, Any]], where: str) -> list[str]:
    """{{item}} only in tasks or steps that loop."""
    loops = ("withItems", "withSequence", "withParam")
    problems = []
    for task in tasks:
        if any(k in task for k in loops):
            continue
        for path, text in walk_strings(task):
            if any(v == "item" or v.startswith("item.") for v in placeholders(text)):
                problems.append(
                    f"{where}[{task['name']}].{path}: {{{{item}}}} in a task without "
                    "withItems/withSequence/withParam"
                )
    return problems
