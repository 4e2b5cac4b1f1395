"""autolfads vs the real lfads-torch: speed per step and per epoch, and model quality.

    python benchmarks/bench_lfads_torch.py --peer-python /path/to/venv/bin/python
    python benchmarks/bench_lfads_torch.py --peer-python P --what speed --sizes stated
    python benchmarks/bench_lfads_torch.py --peer-python P --what quality --quality-epochs 100

`--peer-python` is an interpreter in which `lfads_torch` (and its
`pytorch_lightning`) import; this script neither installs nor patches it
(how to prepare one: shared/reference/lfads-torch-peer.md). It runs
`lfads_torch_driver.py` there and autolfads here, on the same data file.

Data: `autolfads data synth chaotic-rnn`, seed 0, at each size. lfads-torch
gets the same train/valid spike arrays in its HDF5 layout (encod_data,
recon_data; no truth, which it would only log).

Sizes (both implementations, same hyperparameters: autolfads' training
defaults, passed to lfads-torch by name):
  stated       gen 100, fac 40, ic_enc/ci_enc/con 64, co 4, ic 64, batch 128;
               38 + 12 neurons, 100 bins, 1280 train / 320 valid trials.
  nlb_mc_maze  lfads-torch's configs/model/nlb_mc_maze.yaml: gen 200, fac 100,
               ic_enc/ci_enc/con 64, co 4, ic 64, batch 256; 137 + 45 neurons,
               35 + 10 forward bins, 1722 train / 574 valid trials (MC_Maze 20 ms).

speed: R rounds; each runs S training steps (after 2 warm-up steps) on one
batch in each implementation, then one epoch (train + valid) in each, the
order alternating between rounds, 1 thread each, so both see the same load.
quality: both train E epochs from seed 0 (lfads-torch through a Lightning
Trainer), then the posterior means of K samples are scored on the valid split
with autolfads' NLB metrics (co-bps, fp-bps, vel R2, psth R2, rate R2 vs truth).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import _cpu_name, _step_times  # noqa: E402

from autolfads.config import RunConfig, parse_config  # noqa: E402
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import load_lfads_h5  # noqa: E402
from autolfads.trainer.evaluation.metrics import evaluate  # noqa: E402
from autolfads.trainer.evaluation.posterior import posterior_sample  # noqa: E402
from autolfads.trainer.model.session import TrainingSession  # noqa: E402

DRIVER = Path(__file__).resolve().parent / "lfads_torch_driver.py"
HOWTO = "shared/reference/lfads-torch-peer.md"
WARMUP_STEPS = 2

SIZES: dict[str, dict[str, Any]] = {
    "stated": {
        "synth": dict(
            n_conditions=160, n_trials=10, n_neurons=50, n_heldout=12, n_bins=100, n_fp_bins=0
        ),
        "model": dict(
            gen_dim=100, fac_dim=40, ic_enc_dim=64, ci_enc_dim=64, con_dim=64, co_dim=4, ic_dim=64
        ),
        "batch_size": 128,
    },
    "nlb_mc_maze": {
        # 4 trials per condition: the synthesizer's last one goes to valid (25 %),
        # as MC_Maze's 1721 / 574 split.
        "synth": dict(
            n_conditions=574, n_trials=4, n_neurons=182, n_heldout=45, n_bins=35, n_fp_bins=10
        ),
        "model": dict(
            gen_dim=200, fac_dim=100, ic_enc_dim=64, ci_enc_dim=64, con_dim=64, co_dim=4, ic_dim=64
        ),
        "batch_size": 256,
    },
}


class PeerError(Exception):
    """The peer interpreter cannot run lfads-torch; the message is one line."""


def check_peer(python: str) -> None:
    """Raise PeerError naming what is missing from the peer interpreter."""
    if not Path(python).is_file():
        raise PeerError(f"--peer-python {python}: no such file")
    probe = "import lfads_torch.model, pytorch_lightning, h5py"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except OSError as err:
        raise PeerError(f"--peer-python {python}: cannot run it ({err.strerror})") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise PeerError(f"--peer-python {python}: {lines[-1]}")


def make_data(size: str, folder: Path) -> tuple[LfadsData, Path]:
    """Generate the size's data with autolfads' CLI; write lfads-torch's copy."""
    ours = folder / f"{size}.h5"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SIZES[size]["synth"].items()]
    cmd = [sys.executable, "-m", "autolfads", "data", "synth", "chaotic-rnn", "--seed=0"]
    subprocess.run([*cmd, *flags, f"--out={ours}"], check=True, stdout=subprocess.DEVNULL)
    data = load_lfads_h5(ours)
    peer = folder / f"{size}-lfads-torch.h5"
    with h5py.File(peer, "w") as f:
        for name, split in (("train", data.train), ("valid", data.valid)):
            f.create_dataset(f"{name}_encod_data", data=split.encod_data)
            f.create_dataset(f"{name}_recon_data", data=split.recon_data)
    return data, peer


