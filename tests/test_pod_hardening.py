"""Every pod autolfads ships or renders runs hardened.

For each pod spec under deploy/ (Argo templates' containers, scripts and
container sets with their podSpecPatch applied, and Kubernetes Deployments,
Jobs, ...) and in workflows `autolfads argo render` prints, every container:

- runs as a non-root user (runAsNonRoot, and never runAsUser 0);
- has a read-only root filesystem, and every path it writes (HOME, TMPDIR,
  MPLCONFIGDIR, /tmp paths in its command line) lies on a mounted volume;
- drops ALL capabilities, adds none, is not privileged and cannot escalate;
- runs under the RuntimeDefault (or a Localhost) seccomp profile;
- requests CPU and memory and has a memory limit.

Pods use no host namespaces or hostPath volumes, and pods that are not Argo
steps (whose executor needs the service-account token) mount no token.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from autolfads.argo.manifests import load_documents
from autolfads.argo.render import RenderOptions, render_workflow
from autolfads.config import loads_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ARGO_KINDS = {"Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow"}
POD_TEMPLATE_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
# Environment variables that name folders a program writes into.
WRITABLE_ENV = ("HOME", "TMPDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")


@dataclass
class PodUnderTest:
    where: str  # "deploy/k8s/minio.yaml: Deployment/minio"
    spec: dict[str, Any]  # the effective pod spec
    argo_step: bool  # Argo injects its executor, which needs the SA token


# ---- finding pod specs -----------------------------------------------------------


def merge_patch(base: Any, patch: Any) -> Any:
    """Strategic-merge-style: dicts merge, container lists merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge_patch(base.get(key), value) if key in base else value
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        for item in patch:
            by_name[item["name"]] = merge_patch(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return patch


def argo_pods(doc: dict[str, Any], where: str) -> Iterator[PodUnderTest]:
    spec = doc["spec"]["workflowSpec"] if doc["kind"] == "CronWorkflow" else doc["spec"]
    for tmpl in spec.get("templates", []):
        main = tmpl.get("container") or tmpl.get("script")
        containers = [{**main, "name": "main"}] if main else []
        containers += (tmpl.get("containerSet") or {}).get("containers", [])
        if not containers:
            continue  # dag/steps/suspend/resource: no container of ours
        pod = {
            "securityContext": tmpl.get("securityContext", spec.get("securityContext", {})),
            "volumes": [*spec.get("volumes", []), *tmpl.get("volumes", [])],
            "containers": containers + tmpl.get("sidecars", []),
            "initContainers": tmpl.get("initContainers", []),
            "hostNetwork": spec.get("hostNetwork", False),
        }
        for patch in (spec.get("podSpecPatch"), tmpl.get("podSpecPatch")):
            if patch:
                pod = merge_patch(pod, yaml.safe_load(patch))
        yield PodUnderTest(f"{where}: template {tmpl['name']}", pod, argo_step=True)


def pods_of(doc: dict[str, Any], where: str) -> Iterator[PodUnderTest]:
    kind = doc.get("kind")
    if kind in ARGO_KINDS:
        yield from argo_pods(doc, where)
    elif kind in POD_TEMPLATE_PATHS:
        node: Any = doc
        for key in POD_TEMPLATE_PATHS[kind]:
            node = node[key]
        yield PodUnderTest(f"{where}: {kind}/{doc['metadata']['name']}", node, argo_step=False)


def deploy_pods() -> list[PodUnderTest]:
    found: list[PodUnderTest] = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in load_documents(path):
            found.extend(pods_of(doc, str(path.relative_to(ROOT))))
    return found


# ---- the checks --------------------------------------------------------------------


def _under(path: str, mounts: list[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(m) for m in mounts)


def written_paths(container: dict[str, Any]) -> list[str]:
    """Folders the container writes: writable-dir env vars and /tmp paths in argv."""
    paths = [
        env["value"]
        for env in container.get("env", [])
        if env.get("name") in WRITABLE_ENV and isinstance(env.get("value"), str)
    ]
    for arg in [*container.get("command", []), *container.get("args", [])]:
        paths += [word for word in str(arg).split() if word.startswith("/tmp")]
    return paths


def container_problems(c: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    sc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    problems = []
    if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
        problems.append("runAsNonRoot is not true")
    if sc.get("runAsUser", psc.get("runAsUser")) == 0:
        problems.append("runAsUser is 0 (root)")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        problems.append("privileged")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append("capabilities.drop lacks ALL")
    if caps.get("add"):
        problems.append(f"capabilities.add {caps['add']}")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(f"seccompProfile is {seccomp!r}, not RuntimeDefault")
    res = c.get("resources") or {}
    for section, name in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
        if not (res.get(section) or {}).get(name):
            problems.append(f"resources.{section}.{name} is not set")
    mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
    for path in written_paths(c):
        if not _under(path, mounts):
            problems.append(f"writes {path}, which is on the read-only root filesystem")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            problems.append(f"mounts undeclared volume {m['name']!r}")
    return problems


def pod_problems(pod: PodUnderTest) -> list[str]:
    spec = pod.spec
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is true")
    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"hostPath volume {volume['name']!r}")
    if not pod.argo_step and spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken is not false (no API access needed)")
    containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
    if not containers:
        problems.append("no containers")
    for c in containers:
        problems += [f"container {c.get('name')}: {p}" for p in container_problems(c, spec)]
    return [f"{pod.where}: {p}" for p in problems]


def all_problems(pods: list[PodUnderTest]) -> list[str]:
    return [problem for pod in pods for problem in pod_problems(pod)]


# ---- the shipped manifests -------------------------------------------------------------


def test_every_pod_under_deploy_is_hardened() -> None:
    assert all_problems(deploy_pods()) == []


def test_the_check_sees_every_pod_we_ship() -> None:
    # Guards the walker: a pod it cannot find would pass unchecked.
    where = {pod.where for pod in deploy_pods()}
    wt = "deploy/argo/workflowtemplate.yaml: template "
    for name in ("stage", "coordinator", "trainer", "finalize", "report"):
        assert wt + name in where
    assert "deploy/k8s/minio.yaml: Deployment/minio" in where
    assert "deploy/k8s/minio-bucket-job.yaml: Job/minio-make-bucket" in where


def test_trainer_resources_come_from_the_pod_spec_patch() -> None:
    trainer = next(p for p in deploy_pods() if p.where.endswith("template trainer"))
    main = next(c for c in trainer.spec["containers"] if c["name"] == "main")
    assert main["resources"]["limits"]["memory"] == "{{workflow.parameters.trainer-memory}}"


# ---- rendered workflows ------------------------------------------------------------------

CONFIG = loads_config(
    "name: hardened\ndata: {path: /tmp/autolfads/data/x.h5, synth: {kind: lorenz}}\n"
)


@pytest.mark.parametrize(
    "opts",
    [
        RenderOptions(inline=True),
        RenderOptions(inline=True, trainer_gpus=1, trainer_cpu="4", trainer_memory="16Gi"),
        RenderOptions(inline=True, stage=False, n_trainers=2),
        RenderOptions(inline=True, kubeflow=True, namespace="kubeflow-user-example-com"),
    ],
    ids=["default", "gpu", "no-stage", "kubeflow"],
)
def test_rendered_workflows_are_hardened(opts: RenderOptions) -> None:
    workflow = render_workflow(CONFIG, opts)
    pods = list(pods_of(workflow, "rendered"))
    assert len(pods) >= 5
    assert all_problems(pods) == []


# ---- the check itself catches regressions -------------------------------------------------


def _wt() -> dict[str, Any]:
    docs = load_documents(DEPLOY / "argo" / "workflowtemplate.yaml")
    return copy.deepcopy(docs[0])


def _tmpl(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["spec"]["templates"] if t["name"] == name)


def _deployment() -> dict[str, Any]:
    docs = load_documents(DEPLOY / "k8s" / "minio.yaml")
    return copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))


