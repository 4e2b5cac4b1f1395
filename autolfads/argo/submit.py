"""`autolfads argo submit`: stage the run, create the Workflow, optionally follow it.

Talks to the Kubernetes API with the official client (kubeconfig, or the
in-cluster ServiceAccount), not to argo-server: creating a Workflow object is
all Argo needs, and it only takes `create` on workflows.argoproj.io. Each
failure a user can meet (no cluster, Argo not installed, forbidden, name
taken, storage unreachable) ends as one AutolfadsError line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from autolfads.argo.manifests import ARGO_GROUP, ARGO_VERSION, load_workflow_template
from autolfads.argo.render import RenderOptions, render_workflow
from autolfads.config import load_config
from autolfads.errors import AutolfadsError

FINAL_PHASES = {"Succeeded", "Failed", "Error"}


class ClusterError(AutolfadsError):
    """The Kubernetes API or Argo cannot be used as asked."""


@dataclass(frozen=True)
class KubeTarget:
    """Which cluster: a kubeconfig file and context, or the in-cluster account."""

    kubeconfig: str | None = None
    context: str | None = None


def api_client(target: KubeTarget) -> Any:
    """An ApiClient for `target`; no global client configuration is touched."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    in_cluster = target.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            # KUBECONFIG is read now: the client reads it only once, at import.
            config.load_kube_config(
                config_file=target.kubeconfig or os.environ.get("KUBECONFIG"),
                context=target.context,
                client_configuration=configuration,
            )
    except (ConfigException, OSError) as err:
        where = target.kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config")
        raise ClusterError(
            f"no Kubernetes cluster configured ({where}: {str(err).splitlines()[0]}); "
            "set KUBECONFIG or pass --kubeconfig/--context"
        ) from None
    # Fail fast on an unreachable server instead of urllib3's silent retries.
    configuration.retries = 1
    return client.ApiClient(configuration)


def _status_message(err: Any) -> tuple[str, dict[str, Any]]:
    """(message, details) of a Kubernetes Status body, tolerating non-JSON bodies."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or err.reason or "no message").splitlines()[0]
    return message, body.get("details") or {}


def explain(err: Any, *, namespace: str, doing: str, name: str | None = None) -> ClusterError:
    """One clear line for an ApiException raised while `doing` something."""
    message, details = _status_message(err)
    status = err.status
    if status == 401:
        text = "the Kubernetes API rejected the credentials (401); refresh your kubeconfig login"
    elif status == 403:
        text = (
            f"forbidden: {message}; bind the autolfads-submitter Role of "
            "deploy/k8s/rbac.yaml to your user"
        )
    elif status == 404 and details.get("kind") == "namespaces":
        text = f"namespace {namespace!r} does not exist; create it with kubectl apply -k deploy/k8s"
    elif status == 404 and details.get("name") and doing == "reading the WorkflowTemplate":
        text = (
            f"WorkflowTemplate {details['name']!r} is not installed in namespace {namespace!r}; "
            "run kubectl apply -k deploy/k8s (or submit with --inline)"
        )
    elif status == 404 and details.get("name") and doing == "reading the Workflow":
        text = (
            f"workflow {details['name']!r} no longer exists in namespace {namespace!r} "
            "(deleted while it was followed?)"
        )
    elif status == 404:
        text = (
            "Argo Workflows is not installed in this cluster (no workflows.argoproj.io API); "
            "install it as in deploy/argo/README.md"
        )
    elif status == 409:
        text = (
            f"a Workflow named {name!r} already exists in namespace {namespace!r}; "
            "pick another --name or delete the old one"
        )
    elif status == 422:
        text = f"the API server rejected the Workflow: {message}"
    else:
        text = f"Kubernetes API error {status} while {doing}: {message}"
    return ClusterError(text)


def _call(fn: Callable[[], Any], **context: Any) -> Any:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn()
    except ApiException as err:
        raise explain(err, **context) from None
    except HTTPError as err:
        reason = getattr(err, "reason", None) or err
        raise ClusterError(f"cannot reach the Kubernetes API server: {reason}") from None


def check_template(api: Any, namespace: str, name: str) -> None:
    """Argo's CRDs and our WorkflowTemplate are in place (and we may read them)."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    _call(
        lambda: custom.get_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, namespace, "workflowtemplates", name
        ),
        namespace=namespace,
        doing="reading the WorkflowTemplate",
    )