def our_config(size: str) -> RunConfig:
    spec = SIZES[size]
    return parse_config(
        {
            "data": {"path": "bench.h5"},
            "model": spec["model"],
            "training": {"batch_size": spec["batch_size"]},
        }
    )


def peer_spec(size: str, cfg: RunConfig, data: LfadsData) -> dict:
    """The same sizes and training values, in lfads-torch's names."""
    t = cfg.training
    dims = dict(
        SIZES[size]["model"],
        encod_data_dim=data.encod_data_dim,
        encod_seq_len=data.encod_seq_len,
        recon_seq_len=data.recon_seq_len,
        recon_data_dim=data.recon_data_dim,
    )
    hparams = dict(
        loss_scale=t.loss_scale, lr_init=t.lr_init, lr_adam_beta1=t.adam_beta1,
        lr_adam_beta2=t.adam_beta2, lr_adam_epsilon=t.adam_eps, weight_decay=t.weight_decay,
        dropout_rate=t.dropout_rate, cd_rate=t.cd_rate,
        l2_start_epoch=t.l2_start_epoch, l2_increase_epoch=t.l2_increase_epochs,
        l2_ic_enc_scale=t.l2_ic_enc_scale, l2_ci_enc_scale=t.l2_ci_enc_scale,
        l2_gen_scale=t.l2_gen_scale, l2_con_scale=t.l2_con_scale,
        kl_start_epoch=t.kl_start_epoch, kl_increase_epoch=t.kl_increase_epochs,
        kl_ic_scale=t.kl_ic_scale, kl_co_scale=t.kl_co_scale,
    )  # fmt: skip
    return {"dims": dims, "hparams": hparams, "batch_size": t.batch_size, "seed": 0}


