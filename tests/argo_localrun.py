"""Run a rendered Workflow's steps as local processes, in the order Argo would.

This is the command-level end-to-end harness: it takes the same Workflow
`autolfads argo render` prints, resolves its WorkflowTemplate, substitutes the
parameters, and executes the entrypoint DAG with the exact `command` + `args`
of every container. It plays the parts of Argo and Kubernetes that the
commands rely on, and only those:

- DAG scheduling: `depends` (with AnySucceeded/AllFailed of fan-outs),
  `when`, `withSequence`/`withItems` fan-out run concurrently, `retryStrategy`
  (limit, retryPolicy for exits, backoff scaled by `backoff_scale`),
  `spec.parallelism`, the workflow deadline; the finished workflow's phase as
  Argo assesses it from the DAG's leaves, `continueOn` included
  (`autolfads.argo.depends.dag_phase`).
- Pods: env (`value`, `secretKeyRef` from `secrets`), the emptyDir mounted at
  /tmp/autolfads becomes a fresh folder per pod attempt, raw and key-only S3
  input artifacts, output parameters (`valueFrom.path`, `globalName`), output
  artifacts (tar.gz into the artifact repository bucket, Argo's default).
- Services: a `resource` template creating a Service is validated and then
  routed on loopback: the pods it selects listen on 127.0.0.1:<free port> in
  place of 0.0.0.0:<targetPort>, and `<service>.<namespace>.svc:<port>` in any
  argument becomes that address. This is the only rewriting of a command line.

Not emulated: images, resources, probes, security contexts, pod GC, envFrom
(the Secrets of gRPC tokens: the coordinator listens on loopback without them).
"""

from __future__ import annotations

import io
import os
import random
import signal
import socket
import string
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autolfads.argo import depends
from autolfads.argo.manifests import (
    load_workflow_template,
    parameter_values,
    resolve_workflow,
    substitute,
    templates_by_name,
)
from autolfads.argo.validate import validate_k8s_object
from autolfads.errors import AutolfadsError

POD_MOUNT = "/tmp/autolfads"  # the emptyDir every template mounts


class LocalRunError(AutolfadsError):
    """The Workflow cannot be run locally as written."""


@dataclass(frozen=True)
class ArtifactRepo:
    """The S3 artifact repository (a `minio.Minio` client, a bucket, a key format)."""

    client: Any
    bucket: str
    key_format: str = "{{workflow.name}}/{{pod.name}}"


@dataclass
class Fault:
    """Kill one pod attempt of `task` (optionally only item `item`) with `sig`
    once `trigger()` is true: an eviction, node loss or crash, as a test sees it.
    `then()`, if given, runs right after the signal was sent."""

    task: str
    trigger: Callable[[], bool]
    item: str | None = None
    sig: int = signal.SIGKILL
    then: Callable[[], None] | None = None
    fired: bool = False


@dataclass
class PodRecord:
    task: str
    item: str | None
    attempt: int
    args: list[str]
    exit_code: int | None = None
    log: Path | None = None


