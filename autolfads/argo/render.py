"""`autolfads argo render`: the Workflow for one run config.

The result is deploy/argo/workflow.yaml (a thin Workflow referencing the
`autolfads-pbt` WorkflowTemplate) with its parameters filled from the config
and the command-line options; with `inline=True` the template's spec is
merged in, giving a self-contained Workflow for clusters without the
WorkflowTemplate installed. Nothing here duplicates the YAML: every template,
command line and default comes from the files in deploy/argo/.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from autolfads.argo.manifests import (
    ManifestError,
    load_workflow,
    load_workflow_template,
    parameter_values,
    resolve_workflow,
)
from autolfads.argo.validate import validate_object
from autolfads.config import RunConfig
from autolfads.coordinator.security.limits import MAX_RELAYS
from autolfads.errors import ConfigError
from autolfads.storage.errors import StorageError
from autolfads.storage.keys import validate_prefix
from autolfads.storage.url import parse_endpoint

# Where the in-cluster stage step writes synthetic data (the pod's emptyDir).
POD_DATA_DIR = "/tmp/autolfads/data"
# Where the template mounts the grpc-tls-certs Secret (the grpc-tls-dir value for TLS).
POD_TLS_DIR = "/etc/autolfads/tls"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# The coordinator's Service is named autolfads-<workflow name>: a DNS-1035
# label of at most 63 characters.
_SERVICE_PREFIX = "autolfads-"
_WORKFLOW_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_WORKFLOW_NAME = 63 - len(_SERVICE_PREFIX)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
# Coordinator memory (MiB): the template's defaults for one process, plus per
# relay process (each measured at about 41 MB private memory; the owner 42 MB).
COORDINATOR_MEMORY_REQUEST_MI = 512
COORDINATOR_MEMORY_LIMIT_MI = 2048
RELAY_MEMORY_REQUEST_MI = 48
RELAY_MEMORY_LIMIT_MI = 64


@dataclass(frozen=True)
class RenderOptions:
    """What the command line may set; None keeps the template's default."""

    storage: str = "s3://autolfads/runs"
    namespace: str = "autolfads"
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_secret: str | None = None
    n_trainers: int | None = None
    coordinator_image: str | None = None
    trainer_image: str | None = None
    trainer_gpus: int | None = None
    trainer_device: str | None = None
    trainer_cpu: str | None = None
    trainer_memory: str | None = None
    trainer_threads: int | None = None
    trainer_retries: int | None = None
    coordinator_retries: int | None = None
    coordinator_relays: int | None = None
    coordinator_cpu: str | None = None
    lease_timeout: int | None = None
    # None: stage in the cluster only when the config generates its data.
    stage: bool | None = None
    deadline_seconds: int | None = None
    parallelism: int | None = None
    pod_gc: str | None = None
    name: str | None = None
    inline: bool = False
    # gRPC security: Secret names (tokens; TLS certificates) and TLS on/off.
    grpc_credentials: str | None = None
    grpc_worker_credentials: str | None = None
    grpc_tls: bool | None = None
    grpc_tls_certs: str | None = None
    # Inside a KubeFlow profile namespace: no Istio sidecars (they keep Argo
    # pods from completing and intercept the coordinator's gRPC port) and
    # the profile's ServiceAccount (default-editor unless `service_account`).
    kubeflow: bool = False
    service_account: str | None = None


def split_storage(url: str) -> tuple[str, str]:
    """'s3://bucket/prefix/path' -> ('bucket', 'prefix/path').

    Messages never echo the URL: a mistaken one may hold credentials, and the
    error line ends up in terminals, CI logs and bug reports."""
    if not url.startswith("s3://"):
        raise ConfigError("--storage: Argo runs need an s3://bucket/prefix URL")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if "@" in bucket or "?" in prefix or "#" in prefix:
        raise ConfigError(
            "--storage: credentials and options do not belong in the URL; pods read the S3 "
            "keys from the --s3-secret Secret and the endpoint from --s3-endpoint"
        )
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(
            "--storage: not a valid bucket name (3-63 lowercase letters, digits, '.' or '-')"
        )
    if not prefix or not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            "--storage: give a prefix inside the bucket, e.g. s3://bucket/runs "
            "(letters, digits, . _ - and /)"
        )
    try:  # the rules every pod applies to it (no hidden or over-long parts)
        validate_prefix(prefix)
    except StorageError as err:
        raise ConfigError(f"--storage: {err}") from None
    return bucket, prefix


def pod_config_yaml(cfg: RunConfig) -> str:
    """The config as the in-cluster stage step sees it: data generated in the pod."""
    if cfg.data.synth is None:
        raise ConfigError(
            f"data.path {cfg.data.path}: staging inside the cluster only works for "
            "generated data (data.synth); upload real data first with "
            "`autolfads argo submit` or `autolfads stage CONFIG --storage URL`"
        )
    name = PurePosixPath(cfg.data.path.replace("\\", "/")).name or "data.h5"
    data = cfg.data.model_copy(update={"path": f"{POD_DATA_DIR}/{name}"})
    return cfg.model_copy(update={"data": data}).to_yaml()


