"""One model, no search: validation co-bps against epochs and seconds.

    python benchmarks/single_model_quality.py CONFIG [--set model.fac_dim=40 ...]
        [--synth-seed N] [--synth-kind lorenz] [--sizes n_conditions=200]
        [--epochs 200] [--eval-every 25] [--seed 0]

Trains one `TrainingSession` with the config's `training:` values (each
`--set section.key=value` overrides one config field first) and prints one
JSON line per evaluation: epochs done, training seconds so far (1 thread),
the one-pass validation co-bps and, at each `--eval-every`, the co-bps of the
posterior-averaged rates (the config's `posterior_samples`, as finalize
scores) with its place between the data's smoothing floor (0) and true-rate
ceiling (1). The calibration behind the examples' model, batch and learning
rate (benchmarks/README.md, "Choosing the main job's settings").

`--synth-seed`, `--synth-kind` and `--sizes` regenerate the config's
synthetic data with another seed, generator or size (into a temporary
folder), to check that settings chosen on one data set carry over.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from search_quality import apply_overrides, score


def patched_config(args: argparse.Namespace, tmp: Path) -> Path:
    """The config with --set overrides and a regenerated data path if asked."""
    raw = yaml.safe_load(args.config.read_text())
    raw["data"]["path"] = str((args.config.parent / raw["data"]["path"]).resolve())
    apply_overrides(raw, args.set)
    synth = raw["data"].get("synth") or {}
    if args.synth_seed is not None or args.synth_kind or args.sizes:
        synth = dict(synth)
        if args.synth_seed is not None:
            synth["seed"] = args.synth_seed
        if args.synth_kind:
            synth["kind"] = args.synth_kind
            synth["sizes"] = {}
        for item in args.sizes:
            key, _, text = item.partition("=")
            synth.setdefault("sizes", {})[key] = int(text)
        raw["data"] = {"path": str(tmp / "data.h5"), "synth": synth}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--set", action="append", default=[], help="section.key=value override")
    ap.add_argument("--synth-seed", type=int)
    ap.add_argument("--synth-kind", choices=("chaotic-rnn", "lorenz"))
    ap.add_argument("--sizes", action="append", default=[], help="generator size, name=int")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--log-every", type=int, default=5, help="one-pass lines every N epochs")
    ap.add_argument("--seed", type=int, default=0, help="weight and training-noise seed")
    ap.add_argument("--no-baseline", action="store_true", help="skip the floor and ceiling")
    args = ap.parse_args()

    import torch

    from autolfads.config import load_config
    from autolfads.trainer.data.config_data import load_config_data
    from autolfads.trainer.evaluation.baseline import fraction_of_range, reference_scores
    from autolfads.trainer.model.session import TrainingSession

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(patched_config(args, Path(tmp)))
        _, data = load_config_data(cfg)
    floor = ceiling = float("nan")
    if not args.no_baseline:
        ref = reference_scores(data)
        floor = ref["floor"]["co_bps"]
        ceiling = ref["ceiling"]["co_bps"] if ref["ceiling"] else float("nan")
    print(
        json.dumps(
            {
                "floor": round(floor, 4),
                "ceiling": round(ceiling, 4),
                "train_trials": data.train.encod_data.shape[0],
            }
        ),
        flush=True,
    )
    session = TrainingSession.fresh(cfg, data, cfg.training.hparams(), seed=args.seed)
    seconds = cpu = 0.0  # wall and CPU seconds of training (1 thread: CPU ~ idle wall)
    for epoch in range(1, args.epochs + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        stats = session.train_epoch()
        seconds += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        line = {
            "epoch": epoch,
            "train_s": round(seconds, 1),
            "s_per_epoch": round(seconds / epoch, 3),
            "cpu_s_per_epoch": round(cpu / epoch, 3),
            "valid_co_bps_1pass": round(stats["valid_co_bps"], 4),
        }
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            co = score(session, data)["co_bps"]
            line["co_bps"] = round(co, 4)
            line["fraction"] = round(fraction_of_range(co, floor, ceiling) or float("nan"), 3)
        elif epoch % args.log_every:
            continue
        print(json.dumps(line), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
