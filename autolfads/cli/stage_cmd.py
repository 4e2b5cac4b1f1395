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
    from autolfads.coordinator.staging import stage_run
    from autolfads.errors import DataError
    from autolfads.storage import open_store

    cfg = load_config(args.config)
    data_path = Path(cfg.data.path)
    if not data_path.is_file():
        if cfg.data.synth is None:
            raise DataError(f"{data_path}: data file not found (set data.synth to generate one)")
        _synthesise(cfg, data_path)
    store = open_store(args.storage)
    layout = stage_run(store, cfg, data_path)
    print(f"staged run {layout.run} in {store.url}")
    return 0


def _synthesise(cfg, path: Path) -> None:
    # numpy-only modules: no torch needed to stage synthetic data.
    from autolfads.trainer.data import write_lfads_h5
    from autolfads.trainer.synth import make_synthetic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_lfads_h5(make_synthetic(cfg.data.synth.kind, seed=cfg.data.synth.seed), path)
