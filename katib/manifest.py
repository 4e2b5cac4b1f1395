"""`autolfads katib render`: the Katib Experiment of a run config, and the
`katib-config` suggestion entry an administrator adds once per cluster.

The Experiment minimises `fitness` (metric strategy `latest`: a member's
value is that of its newest segment) over the config's search space; each
trial is a batch Job running `autolfads trainer --katib-trial <trial name>`,
hardened like the Argo pods. Katib's StdOut collector reads its
`fitness=` line.

Counts: parallelTrialCount = population (one running trial per member) and
maxTrialCount = population x (max_generations + 1) (`experiment.trial_counts`,
which validation uses too). The extra round exists because Katib hands the
last generation's results to the suggestion service only inside another
GetSuggestions call, and because in async mode a member that has finished
while others still train holds its slot with a no-op "end" trial that waits
for the search to end; after the end, end trials complete at once and bring
Katib to maxTrialCount.
"""

from __future__ import annotations

import re
from typing import Any

from autolfads.argo.render import split_storage
from autolfads.config import RunConfig
from autolfads.errors import ConfigError
from autolfads.katib.experiment import (
    ALGORITHM_NAME,
    OBJECTIVE_METRIC,
    searched_parameters,
    trial_counts,
)
from autolfads.katib.names import MAX_EXPERIMENT_NAME
from autolfads.katib.options import KatibOptions

API_VERSION = "kubeflow.org/v1beta1"
CONTAINER = "training"
# A writable emptyDir for HOME, the data cache and torch (root is read-only).
WORK_DIR = "/tmp/autolfads"
UID = 10001
# Katib's defaults for a batch Job trial, written out so the Experiment
# does not depend on the mutating webhook.
JOB_SUCCESS = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILURE = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def _check(cfg: RunConfig, opts: KatibOptions) -> None:
    split_storage(opts.storage)
    name = cfg.name
    if len(name) > MAX_EXPERIMENT_NAME or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise ConfigError(
            f"name {name[:80]!r}: a Katib Experiment is named after its run; use at most "
            f"{MAX_EXPERIMENT_NAME} lowercase letters, digits and '-', starting with a letter"
        )
    if not _NAMESPACE.fullmatch(opts.namespace):
        raise ConfigError(f"--namespace {opts.namespace[:80]!r} is not a Kubernetes namespace")
    for flag, value in (("--cpu", opts.cpu), ("--memory", opts.memory)):
        if not _QUANTITY.fullmatch(value):
            raise ConfigError(f"{flag} {value[:40]!r} is not a Kubernetes quantity")
    if opts.threads < 1:
        raise ConfigError(f"--threads {opts.threads} must be >= 1")
    if opts.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {opts.device!r}: use auto, cpu or cuda")


def trial_parameter_name(parameter: str) -> str:
    """'lr_init' -> 'lrInit' (the name the template's placeholder uses)."""
    head, *rest = parameter.split("_")
    return head + "".join(word.capitalize() for word in rest)


def storage_env(opts: KatibOptions) -> list[dict[str, Any]]:
    secret = opts.s3_secret
    return [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
        }
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ] + [
        {"name": "AWS_ENDPOINT_URL", "value": opts.s3_endpoint},
        {"name": "AWS_DEFAULT_REGION", "value": opts.s3_region},
        {"name": "HOME", "value": WORK_DIR},
    ]


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def trial_job(cfg: RunConfig, opts: KatibOptions) -> dict[str, Any]:
    """The trial's batch Job (no name: Katib names it after the trial)."""
    # The hyperparameters reach the pod only for people reading it: the
    # trainer takes the lease's values from storage, which the service
    # wrote before naming the trial.
    parameter_env = [
        {
            "name": f"AUTOLFADS_KATIB_{name.upper()}",
            "value": f"${{trialParameters.{trial_parameter_name(name)}}}",
        }
        for name in searched_parameters(cfg)
    ]
    container = {
        "name": CONTAINER,
        "image": opts.image,
        "command": ["autolfads"],
        "args": [
            "trainer",
            "--katib-trial",
            "${trialParameters.trialName}",
            "--storage",
            opts.storage,
            "--cache-dir",
            f"{WORK_DIR}/cache",
            "--threads",
            str(opts.threads),
            "--device",
            opts.device,
        ],
        "env": [*storage_env(opts), *parameter_env],
        "resources": {
            "requests": {"cpu": opts.cpu, "memory": opts.memory},
            "limits": {"memory": opts.memory},
        },
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
        "securityContext": container_security(),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            # Katib counts a failed trial; the service counts a failed segment.
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    "volumes": [{"name": "work", "emptyDir": {}}],
                    "containers": [container],
                },
            },
        },
    }


def render_experiment(cfg: RunConfig, opts: KatibOptions) -> dict[str, Any]:
    _check(cfg, opts)
    pbt = cfg.pbt
    parameters = searched_parameters(cfg)
    trial_parameters = [
        {
            "name": "trialName",
            "description": "names the run, member and generation of this segment",
            "reference": "${trialSpec.Name}",
        }
    ] + [
        {
            "name": trial_parameter_name(name),
            "description": f"{name} of this segment (also in its lease in storage)",
            "reference": name,
        }
        for name in parameters
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": cfg.name, "namespace": opts.namespace},
        "spec": {
            "objective": {
                "type": "minimize",
                "objectiveMetricName": OBJECTIVE_METRIC,
                "metricStrategies": [{"name": OBJECTIVE_METRIC, "value": "latest"}],
            },
            "algorithm": {"algorithmName": ALGORITHM_NAME},
            "parallelTrialCount": pbt.population,
            "maxTrialCount": trial_counts(cfg, pbt.population)[1],
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": [
                {
                    "name": name,
                    "parameterType": "double",
                    "feasibleSpace": {"min": repr(low), "max": repr(high)},
                }
                for name, (low, high) in parameters.items()
            ],
            "trialTemplate": {
                "primaryContainerName": CONTAINER,
                "successCondition": JOB_SUCCESS,
                "failureCondition": JOB_FAILURE,
                "trialParameters": trial_parameters,
                "trialSpec": trial_job(cfg, opts),
            },
        },
    }


def render_katib_config_entry(opts: KatibOptions) -> dict[str, Any]:
    """The `runtime.suggestions` entry of the katib-config ConfigMap. Katib
    adds the suggestion-api port 6789 itself; the probes are gRPC health
    checks for manager.v1beta1.Suggestion."""
    return {
        "algorithmName": ALGORITHM_NAME,
        "image": opts.suggestion_image,
        "command": ["autolfads", "katib", "suggestion", "--storage", opts.storage],
        # It writes nothing locally: everything goes to storage.
        "env": [e for e in storage_env(opts) if e["name"] != "HOME"],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": {**container_security(), "runAsNonRoot": True, "runAsUser": UID},
    }
