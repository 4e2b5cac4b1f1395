"""Katib's admission rules for Experiments, checked offline.

Katib's CRD has no schema (x-kubernetes-preserve-unknown-fields), so the
API server accepts anything and the rules live in Katib's validating
webhook (pkg/webhook/v1beta1/experiment/validator). These are the ones a
rendered Experiment can break, re-stated here so that `render` fails before
a cluster does; the trial Job itself is validated strictly as a Kubernetes
object (with every placeholder filled as Katib's webhook fills them).

Every function returns one-line problems; an empty list means valid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 40
PARAMETER_TYPES = {"double", "int", "discrete", "categorical"}
OBJECTIVE_TYPES = {"minimize", "maximize"}
COLLECTORS = {
    "StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None", "Push",
}  # fmt: skip
META_KEYS = {"Name", "Namespace", "Kind", "APIVersion"}
META_REFERENCE = re.compile(r"^\$\{trialSpec\.(.+?)\}$")
META_INDEXED = re.compile(r"^(Labels|Annotations)\[(.+)\]$")
PLACEHOLDER = re.compile(r"\$\{trialParameters\..+?\}")


def experiment_problems(exp: dict[str, Any]) -> list[str]:
    if exp.get("apiVersion") != "kubeflow.org/v1beta1" or exp.get("kind") != "Experiment":
        return ["(top level): not a kubeflow.org/v1beta1 Experiment"]
    name = str((exp.get("metadata") or {}).get("name", ""))
    spec = exp.get("spec") or {}
    problems = []
    if not NAME.fullmatch(name) or len(name) > MAX_NAME:
        problems.append(
            f"metadata.name {name[:80]!r}: lowercase letters, digits and '-', starting with a "
            f"letter, at most {MAX_NAME} characters"
        )
    problems += _count_problems(spec)
    problems += _objective_problems(spec.get("objective"))
    if not (spec.get("algorithm") or {}).get("algorithmName"):
        problems.append("spec.algorithm.algorithmName: must be specified")
    problems += _parameter_problems(spec.get("parameters") or [])
    kind = ((spec.get("metricsCollectorSpec") or {}).get("collector") or {}).get("kind", "StdOut")
    if kind not in COLLECTORS:
        problems.append(f"spec.metricsCollectorSpec.collector.kind {kind!r}: unknown collector")
    return problems + _template_problems(spec)


def _count_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    most, parallel = spec.get("maxTrialCount"), spec.get("parallelTrialCount")
    failed = spec.get("maxFailedTrialCount")
    if most is not None and most <= 0:
        problems.append(f"spec.maxTrialCount {most}: must be greater than 0")
    if parallel is not None and parallel <= 0:
        problems.append(f"spec.parallelTrialCount {parallel}: must be greater than 0")
    if failed is not None and failed < 0:
        problems.append(f"spec.maxFailedTrialCount {failed}: should not be less than 0")
    if failed is not None and most is not None and failed > most:
        problems.append(f"spec.maxFailedTrialCount {failed}: more than spec.maxTrialCount {most}")
    if parallel is not None and most is not None and parallel > most:
        problems.append(f"spec.parallelTrialCount {parallel}: more than spec.maxTrialCount {most}")
    return problems


def _objective_problems(objective: dict[str, Any] | None) -> list[str]:
    if not objective:
        return ["spec.objective: must be specified"]
    problems = []
    if objective.get("type") not in OBJECTIVE_TYPES:
        problems.append(f"spec.objective.type {objective.get('type')!r}: minimize or maximize")
    metric = objective.get("objectiveMetricName")
    if not metric:
        problems.append("spec.objective.objectiveMetricName: must be specified")
    if metric in (objective.get("additionalMetricNames") or []):
        problems.append("spec.objective.additionalMetricNames: must not hold the objective")
    return problems


def _parameter_problems(parameters: list[dict[str, Any]]) -> list[str]:
    if not parameters:
        return ["spec.parameters: must be specified"]
    problems = []
    for i, p in enumerate(parameters):
        where = f"spec.parameters[{i}]"
        kind = p.get("parameterType")
        space = p.get("feasibleSpace")
        if kind not in PARAMETER_TYPES:
            problems.append(f"{where}.parameterType {kind!r}: double, int, discrete or categorical")
        if not space:
            problems.append(f"{where}.feasibleSpace: must be specified")
            continue
        if kind in ("double", "int"):
            if space.get("list"):
                problems.append(f"{where}.feasibleSpace.list: not allowed for {kind}")
            if not space.get("max") and not space.get("min"):
                problems.append(f"{where}.feasibleSpace: max or min must be specified")
        elif kind in ("discrete", "categorical") and (space.get("max") or space.get("min")):
            problems.append(f"{where}.feasibleSpace: only list is allowed for {kind}")
    return problems


def is_meta_reference(reference: str) -> bool:
    match = META_REFERENCE.fullmatch(reference)
    if not match:
        return False
    key = match.group(1)
    return key in META_KEYS or bool(META_INDEXED.fullmatch(key))


def _template_problems(spec: dict[str, Any]) -> list[str]:
    template = spec.get("trialTemplate")
    if not template:
        return ["spec.trialTemplate: must be specified"]
    where = "spec.trialTemplate"
    problems = []
    if not template.get("primaryContainerName"):
        problems.append(f"{where}.primaryContainerName: must be specified")
    if not template.get("successCondition") or not template.get("failureCondition"):
        problems.append(f"{where}: successCondition and failureCondition must be specified")
    trial_spec = template.get("trialSpec")
    if not isinstance(trial_spec, dict):
        return [*problems, f"{where}.trialSpec: must be specified"]
    declared = {p.get("name") for p in spec.get("parameters") or []}
    text = json.dumps(trial_spec)
    names: set[str] = set()
    references: set[str] = set()
    for i, tp in enumerate(template.get("trialParameters") or []):
        at = f"{where}.trialParameters[{i}]"
        name, reference = tp.get("name", ""), tp.get("reference", "")
        if not name or not reference or "{" in name or "}" in name:
            problems.append(f"{at}: name and reference must be set; no braces in the name")
            continue
        if name in names or reference in references:
            problems.append(f"{at}: name {name!r} or reference {reference!r} is duplicated")
            continue
        names.add(name)
        references.add(reference)
        if not is_meta_reference(reference) and reference not in declared:
            problems.append(f"{at}.reference {reference!r}: not in spec.parameters")
        placeholder = f"${{trialParameters.{name}}}"
        if placeholder not in text:
            problems.append(f"{at}.name {name!r}: not used in the trialSpec")
        text = text.replace(placeholder, "test-value")
    if not template.get("trialParameters"):
        problems.append(f"{where}.trialParameters: must be specified")
    unknown = sorted(set(PLACEHOLDER.findall(text)))
    if unknown:
        problems.append(f"{where}.trialSpec: placeholders {unknown} are not trialParameters")
    # Ours, stricter than Katib: a searched parameter no trial sees is a mistake.
    unused = sorted(n for n in declared if n not in references)
    if unused:
        problems.append(f"spec.parameters {unused}: referenced by no trialParameter")
    metadata = trial_spec.get("metadata") or {}
    if metadata.get("name") or metadata.get("namespace"):
        problems.append(f"{where}.trialSpec: metadata.name and namespace must be omitted")
    if not trial_spec.get("apiVersion") or not trial_spec.get("kind"):
        problems.append(f"{where}.trialSpec: apiVersion and kind must be specified")
    return problems


def filled_trial_spec(exp: dict[str, Any]) -> dict[str, Any]:
    """The trial template with every placeholder filled, as Katib fills it."""
    template = exp["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for tp in template.get("trialParameters") or []:
        text = text.replace(f"${{trialParameters.{tp['name']}}}", "test-value")
    filled = json.loads(text)
    filled.setdefault("metadata", {})["name"] = "test-value"
    return filled


def validate_experiment(
    exp: dict[str, Any], validate_k8s: Callable[[dict[str, Any]], list[str]] | None = None
) -> list[str]:
    """Webhook rules, then the trial Job as a strict Kubernetes object."""
    problems = experiment_problems(exp)
    if problems:
        return problems
    if validate_k8s is None:
        from autolfads.argo.validate import validate_k8s_object

        validate_k8s = validate_k8s_object
    job = filled_trial_spec(exp)
    return [f"spec.trialTemplate.trialSpec: {p}" for p in validate_k8s(job)]
