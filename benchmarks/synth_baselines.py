"""Ceiling and floor of the synthetic datasets: NLB metrics of the TRUE rates and
of the spike-smoothing baseline, on the valid split.

    python benchmarks/synth_baselines.py                 # reference sizes (~5 min, 2 cores)
    python benchmarks/synth_baselines.py --small         # CI sizes (seconds)

Prints a Markdown table for benchmarks/README.md ("Synthetic data: ceiling and
floor"). A trained LFADS model should land between the two rows of its dataset.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

from threadpoolctl import threadpool_limits

from autolfads.cli.data_cmd import SMALL_SIZES
from autolfads.trainer.data.synth import SYNTH_KINDS, make_synthetic
from autolfads.trainer.evaluation.metrics import evaluate
from autolfads.trainer.evaluation.smoothing import smoothing_baseline

METRICS = ("co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2")


def _row(kind: str, method: str, scores: dict[str, float], seconds: float) -> str:
    cells = " | ".join(f"{scores[m]:.3f}" if m in scores else "" for m in METRICS)
    return f"| {kind} | {method} | {cells} | {seconds:.1f} |"


def run(kind: str, seed: int, small: bool, sd_values: list[float]) -> Iterator[str]:
    start = time.perf_counter()
    data = make_synthetic(kind, seed=seed, **(SMALL_SIZES[kind] if small else {}))
    made = time.perf_counter() - start
    # Synthetic data always carries its true rates and the valid split's counts.
    assert data.train.truth is not None and data.valid.truth is not None
    assert data.valid.recon_data is not None
    truth = {"train_output_params": data.train.truth, "valid_output_params": data.valid.truth}
    yield (
        f"<!-- {kind}: {data.train.n_trials} train / {data.valid.n_trials} valid trials, "
        f"{data.encod_data_dim}+{data.heldout_dim} neurons, {data.encod_seq_len}+"
        f"{data.fp_seq_len} bins, mean {data.valid.recon_data.mean():.3f} spikes/bin, "
        f"generated in {made:.1f} s -->"
    )
    start = time.perf_counter()
    scores = evaluate(data, truth)
    yield _row(kind, "true rates (ceiling)", scores, time.perf_counter() - start)
    for sd in sd_values:
        start = time.perf_counter()
        scores = evaluate(data, smoothing_baseline(data, sd_bins=sd))
        yield _row(kind, f"smoothing, sd {sd:g} bins", scores, time.perf_counter() - start)


def _cpu() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(SYNTH_KINDS), choices=SYNTH_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="CI-sized datasets")
    parser.add_argument("--sd", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
    args = parser.parse_args()
    print(f"machine: {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| dataset | rates | co-bps | fp-bps | vel R2 | psth R2 | rate R2 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    # One BLAS thread: on 2 shared cores, threaded BLAS mostly waits on itself.
    with threadpool_limits(1):
        for kind in args.kinds:
            for row in run(kind, args.seed, args.small, args.sd):
                print(row, flush=True)


if __name__ == "__main__":
    main()
