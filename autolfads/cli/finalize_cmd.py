"""`autolfads finalize`: posterior-sample and evaluate the best member of a finished search.

Writes <run>/best/ (checkpoint.pt, lfads_output_*.h5, metrics.json) and prints
the metrics as JSON (or writes them to --metrics-out, for Argo output parameters).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autolfads.extras import needs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finalize",
        help="posterior-sample and evaluate the best member into <run>/best/",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--storage", required=True, help="store URL, e.g. s3://bucket/runs or ./runs")
    p.add_argument("--run", required=True, help="run name")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--samples", type=int, help="posterior samples (default: the config's)")
    p.add_argument("--cache-dir", type=Path, help="data cache folder")
    p.add_argument("--metrics-out", type=Path, help="also write the metrics JSON to this file")
    p.set_defaults(func=run)
    needs(p, "trainer")


def run(args: argparse.Namespace) -> int:
    from autolfads.cli.out_paths import check_out_file
    from autolfads.errors import ConfigError
    from autolfads.storage import open_store
    from autolfads.trainer.evaluation.finalize import finalize_run

    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    if args.metrics_out is not None:
        check_out_file(args.metrics_out, "--metrics-out")
    store = open_store(args.storage, create_bucket=False)  # the run exists
    doc = finalize_run(
        store, args.run, device=args.device, num_samples=args.samples, cache_dir=args.cache_dir
    )
    text = json.dumps(doc, indent=1, sort_keys=True)
    if args.metrics_out is not None:
        args.metrics_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.metrics_out.with_name(args.metrics_out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.metrics_out)
    print(text)
    return 0
