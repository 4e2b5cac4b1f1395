"""`autolfads baseline DATA.h5`: the floor and ceiling of a data file.

A quick first look before a search: the NLB metrics of the spike-smoothing
baseline (the floor any latent-variable model should beat; its kernel width
chosen on the training split) and, for synthetic data, of the true rates (the
ceiling), on the validation split. Every search stores the same numbers in
<run>/baseline.json, and its final table places the best model between them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autolfads.cli.metrics_table import metrics_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "baseline",
        help="NLB metrics of the smoothing baseline (floor) and true rates (ceiling) of a data file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", type=Path, metavar="DATA.h5", help="an lfads-torch / TF2 HDF5 file")
    p.add_argument("--json", action="store_true", help="print baseline.json's content instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autolfads.trainer.data.lfads_h5 import load_lfads_h5
    from autolfads.trainer.evaluation.baseline import REFERENCE_METRICS, reference_scores

    data = load_lfads_h5(args.data)
    doc = reference_scores(data)
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0
    print(f"{args.data}: validation split, {data.valid.n_trials} trials")
    print("\n".join(metrics_table(doc, REFERENCE_METRICS, model=False)))
    print(f"  (smoothing kernel sd {doc['floor']['sd_bins']:g} bins, chosen on the training split)")
    if data.heldout_dim == 0:
        print("  co-bps needs held-out neurons: this file has none (recon_data = encod_data)")
    if doc["ceiling"] is None:
        print("  no true rates in this file (recorded data): no ceiling")
    return 0
