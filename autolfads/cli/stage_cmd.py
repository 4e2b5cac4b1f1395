"""`autolfads stage`: upload a run's config and data to storage (Argo's first step)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stage",
        help="upload a run's config.yaml and data (content-addressed) to storage",
        description=__doc__,
    )
    p.add_argument("config", type=Path, help="run config YAML")
    p.add_argument(
        "--storage", required=True, help="store URL, e.g. s3://bucket/runs or file:///dir"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autolfads.config import load_config
    from autolfads.coordinator.search.staging import stage_run
    from autolfads.storage import open_store

    # numpy-only: no torch needed to check, or generate, the data.
    from autolfads.trainer.data.config_data import load_config_data

    cfg = load_config(args.config)
    data_path, _ = load_config_data(cfg)  # bad data fails here, before anything is staged
    store = open_store(args.storage)
    layout = stage_run(store, cfg, data_path)
    print(f"staged run {layout.run} in {store.url}")
    return 0
