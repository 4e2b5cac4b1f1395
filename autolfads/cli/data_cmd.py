"""`autolfads data`: make synthetic datasets and check data files.

    autolfads data synth chaotic-rnn --out data/chaotic_rnn.h5 [--seed N] [--small] [--force]
    autolfads data check data/chaotic_rnn.h5

`synth` writes the reference-size benchmark by default (chaotic RNN: 400
conditions x 10 trials; Lorenz: 65 x 25); `--small` or the size flags make
CI-sized ones. `check` validates a file and prints what the trainer will see.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from autolfads.errors import DataError

if TYPE_CHECKING:
    from autolfads.trainer.data import LfadsData

# CI-sized datasets: a few hundred trials, generated and trained in seconds.
SMALL_SIZES: dict[str, dict[str, int]] = {
    "chaotic-rnn": {"n_conditions": 40, "n_replications": 5},
    "lorenz": {"n_conditions": 20, "n_trials_per_condition": 10},
}
TRIALS_ARG = {"chaotic-rnn": "n_replications", "lorenz": "n_trials_per_condition"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="make synthetic datasets and check data files")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = actions.add_parser("synth", help="write a synthetic benchmark dataset (HDF5)")
    synth.add_argument("kind", choices=["chaotic-rnn", "lorenz"], help="which generator")
    synth.add_argument("--out", required=True, type=Path, help="output .h5 file")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--force", action="store_true", help="overwrite an existing file")
    synth.add_argument("--small", action="store_true", help="CI-sized dataset")
    synth.add_argument("--n-conditions", type=int, help="number of conditions")
    synth.add_argument("--n-trials", type=int, help="trials per condition")
    synth.add_argument("--n-neurons", type=int, help="neurons, held-in + held-out")
    synth.add_argument("--n-heldout", type=int, help="held-out neurons")
    synth.add_argument("--n-bins", type=int, help="observed bins per trial")
    synth.add_argument("--n-fp-bins", type=int, help="forward-prediction bins per trial")
    synth.set_defaults(func=run_synth)

    check = actions.add_parser("check", help="validate a data file and print a summary")
    check.add_argument("path", type=Path, help="HDF5 data file")
    check.add_argument(
        "--heldout-dim", type=int, help="legacy train_data files: held-out channels (last ones)"
    )
    check.add_argument(
        "--fp-seq-len", type=int, help="legacy train_data files: forward bins (last ones)"
    )
    check.set_defaults(func=run_check)


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    sizes = dict(SMALL_SIZES[args.kind]) if args.small else {}
    flags = {
        "--n-conditions": ("n_conditions", args.n_conditions),
        "--n-trials": (TRIALS_ARG[args.kind], args.n_trials),
        "--n-neurons": ("n_neurons", args.n_neurons),
        "--n-heldout": ("n_heldout", args.n_heldout),
        "--n-bins": ("n_bins", args.n_bins),
        "--n-fp-bins": ("n_fp_bins", args.n_fp_bins),
    }
    for flag, (name, value) in flags.items():
        if value is None:
            continue
        if value < (0 if flag == "--n-fp-bins" else 1):
            raise DataError(
                f"{flag} must be {'>= 0' if flag == '--n-fp-bins' else '> 0'}, got {value}"
            )
        sizes[name] = value
    return sizes


def run_synth(args: argparse.Namespace) -> int:
    from autolfads.trainer.data import dataset_sha256, write_lfads_h5
    from autolfads.trainer.synth import make_synthetic

    if args.out.exists() and not args.force:
        raise DataError(f"{args.out}: already exists; pass --force to overwrite it")
    if args.seed < 0:
        raise DataError(f"--seed must be >= 0, got {args.seed}")
    data = make_synthetic(args.kind, seed=args.seed, **_sizes(args))
    write_lfads_h5(data, args.out)
    print(
        f"wrote {args.out}: {args.kind} seed {args.seed}, {data.train.n_trials} train + "
        f"{data.valid.n_trials} valid trials, sha256 {dataset_sha256(args.out)[:16]}"
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    from autolfads.trainer.data import dataset_sha256, load_lfads_h5

    data = load_lfads_h5(args.path, heldout_dim=args.heldout_dim, fp_seq_len=args.fp_seq_len)
    print(f"{args.path}: OK (sha256 {dataset_sha256(args.path)})")
    for line in summary_lines(data):
        print(f"  {line}")
    return 0


def summary_lines(data: LfadsData) -> list[str]:
    """What the trainer will see: splits, shapes, channel/bin split, rates, extras."""
    from autolfads.trainer.metrics import co_bps

    lines = []
    for name, split in data.splits().items():
        recon = "-" if split.recon_data is None else str(split.recon_data.shape)
        lines.append(
            f"{name}: {split.n_trials} trials, encod_data {split.encod_data.shape}, recon_data {recon}"
        )
    lines.append(
        f"channels: {data.encod_data_dim} held-in + {data.heldout_dim} held-out "
        f"= {data.recon_data_dim}"
    )
    lines.append(
        f"bins: {data.encod_seq_len} observed + {data.fp_seq_len} forward = {data.recon_seq_len}"
    )
    for name in ("train", "valid"):
        recon = getattr(data, name).recon_data
        lines.append(
            f"mean rate ({name}): {recon.mean():.4f} spikes/bin, max count {int(recon.max())}"
        )
    extras = _extras(data)
    lines.append("extras: " + (", ".join(extras) if extras else "none"))
    valid = data.valid
    if valid.truth is not None and data.heldout_dim > 0:
        ceiling = co_bps(valid.truth, valid.recon_data, data.encod_data_dim, data.encod_seq_len)
        lines.append(f"co-bps of the true rates (valid): {ceiling:.4f}")
    return lines


def _extras(data: LfadsData) -> list[str]:
    train = data.train
    extras = []
    if train.ext_input is not None:
        extras.append(f"ext_input ({data.ext_input_dim}-D)")
    if train.truth is not None:
        extras.append("truth")
    if train.behavior is not None:
        extras.append(f"behavior ({data.behavior_dim}-D)")
    if train.cond_idx is not None:
        n_cond = len({int(c) for c in train.cond_idx if c >= 0})
        extras.append(f"cond_idx ({n_cond} train conditions)")
    if train.decode_mask is not None:
        extras.append(f"decode_mask ({train.decode_mask.shape[1]} masks)")
    if "psth" in data.attrs:
        extras.append(f"psth {data.attrs['psth'].shape}")
    return extras
