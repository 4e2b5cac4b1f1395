"""`autolfads train CONFIG.yaml`: train one LFADS model with fixed hyperparameters.

Writes into the output folder (default ./runs/<name>-train/):
    config.yaml                   the validated config as run
    metrics.jsonl                 one JSON object per epoch (or --jsonl FILE)
    checkpoint.pt                 final TrainingSession checkpoint
    lfads_output_<datastem>.h5    posterior-averaged rates, factors, ...
    metrics.json                  final evaluation (NLB metrics) and last epoch
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from autolfads.config import RunConfig, load_config
from autolfads.errors import AutolfadsError, ConfigError
from autolfads.extras import needs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one LFADS model (no PBT) and write its posterior outputs",
        description="Train one LFADS model with the config's hyperparameters.",
    )
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument("--out", help="output folder (default: ./runs/<name>-train)")
    parser.add_argument("--epochs", type=int, help="epochs to train (default: max_epochs)")
    parser.add_argument("--jsonl", help="per-epoch metrics file (default: <out>/metrics.jsonl)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override device")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)
    needs(parser, "trainer")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    epochs = cfg.training.max_epochs if args.epochs is None else args.epochs
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    out_dir = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-train"
    _check_out_dir(out_dir, args.force)
    # Bad data must fail before the output folder exists: nothing half-written.
    data = load_run_data(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = Path(args.jsonl) if args.jsonl else out_dir / "metrics.jsonl"

    import torch  # heavy: only once the inputs are known to be good

    from autolfads.trainer.evaluation.posterior import posterior_sample, write_lfads_output
    from autolfads.trainer.model.session import TrainingSession

    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    device = args.device or cfg.training.device
    (out_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    session = TrainingSession.fresh(cfg, data, cfg.initial_hparams(), cfg.training.seed, device)
    _say(
        args,
        f"training {cfg.name} on {session.device}: {session.model.num_parameters()} "
        f"parameters, {data.train.n_trials} train / {data.valid.n_trials} valid trials",
    )
    last = _train(session, epochs, jsonl, args)
    _atomic_write(out_dir / "checkpoint.pt", session.checkpoint())
    # The seed `autolfads apply` uses on this folder: the two outputs agree.
    outputs = posterior_sample(
        session, data, num_samples=cfg.training.posterior_samples, seed=cfg.training.seed
    )
    out_h5 = out_dir / f"lfads_output_{Path(cfg.data.path).stem}.h5"
    write_lfads_output(outputs, out_h5, data=data)
    summary = {"epochs": session.epoch, "last_epoch": last, "evaluation": _evaluate(data, outputs)}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _say(args, f"done: valid_recon_smth {session.valid_recon_smth:.5f}; outputs in {out_dir}")
    return 0


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f"output folder {out_dir} already exists; pass --force or use --out")


def load_run_data(cfg: RunConfig) -> Any:
    """The run's data file, generated first from `data.synth` if it is missing."""
    from autolfads.trainer.data.config_data import load_config_data

    return load_config_data(cfg)[1]


def _train(session: Any, epochs: int, jsonl: Path, args: argparse.Namespace) -> dict[str, float]:
    start = time.perf_counter()
    last: dict[str, float] = {}
    with open(jsonl, "a", encoding="utf-8") as log:
        for k in range(1, epochs + 1):
            last = session.train_epoch()
            log.write(json.dumps(last) + "\n")
            log.flush()
            if not math.isfinite(last["train_loss"]):
                raise AutolfadsError(
                    f"training diverged at epoch {last['epoch']} (loss {last['train_loss']}); "
                    "lower training.lr_init or raise the KL/L2 ramps"
                )
            elapsed = time.perf_counter() - start
            eta = elapsed / k * (epochs - k)
            _say(
                args,
                f"epoch {k}/{epochs}  loss {last['train_loss']:.4g}  "
                f"valid_recon_smth {last['valid_recon_smth']:.5f}  "
                f"valid_bps {last.get('valid_bps', math.nan):.4f}  ETA {_fmt_time(eta)}",
            )
    return last


def _evaluate(data: Any, outputs: dict[str, Any]) -> dict[str, float]:
    from autolfads.trainer.evaluation.metrics import evaluate

    return {k: float(v) for k, v in evaluate(data, outputs).items()}


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(payload)
    tmp.replace(path)


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _say(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr, flush=True)
