"""`autolfads report RUN_URL`: the static HTML report of a run, from storage alone.

RUN_URL is the run's location: `./runs/NAME`, `file:///abs/runs/NAME` or
`s3://bucket/prefix/NAME`. The report goes to <run>/best/report/ in storage
and, with --out, to a local folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autolfads.extras import needs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="build the HTML report of a finished run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_url", metavar="RUN_URL", help="e.g. ./runs/NAME or s3://bucket/runs/NAME")
    p.add_argument("--out", type=Path, help="also write the report files into this folder")
    p.set_defaults(func=run)
    needs(p, "report")


def split_run_url(run_url: str) -> tuple[str, str]:
    """'s3://b/p/NAME' -> ('s3://b/p', 'NAME'); the run is the last path part."""
    from autolfads.errors import ConfigError

    base, _, run = run_url.rstrip("/").rpartition("/")
    if not run or not base or base.endswith(":/"):
        raise ConfigError(
            f"{run_url!r}: expected STORAGE/RUN, e.g. ./runs/NAME or s3://bucket/runs/NAME"
        )
    return base, run


def run(args: argparse.Namespace) -> int:
    from autolfads.cli.out_paths import check_out_dir
    from autolfads.report.build import build_report
    from autolfads.storage import open_store

    if args.out is not None:
        check_out_dir(args.out, "--out")
    base, run_name = split_run_url(args.run_url)
    store = open_store(base, create_bucket=False)
    keys = build_report(store, run_name, out_dir=args.out)
    print(f"report: {store.location(keys['index.html'])}")
    if args.out is not None:
        print(f"local copy: {args.out / 'index.html'}")
    return 0
