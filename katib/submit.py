"""`autolfads katib render|submit`: build and check the Experiment, then
stage the run and create the Experiment through the Kubernetes API (the
official client; only `create` on experiments.kubeflow.org is needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from autolfads.argo.submit import (
    ClusterError,
    KubeTarget,
    _status_message,
    api_client,
    stage_locally,
)
from autolfads.config import RunConfig, load_config
from autolfads.errors import ConfigError
from autolfads.katib.manifest import render_experiment
from autolfads.katib.options import KatibOptions
from autolfads.katib.webhook import validate_experiment

GROUP, VERSION, PLURAL = "kubeflow.org", "v1beta1", "experiments"


def checked_experiment(cfg: RunConfig, opts: KatibOptions) -> dict[str, Any]:
    """The Experiment of `cfg`, or ConfigError naming its first problem."""
    experiment = render_experiment(cfg, opts)
    problems = validate_experiment(experiment)
    if problems:
        more = f" [+{len(problems) - 1} more]" if len(problems) > 1 else ""
        raise ConfigError(f"rendered Experiment is invalid: {problems[0]}{more}")
    return experiment


def create_experiment(api: Any, experiment: dict[str, Any]) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    namespace = experiment["metadata"]["namespace"]
    name = experiment["metadata"]["name"]
    custom = client.CustomObjectsApi(api)
    try:
        created = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, experiment
        )
    except ApiException as err:
        raise _explain(err, namespace, name) from None
    except HTTPError as err:
        reason = getattr(err, "reason", None) or err
        raise ClusterError(f"cannot reach the Kubernetes API server: {reason}") from None
    if not isinstance(created, dict) or "metadata" not in created:
        raise ClusterError("the Kubernetes API accepted the Experiment but returned no object")
    return created


def _explain(err: Any, namespace: str, name: str) -> ClusterError:
    """One line per failure a user can meet when creating the Experiment."""
    message, details = _status_message(err)
    if err.status in (401, 403):
        text = f"not allowed to create Katib Experiments in {namespace!r} ({err.status}): {message}"
    elif err.status == 404 and details.get("kind") == "namespaces":
        text = f"namespace {namespace!r} does not exist (a KubeFlow profile creates one)"
    elif err.status == 404:
        text = "Katib is not installed in this cluster (no experiments.kubeflow.org API)"
    elif err.status == 409:
        text = (
            f"an Experiment named {name!r} already exists in {namespace!r}; a run keeps its "
            "name (name: in the config): delete the old Experiment or rename the run"
        )
    else:
        # Katib's admission webhook answers 400/403/422 with its reason.
        text = f"the Kubernetes API refused the Experiment ({err.status}): {message}"
    return ClusterError(text)


def submit(
    config_path: str | Path, opts: KatibOptions, target: KubeTarget, out: TextIO | None = None
) -> dict[str, Any]:
    """Render + check, reach the cluster, stage the run, create the Experiment.
    Nothing is uploaded if the Experiment is invalid or the cluster unusable."""
    out = out or sys.stdout
    config_path = Path(config_path)
    cfg = load_config(config_path)
    experiment = checked_experiment(cfg, opts)
    api = api_client(target)
    stage_locally(config_path, opts.storage)
    created = create_experiment(api, experiment)
    namespace = experiment["metadata"]["namespace"]
    name = experiment["metadata"]["name"]
    print(f"experiment {name} created in namespace {namespace}", file=out)
    print(f"watch it:   kubectl get experiment -n {namespace} {name} -w", file=out)
    print("   or:      the Katib UI (Experiments)", file=out)
    print(f"results:    autolfads status {opts.storage.rstrip('/')}/{name}", file=out)
    return created