@dataclass
class LocalRunResult:
    name: str
    phase: str
    message: str = ""
    results: dict[str, set[str]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    pods: list[PodRecord] = field(default_factory=list)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def evaluate_when(expr: str) -> bool:
    """Argo `when` after substitution; our manifests use `a == b` / `a != b`."""
    for op in ("!=", "=="):
        if op in expr:
            lhs, rhs = (s.strip().strip("'\"") for s in expr.split(op, 1))
            return (lhs == rhs) == (op == "==")
    raise LocalRunError(f"when {expr!r}: only `a == b` and `a != b` run locally")


class LocalWorkflowRun:
    """One execution of a Workflow object; call `run()` once."""

    def __init__(
        self,
        workflow: dict[str, Any],
        *,
        workdir: Path,
        artifacts: ArtifactRepo,
        secrets: dict[str, dict[str, str]],
        faults: list[Fault] | None = None,
        backoff_scale: float = 0.02,
        deadline_s: float | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        template = load_workflow_template()
        self.workflow = resolve_workflow(workflow, template)
        self.spec = self.workflow["spec"]
        meta = self.workflow.get("metadata", {})
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        self.name = meta.get("name") or f"{meta.get('generateName', 'wf-')}{suffix}"
        self.namespace = meta.get("namespace", "default")
        self.params = parameter_values(self.spec.get("arguments", {}).get("parameters"))
        self.templates = templates_by_name(self.spec)
        self.workdir, self.repo, self.secrets = workdir, artifacts, secrets
        self.faults = faults or []
        self.backoff_scale = backoff_scale
        deadline = self.spec.get("activeDeadlineSeconds")
        self.deadline = time.monotonic() + (deadline_s or deadline or 24 * 3600)
        self.extra_env = extra_env or {}
        self.result = LocalRunResult(name=self.name, phase="Running")
        self.routes: dict[str, str] = {}  # "svc.ns.svc:port" -> "127.0.0.1:port"
        self.listeners: list[tuple[dict[str, str], int, str]] = []  # selector, port, local
        self.slots = threading.Semaphore(int(self.spec.get("parallelism", 1000)))
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.live: dict[int, tuple[str, str | None, subprocess.Popen[bytes]]] = {}

    # -- variables -----------------------------------------------------------
    def lookup(self, extra: dict[str, str]) -> Callable[[str], str | None]:
        def find(name: str) -> str | None:
            if name in extra:
                return extra[name]
            if name.startswith("workflow.parameters."):
                return self.params.get(name.removeprefix("workflow.parameters."))
            return {"workflow.name": self.name, "workflow.namespace": self.namespace}.get(name)

        return find

    # -- DAG -------------------------------------------------------------------
    def run(self) -> LocalRunResult:
        entry = self.templates[self.spec["entrypoint"]]
        if "dag" not in entry:
            raise LocalRunError(f"entrypoint {entry['name']!r}: only DAG templates run locally")
        watcher = threading.Thread(target=self._watch_faults, daemon=True)
        watcher.start()
        try:
            self._run_dag(entry["dag"]["tasks"])
        finally:
            self.stopping.set()
            self._kill_all()
        return self.result

    def _run_dag(self, tasks: list[dict[str, Any]]) -> None:
        pending = {t["name"]: t for t in tasks}
        running: dict[str, threading.Thread] = {}
        results = self.result.results
        while pending or running:
            for name, thread in list(running.items()):
                if not thread.is_alive():
                    del running[name]
            for name, task in list(pending.items()):
                decided = self._decide(task, results)
                if decided is None:
                    continue
                del pending[name]
                if decided is False:
                    results[name] = {"Omitted"}
                    continue
                thread = threading.Thread(target=self._run_task, args=(task,), daemon=True)
                running[name] = thread
                thread.start()
            if time.monotonic() > self.deadline:
                self._finish("Failed", "Step exceeded its deadline")
                return
            time.sleep(0.05)
        self._conclude(tasks)

    def _decide(self, task: dict[str, Any], results: dict[str, set[str]]) -> bool | None:
        """None while undecided; True to run; False to omit."""
        expr = task.get("depends")
        if expr is None:
            names = task.get("dependencies", [])
            expr = " && ".join(names) if names else None
        if expr is None:
            return True
        if any(n not in results for n in depends.task_names(expr)):
            return None
        return depends.evaluate(expr, results)

    def _conclude(self, tasks: list[dict[str, Any]]) -> None:
        """The workflow's phase as Argo assesses a finished DAG (its leaves)."""
        if self.result.phase != "Running":
            return
        phase = depends.dag_phase(tasks, self.result.results)
        if phase == "Succeeded":
            self._finish("Succeeded")
            return
        failed = [
            t["name"]
            for t in tasks
            if self.result.results.get(t["name"], set()) & {"Failed", "Errored"}
        ]
        self._finish("Failed", f"{phase}: failed tasks {', '.join(failed)}")

    def _finish(self, phase: str, message: str = "") -> None:
        with self.lock:
            if self.result.phase == "Running":
                self.result.phase, self.result.message = phase, message

    # -- tasks -----------------------------------------------------------------
    def _run_task(self, task: dict[str, Any]) -> None:
        try:
            self._run_task_pods(task)
        except Exception as err:  # a broken template is an Argo "Error" node
            self.result.results[task["name"]] = {"Errored", "AllFailed"}
            self._finish("Error", f"task {task['name']}: {err}")

    def _run_task_pods(self, task: dict[str, Any]) -> None:
        name = task["name"]
        when = task.get("when")
        if when and not evaluate_when(substitute(when, self.lookup({}))):
            self.result.results[name] = {"Skipped"}
            return
        items = self._items(task)
        outcomes: list[bool] = []
        threads = [
            threading.Thread(target=lambda i=i: outcomes.append(self._run_pod(task, i)))
            for i in items
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ok = all(outcomes)
        got = {"Succeeded"} if ok else {"Failed"}
        if any(outcomes):
            got.add("AnySucceeded")
        if not any(outcomes):
            got.add("AllFailed")
        self.result.results[name] = got

    def _items(self, task: dict[str, Any]) -> list[str | None]:
        if "withSequence" in task:
            seq = substitute(task["withSequence"], self.lookup({}))
            start = int(seq.get("start", 0))
            end = int(seq["end"]) if "end" in seq else start + int(seq["count"]) - 1
            return [str(i) for i in range(start, end + 1)]
        if "withItems" in task:
            return [str(i) for i in task["withItems"]]
        return [None]

    def _run_pod(self, task: dict[str, Any], item: str | None) -> bool:
        """All attempts of one pod (retryStrategy); True if one succeeded."""
        template = self.templates[task["template"]]
        extra = {} if item is None else {"item": item}
        args = {
            f"inputs.parameters.{p['name']}": substitute(str(p["value"]), self.lookup(extra))
            for p in task.get("arguments", {}).get("parameters", [])
        }
        retry = template.get("retryStrategy", {})
        limit = int(substitute(str(retry.get("limit", 0)), self.lookup({})))
        # A command's non-zero exit is a failure (not an error): retried under
        # Always and OnFailure (the default) only.
        if retry.get("retryPolicy", "OnFailure") not in ("Always", "OnFailure"):
            limit = 0
        backoff = retry.get("backoff", {})
        delay = _seconds(backoff.get("duration", "1s"))
        for attempt in range(limit + 1):
            if self.stopping.is_set():
                return False
            if "resource" in template:
                ok = self._create_resource(template)
            else:
                ok = self._run_container(task["name"], template, item, attempt, args)
            if ok:
                return True
            time.sleep(delay * self.backoff_scale)
            delay *= float(backoff.get("factor", 1))
            if "cap" in backoff:
                delay = min(delay, _seconds(backoff["cap"]))
        return False

    # -- resource templates (Services) ----------------------------------------
    def _create_resource(self, template: dict[str, Any]) -> bool:
        manifest = yaml.safe_load(substitute(template["resource"]["manifest"], self.lookup({})))
        problems = validate_k8s_object(manifest)
        if problems:
            raise LocalRunError(f"resource template {template['name']}: {problems[0]}")
        if manifest["kind"] != "Service":
            raise LocalRunError(f"resource template {template['name']}: only Services run locally")
        name = manifest["metadata"]["name"]
        for port in manifest["spec"]["ports"]:
            local = f"127.0.0.1:{free_port()}"
            for host in (f"{name}.{self.namespace}.svc", f"{name}.{self.namespace}", name):
                self.routes[f"{host}:{port['port']}"] = local
            target = port.get("targetPort", port["port"])
            self.listeners.append((manifest["spec"]["selector"], target, local))
        return True

    def _route(self, arg: str, labels: dict[str, str], ports: dict[str, int]) -> str:
        for selector, target, local in self.listeners:
            number = ports.get(target, target) if isinstance(target, str) else target
            selected = all(labels.get(k) == v for k, v in selector.items())
            if selected and arg == f"0.0.0.0:{number}":
                return local
        if arg.startswith("0.0.0.0:"):
            # A port no Service routes to (a probe's): the pod's own, here a
            # free loopback port, never a fixed one on every interface.
            return f"127.0.0.1:{free_port()}"
        return self.routes.get(arg, arg)

    # -- container templates -----------------------------------------------------
    def _run_container(
        self,
        task: str,
        template: dict[str, Any],
        item: str | None,
        attempt: int,
        inputs: dict[str, str],
    ) -> bool:
        pod = f"{self.name}-{task}-{item or 0}-{attempt}"
        values = {**inputs, "pod.name": pod, "retries": str(attempt)}
        tmpl = substitute(template, self.lookup(values))
        root = self.workdir / pod
        root.mkdir(parents=True)
        container = tmpl["container"]
        labels = {
            **self.spec.get("podMetadata", {}).get("labels", {}),
            **tmpl.get("metadata", {}).get("labels", {}),
            "workflows.argoproj.io/workflow": self.name,
        }
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        argv = [*container.get("command", []), *container.get("args", [])]
        argv = [self._route(a, labels, ports) for a in argv]
        log_path = root / "log.txt"
        record = PodRecord(task, item, attempt, argv, log=log_path)
        self.result.pods.append(record)
        self._load_inputs(tmpl, root)
        env = self._env(container, root)
        local = [_mount(a, root) for a in argv]
        if local and local[0] == "autolfads":
            local = [sys.executable, "-m", "autolfads", *local[1:]]
        elif local and local[0] == "python":  # the image's interpreter
            local = [sys.executable, *local[1:]]
        with self.slots, open(log_path, "wb") as log:
            if self.stopping.is_set():
                return False
            proc = subprocess.Popen(local, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.live[proc.pid] = (task, item, proc)
            try:
                record.exit_code = self._wait(proc)
            finally:
                self.live.pop(proc.pid, None)
        if record.exit_code != 0:
            return False
        return self._save_outputs(tmpl, root, pod)

    def _wait(self, proc: subprocess.Popen[bytes]) -> int:
        while proc.poll() is None:
            if time.monotonic() > self.deadline:
                proc.kill()
            time.sleep(0.05)
        return int(proc.returncode)

    def _env(self, container: dict[str, Any], root: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in {"PATH", "PYTHONPATH", "SYSTEMROOT"}}
        env.update(self.extra_env)
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = _mount(str(var["value"]), root)
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            try:
                env[var["name"]] = self.secrets[ref["name"]][ref["key"]]
            except KeyError:
                raise LocalRunError(
                    f"secret {ref['name']}/{ref['key']} missing (CreateContainerConfigError)"
                ) from None
        return env

    def _load_inputs(self, tmpl: dict[str, Any], root: Path) -> None:
        for art in tmpl.get("inputs", {}).get("artifacts", []):
            path = Path(_mount(art["path"], root))
            path.parent.mkdir(parents=True, exist_ok=True)
            if "raw" in art:
                path.write_text(art["raw"]["data"], encoding="utf-8")
            elif "s3" in art and set(art["s3"]) == {"key"}:
                self.repo.client.fget_object(self.repo.bucket, art["s3"]["key"], str(path))
            else:
                raise LocalRunError(f"input artifact {art['name']}: only raw and key-only s3")

    def _save_outputs(self, tmpl: dict[str, Any], root: Path, pod: str) -> bool:
        outputs = tmpl.get("outputs", {})
        for param in outputs.get("parameters", []):
            path = Path(_mount(param["valueFrom"]["path"], root))
            if not path.is_file():
                return False  # Argo fails the node when an output file is missing
            value = path.read_text(encoding="utf-8")
            if "globalName" in param:
                self.result.outputs[param["globalName"]] = value
        prefix = substitute(
            self.repo.key_format, self.lookup({"pod.name": pod, "workflow.name": self.name})
        )
        for art in outputs.get("artifacts", []):
            path = Path(_mount(art["path"], root))
            if not path.exists():
                return False
            key = f"{prefix}/{art['name']}.tgz"
            blob = _tgz(path)
            self.repo.client.put_object(self.repo.bucket, key, io.BytesIO(blob), len(blob))
            self.result.artifacts[art.get("globalName", art["name"])] = key
        return True

    # -- faults and teardown -------------------------------------------------------
    def _watch_faults(self) -> None:
        while not self.stopping.is_set():
            for fault in self.faults:
                if fault.fired:
                    continue
                victims = [
                    p
                    for task, item, p in list(self.live.values())
                    if task == fault.task and (fault.item is None or item == fault.item)
                ]
                if victims and fault.trigger():
                    fault.fired = True
                    victims[0].send_signal(fault.sig)
                    if fault.then is not None:
                        fault.then()
            time.sleep(0.1)

    def _kill_all(self) -> None:
        for _, _, proc in list(self.live.values()):
            proc.kill()


def _seconds(duration: str | int) -> float:
    text = str(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def _mount(text: str, root: Path) -> str:
    """Paths under the pod's emptyDir mount point live in the pod's own folder."""
    return text.replace(POD_MOUNT, str(root))


def _tgz(path: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(path, arcname=path.name)
    return buffer.getvalue()
