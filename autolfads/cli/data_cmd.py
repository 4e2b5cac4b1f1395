"""`autolfads data`: make synthetic datasets and check data files.

    autolfads data synth chaotic-rnn --out data/chaotic_rnn.h5 [--seed N] [--small] [--force]
    autolfads data check data/chaotic_rnn.h5
    autolfads data from-nwb FILE.nwb --out DATA.h5 --preset mc_maze [--bin-ms 20]
    autolfads data to-nwb lfads_output.h5 --nwb FILE.nwb --out RESULT.nwb

`synth` writes the reference-size benchmark by default (chaotic RNN: 400
conditions x 10 trials; Lorenz: 65 x 25); `--small` or the size flags make
CI-sized ones. `check` validates a file and prints what the trainer will see.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from autolfads.errors import DataError
from autolfads.extras import needs

if TYPE_CHECKING:
    from autolfads.trainer.data.dataset import LfadsData

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
    _register_from_nwb(actions)
    _register_to_nwb(actions)


def _register_from_nwb(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "from-nwb",
        help="bin an NWB recording's units into trials (lfads-torch HDF5)",
        description="Bin the units of an NWB file into trial windows and write LFADS tensors "
        "(README, 'Your own data'). Flags override the --preset's values.",
    )
    p.add_argument("nwb", type=Path, help="NWB file with units and trials tables")
    p.add_argument("--out", required=True, type=Path, help="output .h5 file")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--preset", choices=["mc_maze"], help="NLB MC_Maze window, lag, forward bins")
    p.add_argument("--bin-ms", type=int, help="bin width in ms (default 5)")
    p.add_argument("--align", help="trials column the window is aligned to, e.g. move_onset_time")
    p.add_argument(
        "--window",
        nargs=2,
        type=int,
        metavar=("START_MS", "END_MS"),
        help="window around the --align time, else around start_time "
        "(default: whole trials, start_time..stop_time)",
    )
    p.add_argument("--fp-ms", type=int, help="forward-prediction ms after the window (default 0)")
    p.add_argument("--heldout-column", help="boolean units column marking held-out neurons")
    p.add_argument("--heldout", type=int, help="else: this many random held-out neurons")
    p.add_argument(
        "--seed", type=int, help="seed of random held-out neurons and splits (default 0)"
    )
    p.add_argument("--behavior", help="TimeSeries MODULE/NAME, e.g. behavior/hand_vel")
    p.add_argument("--behavior-lag-ms", type=int, help="behaviour taken this much later (ms)")
    p.add_argument("--split-column", help="trials column with train / val / test (none: unused)")
    p.add_argument("--valid-fraction", type=float, help="else: random valid fraction (0.2)")
    p.add_argument("--condition-columns", nargs="+", help="trials columns defining conditions")
    p.add_argument("--psth-kern-sd-ms", type=float, help="PSTH smoothing kernel sd (default 0)")
    p.add_argument(
        "--drop-bad-trials", action="store_true", help="leave out trials that fail a check"
    )
    p.add_argument(
        "--units-from", type=Path, help="reuse this from-nwb file's channels (for apply)"
    )
    p.set_defaults(func=run_from_nwb)
    needs(p, "nwb")


def _register_to_nwb(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "to-nwb",
        help="write LFADS outputs into a copy of the source NWB file",
        description="Copy the source NWB file and add the inferred rates, factors and inputs "
        "per trial as a processing module.",
    )
    p.add_argument("output", type=Path, help="lfads_output .h5 (finalize, train or apply)")
    p.add_argument("--nwb", required=True, type=Path, help="the NWB file the data came from")
    p.add_argument("--out", required=True, type=Path, help="result .nwb file")
    p.add_argument("--module", default="lfads", help="processing module name (default lfads)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=run_to_nwb)
    needs(p, "nwb")


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
    from autolfads.trainer.data.lfads_h5 import dataset_sha256, write_lfads_h5
    from autolfads.trainer.data.synth import make_synthetic

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
    from autolfads.trainer.data.lfads_h5 import dataset_sha256, load_lfads_h5

    data = load_lfads_h5(args.path, heldout_dim=args.heldout_dim, fp_seq_len=args.fp_seq_len)
    print(f"{args.path}: OK (sha256 {dataset_sha256(args.path)})")
    for line in summary_lines(data):
        print(f"  {line}")
    return 0


def summary_lines(data: LfadsData) -> list[str]:
    """What the trainer will see: splits, shapes, channel/bin split, rates, extras."""
    from autolfads.trainer.evaluation.metrics import co_bps

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
    if valid.truth is not None and valid.recon_data is not None and data.heldout_dim > 0:
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


def _import_options(args: argparse.Namespace):
    from autolfads.trainer.data.lfads_h5 import load_lfads_h5
    from autolfads.trainer.data.nwb_import import NwbImportOptions, units_like

    given = {
        "bin_ms": args.bin_ms,
        "align": args.align,
        "window_ms": None if args.window is None else tuple(args.window),
        "fp_ms": args.fp_ms,
        "heldout_column": args.heldout_column,
        "heldout": args.heldout,
        "seed": args.seed,
        "behavior": args.behavior,
        "behavior_lag_ms": args.behavior_lag_ms,
        "split_column": args.split_column,
        "valid_fraction": args.valid_fraction,
        "condition_columns": None
        if args.condition_columns is None
        else tuple(args.condition_columns),
        "psth_kern_sd_ms": args.psth_kern_sd_ms,
        "drop_bad_trials": args.drop_bad_trials or None,
    }
    if args.heldout is not None and args.heldout_column is not None:
        raise DataError("pass --heldout-column or --heldout, not both")
    if args.units_from is not None and (args.heldout is not None or args.heldout_column):
        raise DataError(
            "--units-from fixes the channels and which of them are held out; "
            "drop --heldout / --heldout-column"
        )
    if args.valid_fraction is not None and (args.split_column or args.preset):
        raise DataError(
            "--valid-fraction splits trials at random, but the splits come from "
            f"{'--split-column' if args.split_column else 'the preset split column'}; "
            "drop one of them"
        )
    if args.units_from is not None:
        given.update(units_like(load_lfads_h5(args.units_from)))
    if args.preset:
        if args.heldout is not None:
            given["heldout_column"] = ""  # random held-out neurons replace the preset's column
        return NwbImportOptions.from_preset(args.preset, **given)
    return NwbImportOptions(**{k: v for k, v in given.items() if v is not None})


def run_from_nwb(args: argparse.Namespace) -> int:
    from autolfads.trainer.data.lfads_h5 import dataset_sha256, write_lfads_h5
    from autolfads.trainer.data.nwb_import import nwb_to_lfads

    if args.out.exists() and not args.force:
        raise DataError(f"{args.out}: already exists; pass --force to overwrite it")
    if args.out.resolve() == args.nwb.resolve():
        raise DataError(f"{args.out}: is the source file; write the result to a new file")
    opts = _import_options(args)
    data, report = nwb_to_lfads(args.nwb, opts)
    write_lfads_h5(data, args.out)  # validates; atomic
    print(f"wrote {args.out} from {args.nwb} (sha256 {dataset_sha256(args.out)[:16]})")
    for line in report.lines:
        print(f"  {line}")
    return 0


def run_to_nwb(args: argparse.Namespace) -> int:
    from autolfads.trainer.data.nwb_export import write_result_nwb

    if args.out.exists() and not args.force:
        raise DataError(f"{args.out}: already exists; pass --force to overwrite it")
    if args.out.resolve() == args.nwb.resolve():
        raise DataError(f"{args.out}: is the source file; write the result to a new file")
    print(write_result_nwb(args.output, args.nwb, args.out, module=args.module))
    return 0
