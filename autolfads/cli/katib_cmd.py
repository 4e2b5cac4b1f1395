"""`autolfads katib suggestion`: Katib drives a search through this project's PBT.

    autolfads katib suggestion --storage s3://bucket/runs   serve Katib's suggestion API

The suggestion service runs in the coordinator image (no torch, no
Kubernetes client); see deploy/katib/README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def run_suggestion(args: argparse.Namespace) -> int:
    from autolfads.katib.serve import serve
    from autolfads.storage import open_store

    store = open_store(args.storage, create_bucket=False)  # runs are staged first
    return serve(store, args.listen, port_file=args.port_file)
