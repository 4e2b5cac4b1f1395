"""Floor and ceiling of a data set: where a model's NLB metrics stand.

The floor is the NLB spike-smoothing baseline (`trainer/evaluation/smoothing.py`), its
Gaussian kernel width chosen on the training split only; the ceiling is the
true rates, known for synthetic data. Computed once per run, at staging, and
stored as `<run>/baseline.json`; `finalize` places the best model between the
two (`fraction_of_range`): 0 is the smoothing baseline, 1 the true rates.

Needs numpy and scikit-learn only (no torch): the coordinator image stages runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.evaluation.metrics import co_bps, evaluate
from autolfads.trainer.evaluation.smoothing import smoothing_baseline

log = logging.getLogger(__name__)

# Kernel widths tried for the smoothing baseline, in bins (NLB's MC_Maze uses
# 50 ms: 10 bins of 5 ms, 2.5 bins of 20 ms).
SD_CANDIDATES_BINS = (1.0, 2.0, 4.0, 8.0)
DEFAULT_SD_BINS = 2.0
# Metrics a reference is scored on (the model's come from the same `evaluate`).
# Not held-in bps: the smoothing baseline's held-in rates are the smoothed
# spikes themselves, so it would score the very spikes it was made from.
REFERENCE_METRICS = ("co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2")
FORMAT = "autolfads-baseline"
VERSION = 1


def _smoothing_outputs(data: LfadsData) -> tuple[float, dict[str, np.ndarray]]:
    """(kernel sd, outputs) of the smoothing baseline whose width predicts the
    held-out neurons of the TRAINING split best (co-bps); the default width
    without held-out neurons. Each candidate is fitted once."""
    if data.heldout_dim == 0:
        return DEFAULT_SD_BINS, smoothing_baseline(data, sd_bins=DEFAULT_SD_BINS)
    assert data.train.recon_data is not None
    best: tuple[float, float, dict[str, np.ndarray]] | None = None
    for sd in SD_CANDIDATES_BINS:
        if sd >= data.encod_seq_len and best is not None:
            break
        outputs = smoothing_baseline(data, sd_bins=sd)
        score = co_bps(
            outputs["train_output_params"],
            data.train.recon_data,
            data.encod_data_dim,
            data.encod_seq_len,
        )
        if best is None or score > best[0]:
            best = (score, sd, outputs)
    assert best is not None
    return best[1], best[2]


def _clean(scores: Mapping[str, float]) -> dict[str, float]:
    """The reference metrics that are numbers: one the data cannot give (NaN,
    e.g. co-bps when the valid split's held-out neurons never spike) is left
    out, as a metric not computed (baseline.json is strict JSON)."""
    return {k: float(v) for k, v in scores.items() if k in REFERENCE_METRICS and math.isfinite(v)}


def heldout_recon(
    rates: np.ndarray, spikes: np.ndarray, encod_data_dim: int, encod_seq_len: int
) -> float:
    """Mean full Poisson NLL per element of the held-out neurons in the observed
    bins: what a model's `valid_heldout_recon` measures (torch's poisson_nll_loss
    with full=True: Stirling's term where a count exceeds 1), so that a search
    ranked by `valid_heldout_recon_smth` can draw its floor and ceiling."""
    window = (slice(None), slice(0, encod_seq_len), slice(encod_data_dim, None))
    lam = np.maximum(np.asarray(rates, dtype=np.float64)[window], 1e-9)
    k = np.asarray(spikes, dtype=np.float64)[window]
    safe = np.where(k > 1, k, 1.0)
    stirling = np.where(k > 1, safe * np.log(safe) - safe + 0.5 * np.log(2 * np.pi * safe), 0.0)
    return float(np.mean(lam - k * np.log(lam) + stirling))


def _scores(data: LfadsData, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The reference metrics of `outputs` on the validation split."""
    scores = _clean(evaluate(data, outputs, split="valid"))
    if data.heldout_dim > 0:
        assert data.valid.recon_data is not None
        nll = heldout_recon(
            outputs["valid_output_params"],
            data.valid.recon_data,
            data.encod_data_dim,
            data.encod_seq_len,
        )
        if math.isfinite(nll):
            scores["valid_heldout_recon"] = nll
    return scores


def reference_scores(data: LfadsData) -> dict[str, Any]:
    """{"floor": smoothing baseline metrics (+ its sd), "ceiling": true-rate
    metrics or None} on the validation split, as stored in baseline.json."""
    # One BLAS thread: the GLM fits are tall and narrow (see smoothing.py).
    with threadpool_limits(1):
        sd, outputs = _smoothing_outputs(data)
        floor = _scores(data, outputs)
        ceiling = None
        if data.train.truth is not None and data.valid.truth is not None:
            truth = {
                "train_output_params": data.train.truth,
                "valid_output_params": data.valid.truth,
            }
            ceiling = _scores(data, truth)
    return {
        "format": FORMAT,
        "version": VERSION,
        "split": "valid",
        "floor": {"method": "spike smoothing + Poisson GLM", "sd_bins": sd, **floor},
        "ceiling": None if ceiling is None else {"method": "true rates", **ceiling},
    }


def fraction_of_range(value: float, floor: float, ceiling: float) -> float | None:
    """Where `value` lies from floor (0) to ceiling (1); None if undefined."""
    span = ceiling - floor
    if not all(math.isfinite(x) for x in (value, floor, ceiling)) or span <= 0:
        return None
    return (value - floor) / span


def place(metrics: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The floor, ceiling and fraction_of_range entries for a model's metrics."""
    floor = baseline.get("floor") or {}
    ceiling = baseline.get("ceiling") or {}
    fractions = {}
    for name in REFERENCE_METRICS:
        if name in metrics and name in floor and name in ceiling:
            frac = fraction_of_range(float(metrics[name]), floor[name], ceiling[name])
            if frac is not None:
                fractions[name] = frac
    return {"floor": dict(floor), "ceiling": dict(ceiling) or None, "fraction_of_range": fractions}