def _check_options(opts: RenderOptions) -> None:
    positive = {
        "--n-trainers": opts.n_trainers,
        "--threads": opts.trainer_threads,
        "--lease-timeout": opts.lease_timeout,
        "--deadline-seconds": opts.deadline_seconds,
    }
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1")
    if opts.parallelism is not None and opts.parallelism < 2:
        # With one pod at a time the coordinator waits for trainers that
        # can never start, until the workflow's deadline.
        raise ConfigError(
            f"--parallelism {opts.parallelism}: must be at least 2 (the coordinator and a "
            "trainer run at once)"
        )
    if opts.name is not None:
        _check_name(opts.name)
    if opts.s3_endpoint is not None:
        _check_endpoint(opts.s3_endpoint)
    for flag, value in {
        "--gpus": opts.trainer_gpus,
        "--trainer-retries": opts.trainer_retries,
        "--coordinator-retries": opts.coordinator_retries,
        "--coordinator-relays": opts.coordinator_relays,
    }.items():
        if value is not None and value < 0:
            raise ConfigError(f"{flag} {value}: must be 0 or more")
    if opts.coordinator_relays is not None and opts.coordinator_relays > MAX_RELAYS:
        raise ConfigError(
            f"--coordinator-relays {opts.coordinator_relays}: at most {MAX_RELAYS} "
            "(about one per core of the coordinator's pod beyond the first)"
        )
    _check_gpus(opts)
    quantities: dict[str, str | None] = {
        "--cpu": opts.trainer_cpu,
        "--memory": opts.trainer_memory,
        "--coordinator-cpu": opts.coordinator_cpu,
    }
    for flag, quantity in quantities.items():
        if quantity is not None and not _QUANTITY.match(quantity):
            raise ConfigError(f"{flag} {quantity!r}: not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    if not _NAMESPACE.match(opts.namespace):
        raise ConfigError(f"--namespace {opts.namespace!r}: not a valid namespace name")
    for what, name in {
        "--service-account": opts.service_account,
        "gRPC token Secret": opts.grpc_credentials,
        "gRPC worker token Secret": opts.grpc_worker_credentials,
        "gRPC TLS Secret": opts.grpc_tls_certs,
    }.items():
        if name is not None and not _NAMESPACE.match(name):
            raise ConfigError(f"{what} {name!r}: not a valid Secret name")


def _check_gpus(opts: RenderOptions) -> None:
    """GPU count, device and image must agree: each contradiction leaves every
    trainer failing, or a reserved GPU idle."""
    gpus, device = opts.trainer_gpus or 0, opts.trainer_device
    if gpus > 1:
        # `autolfads trainer` trains on one device (cuda = the first GPU);
        # --max-leases shares that device, it does not use more of them.
        raise ConfigError(
            f"--gpus {gpus}: a trainer uses one GPU; use --gpus 1 and more --n-trainers instead"
        )
    if device == "cuda" and gpus == 0:
        raise ConfigError(
            "--device cuda: trainer pods get no GPU without --gpus 1 (and the CPU image); "
            "add --gpus 1, or use --device cpu"
        )
    if device == "cpu" and gpus:
        raise ConfigError(
            f"--device cpu with --gpus {gpus}: the reserved GPU would sit idle; "
            "drop --gpus, or use --device cuda"
        )
    if gpus and opts.trainer_image is not None and "-trainer-cpu" in opts.trainer_image:
        raise ConfigError(
            f"--trainer-image {opts.trainer_image}: a CPU image cannot use the GPU --gpus "
            "reserves; use the -trainer-cuda image"
        )


def coordinator_memory(relays: int) -> tuple[str, str]:
    """(request, limit) of the coordinator pod serving through `relays` relays."""
    request = COORDINATOR_MEMORY_REQUEST_MI + relays * RELAY_MEMORY_REQUEST_MI
    limit = COORDINATOR_MEMORY_LIMIT_MI + relays * RELAY_MEMORY_LIMIT_MI
    return f"{request}Mi", f"{limit}Mi"


def cuda_image(cpu_image: str) -> str:
    """The CUDA trainer image next to a CPU one (same registry and tag)."""
    if "-trainer-cpu" not in cpu_image:
        raise ConfigError(f"cannot derive a CUDA image from {cpu_image!r}; pass --trainer-image")
    return cpu_image.replace("-trainer-cpu", "-trainer-cuda")


def workflow_parameters(
    cfg: RunConfig, opts: RenderOptions, defaults: dict[str, str]
) -> list[dict[str, str]]:
    """The Workflow's arguments: always the run's identity, plus every option set."""
    bucket, prefix = split_storage(opts.storage)
    stage = opts.stage if opts.stage is not None else cfg.data.synth is not None
    gpus = opts.trainer_gpus
    trainer_image = opts.trainer_image
    device = opts.trainer_device
    if gpus and trainer_image is None:
        trainer_image = cuda_image(defaults["trainer-image"])
    if gpus and device is None:
        device = "cuda"
    memory_request = memory_limit = None
    if opts.coordinator_relays:
        memory_request, memory_limit = coordinator_memory(opts.coordinator_relays)
    values: dict[str, Any] = {
        "run": cfg.name,
        "s3-bucket": bucket,
        "s3-prefix": prefix,
        "s3-endpoint": opts.s3_endpoint,
        "s3-region": opts.s3_region,
        "s3-secret": opts.s3_secret,
        "stage": "true" if stage else "false",
        "config": pod_config_yaml(cfg) if stage else None,
        "n-trainers": opts.n_trainers,
        "coordinator-image": opts.coordinator_image,
        "trainer-image": trainer_image,
        "trainer-device": device,
        "trainer-threads": opts.trainer_threads,
        "trainer-cpu": opts.trainer_cpu,
        "trainer-memory": opts.trainer_memory,
        "trainer-gpus": gpus,
        "trainer-retries": opts.trainer_retries,
        "coordinator-retries": opts.coordinator_retries,
        "coordinator-relays": opts.coordinator_relays,
        "coordinator-cpu": opts.coordinator_cpu,
        "coordinator-memory-request": memory_request,
        "coordinator-memory": memory_limit,
        "lease-timeout": opts.lease_timeout,
        "pod-deadline-seconds": opts.deadline_seconds,
        "grpc-credentials": opts.grpc_credentials,
        "grpc-worker-credentials": opts.grpc_worker_credentials,
        "grpc-tls-dir": None if opts.grpc_tls is None else (POD_TLS_DIR if opts.grpc_tls else ""),
        "grpc-tls-certs": opts.grpc_tls_certs,
    }
    unknown = sorted(set(values) - set(defaults))
    assert not unknown, f"render sets parameters the template lacks: {unknown}"
    return [{"name": k, "value": str(v)} for k, v in values.items() if v is not None]


KUBEFLOW_SERVICE_ACCOUNT = "default-editor"
ISTIO_INJECT = "sidecar.istio.io/inject"


def _kubeflow_profile(spec: dict[str, Any], template: dict[str, Any], opts: RenderOptions) -> None:
    """Run in a KubeFlow profile namespace: its ServiceAccount, no Istio sidecar
    in any pod (the template's pod labels are kept: the Workflow's podMetadata
    replaces the template's)."""
    spec["serviceAccountName"] = opts.service_account or KUBEFLOW_SERVICE_ACCOUNT
    meta = copy.deepcopy(template.get("podMetadata", {}))
    meta.setdefault("annotations", {})[ISTIO_INJECT] = "false"
    spec["podMetadata"] = meta


def _check_name(name: str) -> None:
    if not _WORKFLOW_NAME.fullmatch(name) or len(name) > MAX_WORKFLOW_NAME:
        raise ConfigError(
            f"--name {name[:80]!r}: use lowercase letters, digits and '-', starting with a "
            f"letter, ending with a letter or digit, at most {MAX_WORKFLOW_NAME} characters "
            f"(the coordinator's Service is {_SERVICE_PREFIX}NAME, a DNS label)"
        )


def _check_endpoint(endpoint: str) -> None:
    """The endpoint as every pod will read it: with its scheme (a bare host
    would mean https there, which a plain-HTTP MinIO refuses)."""
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            "--s3-endpoint: must start with http:// or https:// (a bare HOST:PORT "
            "would mean https in the pods)"
        )
    try:
        parse_endpoint(endpoint, secure_default=True, source="--s3-endpoint")
    except StorageError as err:
        raise ConfigError(str(err)) from None


