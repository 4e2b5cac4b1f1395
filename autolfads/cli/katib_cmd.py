"""`autolfads katib suggestion`: Katib drives a search through this project's PBT.

    autolfads katib suggestion --storage s3://bucket/runs   serve Katib's suggestion API
    autolfads katib render CONFIG.yaml --storage s3://...    print the Experiment (YAML)
    autolfads katib submit CONFIG.yaml --storage s3://...    stage the run, create the Experiment

The suggestion service runs in the coordinator image (no torch, no
Kubernetes client); render and submit need the 'argo' extra (strict
Kubernetes validation, the official client). See deploy/katib/README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autolfads.extras import needs

DEFAULT_LISTEN = "0.0.0.0:6789"  # Katib's suggestion port


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "katib",
        help="run a PBT search as a Katib Experiment (KubeFlow)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="katib_command", metavar="ACTION", required=True)
    serve = sub.add_parser(
        "suggestion",
        help="serve Katib's suggestion API (algorithm autolfads-pbt) backed by storage",
    )
    serve.add_argument(
        "--storage", required=True, help="store URL, e.g. s3://bucket/runs or file:///dir"
    )
    serve.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN})"
    )
    serve.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    serve.set_defaults(func=run_suggestion)

    render = sub.add_parser("render", help="print the Katib Experiment of a config (YAML)")
    _add_render_options(render)
    render.add_argument(
        "--katib-config",
        action="store_true",
        help="print instead the katib-config runtime.suggestions entry (for an administrator)",
    )
    render.set_defaults(func=run_render)
    needs(render, "argo")

    submit = sub.add_parser(
        "submit", help="stage the run and create its Katib Experiment in the cluster"
    )
    _add_render_options(submit)
    submit.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or in-cluster)")
    submit.add_argument("--context", help="kubeconfig context (default: the current one)")
    submit.set_defaults(func=run_submit)
    needs(submit, "argo")


def run_suggestion(args: argparse.Namespace) -> int:
    from autolfads.katib.serve import serve
    from autolfads.storage import open_store

    store = open_store(args.storage, create_bucket=False)  # runs are staged first
    return serve(store, args.listen, port_file=args.port_file)


def _add_render_options(p: argparse.ArgumentParser) -> None:
    from autolfads.katib.options import KatibOptions

    d = KatibOptions()
    p.add_argument("config", type=Path, metavar="CONFIG.yaml")
    p.add_argument("--storage", required=True, help="s3://bucket/prefix the pods use")
    p.add_argument("--namespace", default=d.namespace, help=f"profile namespace ({d.namespace})")
    p.add_argument("--image", default=d.image, help=f"trial (trainer) image ({d.image})")
    p.add_argument(
        "--suggestion-image", default=d.suggestion_image, help="image of the suggestion service"
    )
    p.add_argument("--s3-endpoint", default=d.s3_endpoint, help=f"({d.s3_endpoint})")
    p.add_argument("--s3-region", default=d.s3_region)
    p.add_argument(
        "--s3-secret", default=d.s3_secret, help="Secret with AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY"
    )
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--cpu", default=d.cpu, help=f"CPU request per trial ({d.cpu})")
    p.add_argument("--memory", default=d.memory, help=f"memory per trial ({d.memory})")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per trial")


def _options(args: argparse.Namespace):
    from autolfads.katib.options import KatibOptions

    return KatibOptions(
        storage=args.storage,
        namespace=args.namespace,
        image=args.image,
        suggestion_image=args.suggestion_image,
        s3_endpoint=args.s3_endpoint,
        s3_region=args.s3_region,
        s3_secret=args.s3_secret,
        device=args.device,
        cpu=args.cpu,
        memory=args.memory,
        threads=args.threads,
    )


def run_render(args: argparse.Namespace) -> int:
    import sys

    import yaml

    from autolfads.config import load_config
    from autolfads.katib.manifest import render_katib_config_entry
    from autolfads.katib.submit import checked_experiment

    opts = _options(args)
    experiment = checked_experiment(load_config(args.config), opts)
    doc = render_katib_config_entry(opts) if args.katib_config else experiment
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, width=100))
    return 0


def run_submit(args: argparse.Namespace) -> int:
    from autolfads.argo.submit import KubeTarget
    from autolfads.katib.submit import submit

    submit(args.config, _options(args), KubeTarget(args.kubeconfig, args.context))
    return 0
