"""`autolfads apply MODEL NEW_DATA.h5 --out lfads_output.h5`: a trained model on new trials.

MODEL is a run's best/ folder (or any checkpoint of a run, local or s3://),
or an `autolfads train` output folder. The new data must have the model's
held-in (and held-out) neurons, bins and external inputs; convert a new NWB
recording with `autolfads data from-nwb ... --units-from TRAINING_DATA.h5`.
Writes the datasets finalize writes and prints the NLB metrics the new file
supports (validation split) as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autolfads.extras import needs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "apply",
        help="posterior-sample a trained model on new trials (lfads_output h5)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model", help="runs/NAME/best, a run's checkpoint (local or s3://), or a train folder"
    )
    p.add_argument("data", type=Path, help="new data in the lfads-torch layout")
    p.add_argument("--out", required=True, type=Path, help="output .h5 (lfads_output datasets)")
    p.add_argument("--config", type=Path, help="config of the model (default: its run's)")
    p.add_argument("--samples", type=int, help="posterior samples (default: the config's)")
    p.add_argument("--seed", type=int, help="posterior seed (default: the config's training.seed)")
    p.add_argument("--batch-size", type=int, default=512, help="rows per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=run)
    needs(p, "trainer")


def run(args: argparse.Namespace) -> int:
    from autolfads.errors import ConfigError, DataError
    from autolfads.trainer.evaluation.apply import apply_model

    for flag, value in (("--samples", args.samples), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.out.exists() and not args.force:
        raise DataError(f"{args.out}: already exists; pass --force to overwrite it")
    doc = apply_model(
        args.model,
        args.data,
        args.out,
        config=args.config,
        device=args.device,
        num_samples=args.samples,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print(json.dumps(doc, indent=1, sort_keys=True))
    return 0