def render_workflow(cfg: RunConfig, opts: RenderOptions) -> dict[str, Any]:
    """The Workflow object for `cfg`, validated as strictly as the deploy files."""
    _check_options(opts)
    template = load_workflow_template()
    workflow = copy.deepcopy(load_workflow())
    defaults = parameter_values(template["spec"]["arguments"]["parameters"])
    meta = workflow.setdefault("metadata", {})
    meta["namespace"] = opts.namespace
    meta.setdefault("labels", {})["autolfads.io/run"] = cfg.name
    if opts.name is not None:
        meta.pop("generateName", None)
        meta["name"] = opts.name
    spec = workflow["spec"]
    spec["arguments"] = {"parameters": workflow_parameters(cfg, opts, defaults)}
    if opts.deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = opts.deadline_seconds
    if opts.parallelism is not None:
        spec["parallelism"] = opts.parallelism
    if opts.pod_gc is not None:
        spec["podGC"] = {**template["spec"].get("podGC", {}), "strategy": opts.pod_gc}
    if opts.kubeflow:
        _kubeflow_profile(spec, template["spec"], opts)
    elif opts.service_account is not None:
        spec["serviceAccountName"] = opts.service_account
    if opts.inline:
        workflow = resolve_workflow(workflow, template)
    name = template["metadata"]["name"]
    problems = validate_object(workflow, templates={name: template})
    if problems:
        raise ManifestError(f"rendered Workflow is invalid: {problems[0]}")
    return workflow
