"""`autolfads argo render|submit|validate`: run a search as an Argo Workflow.

    autolfads argo render CONFIG.yaml [options]      print the Workflow (YAML)
    autolfads argo submit CONFIG.yaml [options]      upload + create it [--wait]
    autolfads argo validate [PATH ...]               strict offline manifest check

The kubernetes client and the validators are imported inside the commands,
so `autolfads --help` works in the small coordinator image.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from autolfads.extras import needs

POD_GC_STRATEGIES = ["OnPodCompletion", "OnPodSuccess", "OnWorkflowCompletion", "OnWorkflowSuccess"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "argo",
        help="run a PBT search on Kubernetes with Argo Workflows",
        description="Render, submit and validate the Argo Workflow of a search "
        "(see deploy/argo/README.md).",
    )
    sub = parser.add_subparsers(dest="argo_command", metavar="ACTION", required=True)

    render = sub.add_parser("render", help="print the Workflow for a config (YAML)")
    _add_run_options(render)
    render.add_argument(
        "--stage",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stage config and data inside the cluster (default: only for data.synth configs)",
    )
    render.set_defaults(func=run_render)
    needs(render, "argo")

    submit = sub.add_parser(
        "submit", help="upload the run to storage and create its Workflow in the cluster"
    )
    _add_run_options(submit)
    submit.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or in-cluster)")
    submit.add_argument("--context", help="kubeconfig context (default: the current one)")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the Workflow to its end; exit 1 unless it Succeeded",
    )
    submit.add_argument(
        "--poll-seconds", type=float, default=5.0, help="status poll interval with --wait"
    )
    submit.set_defaults(func=run_submit)
    needs(submit, "argo")

    validate = sub.add_parser(
        "validate", help="check deploy manifests strictly (Argo + Kubernetes schemas, references)"
    )
    validate.add_argument(
        "paths", nargs="*", help="files or folders (default: the packaged deploy/argo manifests)"
    )
    validate.set_defaults(func=run_validate)
    needs(validate, "argo")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument(
        "--storage",
        default="s3://autolfads/runs",
        help="where runs live, s3://BUCKET/PREFIX (default: s3://autolfads/runs)",
    )
    parser.add_argument("-n", "--namespace", default="autolfads", help="Kubernetes namespace")
    parser.add_argument("--name", help="Workflow name (default: generated, autolfads-xxxxx)")
    parser.add_argument(
        "--kubeflow",
        action="store_true",
        help="run in a KubeFlow profile namespace: its ServiceAccount, no Istio sidecars "
        "(see deploy/argo/kubeflow.md)",
    )
    parser.add_argument(
        "--service-account",
        help="pods' ServiceAccount (default: the template's; default-editor with --kubeflow)",
    )
    parser.add_argument(
        "--s3-endpoint", help="S3 URL as seen from pods (default: http://minio:9000)"
    )
    parser.add_argument("--s3-region", help="S3 region (default: us-east-1)")
    parser.add_argument("--s3-secret", help="Secret with the S3 keys (default: autolfads-s3)")
    parser.add_argument("--n-trainers", type=int, help="trainer pods (default: 4)")
    parser.add_argument("--gpus", type=int, help="GPUs per trainer; > 0 picks the CUDA image")
    parser.add_argument("--cpu", help="CPU request per trainer (default: 2)")
    parser.add_argument("--memory", help="memory per trainer (default: 4Gi)")
    parser.add_argument("--threads", type=int, help="torch threads per trainer (default: 2)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="trainer device")
    parser.add_argument("--coordinator-image", help="coordinator container image")
    parser.add_argument("--trainer-image", help="trainer container image")
    parser.add_argument("--trainer-retries", type=int, help="retries per trainer pod (default: 5)")
    parser.add_argument("--coordinator-retries", type=int, help="coordinator restarts (default: 5)")
    parser.add_argument(
        "--coordinator-relays",
        type=int,
        help="gRPC front processes of the coordinator (default: 0, one process)",
    )
    parser.add_argument("--coordinator-cpu", help="CPU request of the coordinator (default: 500m)")
    parser.add_argument("--lease-timeout", type=int, help="seconds before a silent lease expires")
    parser.add_argument(
        "--deadline-seconds", type=int, help="activeDeadlineSeconds of the workflow and its pods"
    )
    parser.add_argument("--parallelism", type=int, help="max concurrent pods (default: 64)")
    parser.add_argument("--pod-gc", choices=POD_GC_STRATEGIES, help="pod garbage collection")
    parser.add_argument(
        "--grpc-credentials",
        help="Secret with the observer+operator tokens (coordinator only; default autolfads-grpc)",
    )
    parser.add_argument(
        "--grpc-worker-credentials",
        help="Secret with the worker token (coordinator and trainers; default autolfads-grpc-worker)",
    )
    parser.add_argument(
        "--grpc-tls-secret",
        help="kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt): serve gRPC over TLS",
    )
    parser.add_argument(
        "--inline",
        action="store_true",
        help="embed the WorkflowTemplate (for clusters without it installed)",
    )


def render_options(args: argparse.Namespace) -> Any:
    from autolfads.argo.render import RenderOptions

    return RenderOptions(
        storage=args.storage,
        namespace=args.namespace,
        name=args.name,
        s3_endpoint=args.s3_endpoint,
        s3_region=args.s3_region,
        s3_secret=args.s3_secret,
        n_trainers=args.n_trainers,
        trainer_gpus=args.gpus,
        trainer_cpu=args.cpu,
        trainer_memory=args.memory,
        trainer_threads=args.threads,
        trainer_device=args.device,
        coordinator_image=args.coordinator_image,
        trainer_image=args.trainer_image,
        trainer_retries=args.trainer_retries,
        coordinator_retries=args.coordinator_retries,
        coordinator_relays=args.coordinator_relays,
        coordinator_cpu=args.coordinator_cpu,
        lease_timeout=args.lease_timeout,
        deadline_seconds=args.deadline_seconds,
        parallelism=args.parallelism,
        pod_gc=args.pod_gc,
        inline=args.inline,
        stage=getattr(args, "stage", None),
        grpc_credentials=args.grpc_credentials,
        grpc_worker_credentials=args.grpc_worker_credentials,
        grpc_tls=True if args.grpc_tls_secret else None,
        grpc_tls_certs=args.grpc_tls_secret,
        kubeflow=args.kubeflow,
        service_account=args.service_account,
    )


def run_render(args: argparse.Namespace) -> int:
    import yaml

    from autolfads.argo.render import render_workflow
    from autolfads.config import load_config

    workflow = render_workflow(load_config(args.config), render_options(args))
    sys.stdout.write(yaml.safe_dump(workflow, sort_keys=False, width=100))
    return 0


def run_submit(args: argparse.Namespace) -> int:
    from autolfads.argo.submit import KubeTarget, submit
    from autolfads.errors import ConfigError

    # Checked before anything is uploaded or created.
    if not math.isfinite(args.poll_seconds) or args.poll_seconds <= 0:
        raise ConfigError(f"--poll-seconds {args.poll_seconds}: must be a number of seconds > 0")
    target = KubeTarget(kubeconfig=args.kubeconfig, context=args.context)
    submit(args.config, render_options(args), target, wait=args.wait, poll_s=args.poll_seconds)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from autolfads.argo.manifests import deploy_dir
    from autolfads.argo.validate import check_paths

    paths = args.paths or [str(deploy_dir())]
    count = check_paths(paths)
    print(f"{count} manifest file(s) valid")
    return 0