def _minio(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _set(container: dict[str, Any], key: str, value: Any) -> None:
    # The YAML anchors share one securityContext; copy before changing one.
    container["securityContext"] = {**container["securityContext"], key: value}


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


# name: (manifest to start from, how to break it, what the check must say)
REGRESSIONS: dict[str, tuple[Callable[[], dict], Callable[[dict], Any], str]] = {
    "root user": (
        _wt,
        lambda d: _set(_tmpl(d, "stage")["container"], "runAsUser", 0),
        "runAsUser is 0",
    ),
    "no runAsNonRoot": (
        _wt,
        lambda d: d["spec"]["securityContext"].pop("runAsNonRoot"),
        "runAsNonRoot",
    ),
    "writable root": (
        _wt,
        lambda d: _set(_tmpl(d, "coordinator")["container"], "readOnlyRootFilesystem", False),
        "readOnlyRootFilesystem",
    ),
    "escalation": (
        _wt,
        lambda d: _set(_tmpl(d, "report")["container"], "allowPrivilegeEscalation", True),
        "allowPrivilegeEscalation",
    ),
    "capability added": (
        _wt,
        lambda d: _set(
            _tmpl(d, "trainer")["container"],
            "capabilities",
            {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        ),
        "capabilities.add",
    ),
    "capabilities kept": (
        _wt,
        lambda d: _set(_tmpl(d, "finalize")["container"], "capabilities", {}),
        "drop lacks ALL",
    ),
    "privileged": (
        _wt,
        lambda d: _set(_tmpl(d, "stage")["container"], "privileged", True),
        "privileged",
    ),
    "no seccomp": (
        _wt,
        lambda d: d["spec"]["securityContext"].pop("seccompProfile"),
        "seccompProfile",
    ),
    "no coordinator resources": (
        _wt,
        # Its podSpecPatch sets them too (scaled with the relays): both gone.
        lambda d: (
            _tmpl(d, "coordinator")["container"].pop("resources"),
            _tmpl(d, "coordinator").pop("podSpecPatch"),
        ),
        "resources.limits.memory",
    ),
    "no trainer patch": (
        _wt,
        lambda d: _tmpl(d, "trainer").pop("podSpecPatch"),
        "resources.limits.memory",
    ),
    "no temp volume": (
        _wt,
        lambda d: _tmpl(d, "stage")["container"].pop("volumeMounts"),
        "read-only root filesystem",
    ),
    "host network": (_deployment, lambda d: _pod(d).update(hostNetwork=True), "hostNetwork"),
    "hostPath volume": (
        _deployment,
        lambda d: _pod(d)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostPath",
    ),
    "token mounted": (
        _deployment,
        lambda d: _pod(d).pop("automountServiceAccountToken"),
        "automountServiceAccountToken",
    ),
    "minio writable root": (
        _deployment,
        lambda d: _set(_minio(d), "readOnlyRootFilesystem", None),
        "readOnlyRootFilesystem",
    ),
    "minio home on the root filesystem": (
        _deployment,
        lambda d: _minio(d)["volumeMounts"].pop(),
        "writes /tmp",
    ),
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_the_check_catches_each_regression(case: str) -> None:
    load, breaks, fragment = REGRESSIONS[case]
    doc = load()
    assert all_problems(list(pods_of(doc, "before"))) == []
    breaks(doc)
    problems = all_problems(list(pods_of(doc, "mutated")))
    assert any(fragment in p for p in problems), problems