def create_workflow(api: Any, workflow: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """Create `workflow`; the API server validates it strictly against its CRD.

    With `dry_run` the server runs every check of a real create (authorization,
    a taken name, admission, schema) and stores nothing (`dryRun=All`)."""
    from kubernetes import client

    namespace = workflow["metadata"]["namespace"]
    custom = client.CustomObjectsApi(api)
    extra = {"dry_run": "All"} if dry_run else {}
    created = _call(
        lambda: custom.create_namespaced_custom_object(
            ARGO_GROUP,
            ARGO_VERSION,
            namespace,
            "workflows",
            workflow,
            field_validation="Strict",
            **extra,
        ),
        namespace=namespace,
        doing="creating the Workflow",
        name=workflow["metadata"].get("name"),
    )
    if not isinstance(created, dict) or "name" not in created.get("metadata", {}):
        raise ClusterError("the Kubernetes API accepted the Workflow but returned no name")
    return created


def get_workflow(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    return _call(
        lambda: custom.get_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, namespace, "workflows", name
        ),
        namespace=namespace,
        doing="reading the Workflow",
        name=name,
    )


def progress_line(workflow: dict[str, Any]) -> str:
    """'Running 3/6: coordinator Running, trainer(0) Running, ...' from the status."""
    status = workflow.get("status", {})
    pods = [
        f"{node.get('displayName', node_id)} {node.get('phase', '?')}"
        for node_id, node in sorted(status.get("nodes", {}).items())
        if node.get("type") == "Pod"
    ]
    head = f"{status.get('phase') or 'Pending'} {status.get('progress', '')}".strip()
    return f"{head}: {', '.join(pods)}" if pods else head


def follow(
    api: Any,
    namespace: str,
    name: str,
    *,
    out: TextIO,
    poll_s: float = 5.0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Poll the Workflow until it finishes; print each change of its progress."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = ""
    while True:
        workflow = get_workflow(api, namespace, name)
        line = progress_line(workflow)
        if line != last:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", file=out, flush=True)
            last = line
        phase = workflow.get("status", {}).get("phase")
        if phase in FINAL_PHASES:
            return workflow
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"gave up waiting for workflow {name} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def stage_locally(config_path: Path, storage: str) -> None:
    """Upload config and data exactly as `autolfads stage` does."""
    from autolfads.cli import build_parser

    try:
        args = build_parser().parse_args(["stage", str(config_path), "--storage", storage])
    except SystemExit:
        raise AutolfadsError("this installation has no usable `autolfads stage` command") from None
    code = int(args.func(args) or 0)
    if code != 0:
        raise AutolfadsError(f"staging {config_path} to {storage} failed (exit code {code})")


def submit(
    config_path: str | Path,
    opts: RenderOptions,
    target: KubeTarget,
    *,
    wait: bool = False,
    poll_s: float = 5.0,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Check the cluster, upload the run, create its Workflow; return the Workflow
    (the finished one when `wait`). Nothing is uploaded if the cluster is unusable
    or would refuse the Workflow (a server-side dry-run create comes first)."""
    out = out or sys.stdout
    config_path = Path(config_path)
    cfg = load_config(config_path)
    # The data is uploaded from here, so the cluster never stages it again.
    opts = replace(opts, stage=False)
    workflow = render_workflow(cfg, opts)
    namespace = workflow["metadata"]["namespace"]
    api = api_client(target)
    if not opts.inline:
        check_template(api, namespace, load_workflow_template()["metadata"]["name"])
    # Everything a create can refuse (forbidden, a taken name, an invalid
    # object, an unreachable server) is found before anything is uploaded:
    # an upload followed by a refused create would leave a run that a
    # corrected resubmit is then refused to overwrite.
    create_workflow(api, workflow, dry_run=True)
    stage_locally(config_path, opts.storage)
    created = create_workflow(api, workflow)
    name = created["metadata"]["name"]
    print(f"workflow {name} created in namespace {namespace}", file=out)
    print(f"watch it:   argo watch -n {namespace} {name}", file=out)
    print(f"   or:      kubectl get workflow -n {namespace} {name} -w", file=out)
    print(f"results:    autolfads report {opts.storage.rstrip('/')}/{cfg.name}", file=out)
    if not wait:
        return created
    finished = follow(api, namespace, name, out=out, poll_s=poll_s)
    outputs = finished.get("status", {}).get("outputs", {}).get("parameters", [])
    for param in outputs:
        print(f"{param.get('name')}: {param.get('value')}", file=out)
    phase = finished["status"]["phase"]
    if phase != "Succeeded":
        raise ClusterError(f"workflow {name} ended {phase}: {failure_message(finished['status'])}")
    return finished


def failure_message(status: dict[str, Any]) -> str:
    """Why a workflow failed: its message, else that of the step that failed
    last (Argo leaves a failed DAG's message empty; the step that ended the
    search, e.g. trainers-failed, finishes after the steps it reacts to)."""
    if status.get("message"):
        return str(status["message"]).splitlines()[0]
    failed = [
        node
        for node in status.get("nodes", {}).values()
        if node.get("type") == "Pod" and node.get("phase") in ("Failed", "Error")
    ]
    if not failed:
        return "no message"
    last = max(failed, key=lambda node: str(node.get("finishedAt") or ""))
    lines = str(last.get("message") or "no message").strip().splitlines() or ["no message"]
    return f"step {last.get('displayName', '?')}: {lines[-1]}"