class Peer:
    """lfads_torch_driver.py in speed mode: one JSON command, one JSON reply."""

    def __init__(self, python: str, data: Path, spec: dict, threads: int) -> None:
        cmd = [python, str(DRIVER), "speed", f"--data={data}", f"--spec={json.dumps(spec)}"]
        self.proc = subprocess.Popen(
            [*cmd, f"--threads={threads}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ready = self.read()

    def read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise PeerError(f"lfads_torch_driver.py exited ({self.proc.wait()}); see its stderr")
        return json.loads(line)

    def send(self, **msg: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def ask(self, **msg: object) -> dict:
        self.send(**msg)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def time_speed(size: str, data: LfadsData, peer_file: Path, args: argparse.Namespace) -> dict:
    """Interleaved step and epoch times of both implementations at one size."""
    cfg = our_config(size)
    session = TrainingSession.fresh(cfg, data, {}, seed=0, device="cpu")
    peer = Peer(args.peer_python, peer_file, peer_spec(size, cfg, data), args.threads)
    n = args.steps + WARMUP_STEPS
    steps: dict[str, list[float]] = {"autolfads": [], "lfads-torch": []}
    epochs: dict[str, list[float]] = {"autolfads": [], "lfads-torch": []}
    runs: dict[str, tuple[Callable[[], list[float]], Callable[[], float]]] = {
        "autolfads": (
            lambda: _step_times(session, n)[0],
            lambda: session.train_epoch()["seconds"],
        ),
        "lfads-torch": (
            lambda: peer.ask(cmd="steps", n=n)["wall"],
            lambda: peer.ask(cmd="epoch")["seconds"],
        ),
    }
    try:
        order = list(runs)
        for _ in range(args.rounds):
            for name in order:
                steps[name] += runs[name][0]()[WARMUP_STEPS:]
            order.reverse()
        # The driver enters a Lightning fit of `rounds` epochs, each held
        # until its "epoch" command; it says "done" when the fit returns.
        peer.send(cmd="epochs_begin", n=args.rounds)
        for _ in range(args.rounds):
            for name in order:
                epochs[name].append(runs[name][1]())
            order.reverse()
        peer.read()  # {"done": true}
    finally:
        peer.close()
    return {
        "params": (session.model.num_parameters(), peer.ready["trainable_parameters"]),
        "steps": steps,
        "epochs": epochs,
    }


def train_quality(size: str, data: LfadsData, peer_file: Path, args: argparse.Namespace) -> dict:
    """Both trained for `quality_epochs` from seed 0 (lfads-torch in its own
    process meanwhile); NLB metrics of their posterior means on valid."""
    cfg = our_config(size)
    out = peer_file.with_suffix(".rates.npz")
    cmd = [args.peer_python, str(DRIVER), "quality", f"--data={peer_file}"]
    cmd += [f"--spec={json.dumps(peer_spec(size, cfg, data))}", f"--threads={args.threads}"]
    cmd += [f"--epochs={args.quality_epochs}", f"--samples={args.samples}", f"--out={out}"]
    peer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        session = TrainingSession.fresh(cfg, data, {}, seed=0, device="cpu")
        start = time.perf_counter()
        for _ in range(args.quality_epochs):
            session.train_epoch()
        ours_s = time.perf_counter() - start
        ours = posterior_sample(session, data, num_samples=args.samples)
    finally:
        code = peer.wait()
    if code != 0:
        raise PeerError(f"lfads_torch_driver.py quality exited {code}; see its stderr")
    with np.load(out) as f:
        theirs = {k: f[k] for k in ("train_output_params", "valid_output_params")}
        theirs_s = float(f["seconds"])
    truth = {f"{k}_output_params": getattr(data, k).truth for k in ("train", "valid")}
    return {
        "autolfads": (evaluate(data, ours, "valid"), ours_s),
        "lfads-torch": (evaluate(data, theirs, "valid"), theirs_s),
        "true rates (ceiling)": (evaluate(data, truth, "valid"), None),
    }


def report_speed(size: str, result: dict, rounds: int) -> None:
    ours_p, theirs_p = result["params"]
    print(f"\n{size}: trainable parameters autolfads {ours_p:,}, lfads-torch {theirs_p:,}")
    print("| implementation | train step (median) | min | epoch, train + valid (median) | min |")
    print("|---|---|---|---|---|")
    for name in ("autolfads", "lfads-torch"):
        s, e = result["steps"][name], result["epochs"][name]
        print(
            f"| {name} | {median_ms(s):.0f} ms | {min(s) * 1e3:.0f} ms "
            f"| {statistics.median(e):.2f} s | {min(e):.2f} s |"
        )
    ratio_s = median_ms(result["steps"]["lfads-torch"]) / median_ms(result["steps"]["autolfads"])
    ratio_e = statistics.median(result["epochs"]["lfads-torch"]) / statistics.median(
        result["epochs"]["autolfads"]
    )
    n_steps = len(result["steps"]["autolfads"])
    print(
        f"lfads-torch / autolfads: {ratio_s:.2f}x per step, {ratio_e:.2f}x per epoch "
        f"({n_steps} steps and {rounds} epochs each, interleaved)"
    )


def report_quality(size: str, result: dict, epochs: int, samples: int) -> None:
    names = ("co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2")
    print(f"\n{size}: valid split after {epochs} epochs, posterior means of {samples} samples")
    print("| rates | " + " | ".join(names) + " | training s (wall, both at once) |")
    print("|---|" + "---|" * (len(names) + 1))
    for name, (metrics, seconds) in result.items():
        cells = " | ".join(f"{metrics[k]:.4f}" if k in metrics else "" for k in names)
        print(f"| {name} | {cells} | {'' if seconds is None else f'{seconds:.0f}'} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peer-python", required=True, help=f"interpreter with lfads_torch (see {HOWTO})"
    )
    parser.add_argument("--what", choices=["speed", "quality", "both"], default="both")
    parser.add_argument("--sizes", default="stated,nlb_mc_maze", help="speed: comma-separated")
    parser.add_argument("--quality-size", choices=sorted(SIZES), default="stated")
    parser.add_argument("--quality-epochs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=20, help="posterior samples (quality)")
    parser.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="speed: timed steps per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        parser.error(
            f"--sizes: unknown size {unknown or args.sizes!r}; choose from {sorted(SIZES)}"
        )
    if min(args.quality_epochs, args.samples, args.rounds, args.steps, args.threads) < 1:
        parser.error("--quality-epochs, --samples, --rounds, --steps and --threads must be >= 1")
    args.sizes = sizes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_peer(args.peer_python)
    except PeerError as err:
        print(f"bench_lfads_torch: {err} (how to prepare it: {HOWTO})", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"machine: {_cpu_name()}, torch {torch.__version__}, threads {args.threads}, cpu")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.what in ("speed", "both"):
                for size in args.sizes:
                    data, peer_file = make_data(size, Path(tmp))
                    report_speed(size, time_speed(size, data, peer_file, args), args.rounds)
            if args.what in ("quality", "both"):
                size = args.quality_size
                data, peer_file = make_data(size, Path(tmp))
                result = train_quality(size, data, peer_file, args)
                report_quality(size, result, args.quality_epochs, args.samples)
        except PeerError as err:
            print(f"bench_lfads_torch: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
