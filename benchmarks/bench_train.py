"""Training speed and memory of one LFADS model (TrainingSession).

    python benchmarks/bench_train.py                 # stated size, 2 threads
    python benchmarks/bench_train.py --size example  # examples/train_chaotic_rnn.yaml sizes
    python benchmarks/bench_train.py --threads 1 --epochs 3

Stated size (the lfads-torch comparison point): gen 100, fac 40, ic_enc /
ci_enc / con 64, co 4, ic 64, batch 128, 50 neurons (38 held-in + 12
held-out), 100 bins, 1280 train + 320 valid trials (chaotic-RNN synthetic).

Prints the trainable parameter count, the median time of one training step
(forward + backward + AdamW on one batch), the median epoch time (training +
validation) and the process peak RSS.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

import torch

from autolfads.config import parse_config
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import load_lfads_h5
from autolfads.trainer.model.augment import coordinated_dropout
from autolfads.trainer.model.objective import lfads_loss
from autolfads.trainer.model.session import TrainingSession


class BenchSize(TypedDict):
    data: dict[str, int]  # make_synthetic's sizes
    model: dict[str, int]  # LFADS dimensions
    batch_size: int


SIZES: dict[str, BenchSize] = {
    "stated": {
        "data": dict(
            n_conditions=160, n_replications=10, n_neurons=50, n_heldout=12, n_bins=100, n_fp_bins=0
        ),
        "model": dict(
            gen_dim=100, fac_dim=40, ic_enc_dim=64, ci_enc_dim=64, con_dim=64, co_dim=4, ic_dim=64
        ),
        "batch_size": 128,
    },
    # Same sizes as examples/train_chaotic_rnn.yaml (data at the synth defaults).
    "example": {
        "data": {},
        "model": dict(
            gen_dim=64, fac_dim=16, ic_enc_dim=32, ci_enc_dim=16, con_dim=16, co_dim=2, ic_dim=32
        ),
        "batch_size": 256,
    },
}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_data(sizes: dict) -> LfadsData:
    """Generate the data in a child process and load the file here, so that the
    peak RSS below measures loading + training, not the simulator's arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        code = (
            "import sys; from autolfads.trainer.data.synth import make_chaotic_rnn; "
            "from autolfads.trainer.data.lfads_h5 import write_lfads_h5; "
            f"write_lfads_h5(make_chaotic_rnn(seed=0, **{sizes!r}), sys.argv[1])"
        )
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
        return load_lfads_h5(path)


def _step_times(session: TrainingSession, n_steps: int) -> tuple[list[float], list[float]]:
    """(wall, cpu) seconds of single training steps on the first batch, doing
    the work of one `train_epoch` step: coordinated dropout, forward, loss
    (with the split's cached Stirling term), backward, clipping, AdamW."""
    cfg, model, gen = session.cfg.training, session.model, session.generator
    split = session._train  # benchmark-only peek at the in-memory split
    idx = torch.arange(cfg.batch_size, device=session.device)
    encod, recon, ext, _ = split.batch(idx)
    assert recon is not None  # the training split always has counts
    dims = model.dims
    weights = session.loss_weights(session.epoch)
    hp = session.hparams
    model.train()
    wall, cpu = [], []
    for _ in range(n_steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        masked, grad_mask = coordinated_dropout(
            encod, hp["cd_rate"], 0.0, dims.recon_seq_len, dims.recon_data_dim, gen
        )
        out = model(masked, ext, hp["dropout_rate"], True, gen)
        terms = lfads_loss(
            model, out, recon, weights, gen, grad_mask, recon_stirling=split.stirling(idx)
        )
        session.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        session.optimizer.step()
        terms.total.item()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="stated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    data = _load_data(size["data"])
    cfg = parse_config(
        {
            "data": {"path": "bench.h5"},
            "model": size["model"],
            "training": {"batch_size": size["batch_size"]},
        }
    )
    session = TrainingSession.fresh(cfg, data, {}, seed=0, device=args.device)
    print(
        f"machine: {_cpu_name()}, torch {torch.__version__}, threads {args.threads}, "
        f"device {session.device}"
    )
    print(
        f"size: {args.size}; {data.train.n_trials} train / {data.valid.n_trials} valid trials, "
        f"{data.encod_data_dim}+{data.recon_data_dim - data.encod_data_dim} neurons, "
        f"{data.recon_seq_len} bins, batch {cfg.training.batch_size}"
    )
    print(f"trainable parameters: {session.model.num_parameters()}")
    wall, cpu = (t[2:] for t in _step_times(session, args.steps + 2))  # 2 warm-up steps
    print(
        f"train step: median {statistics.median(wall) * 1e3:.1f} ms wall, "
        f"{statistics.median(cpu) * 1e3:.1f} ms CPU (min {min(wall) * 1e3:.1f} ms over {len(wall)})"
    )
    epochs = [session.train_epoch()["seconds"] for _ in range(args.epochs)]
    print(f"epoch (train + valid): median {statistics.median(epochs):.2f} s over {len(epochs)}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (load + train): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
