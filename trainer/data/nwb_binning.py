"""Spike times and continuous signals onto trial-aligned bins (numpy + scipy only).

Every function takes each trial's window as its first bin's start time
(`starts`, seconds, shape (trials,)), a bin count and a bin width, so bin k
of trial i is the half-open interval [starts[i] + k w, starts[i] + (k + 1) w).
`autolfads data from-nwb` (trainer/data/nwb_import.py) builds its tensors here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d

from autolfads.errors import DataError

# Times are floats in seconds, and many recordings store them on a whole-
# millisecond grid: a spike exactly on a bin edge can compute as 1e-16 s
# before it. Edges are moved 1 ns earlier, so such a spike lands in the bin
# it starts (as integer arithmetic would put it); no real spike is that close.
EDGE_TOL_S = 1e-9


def bin_spike_times(
    spike_times: Sequence[np.ndarray], starts: np.ndarray, n_bins: int, bin_width: float
) -> np.ndarray:
    """Spike counts (trials, n_bins, units); windows may overlap.

    spike_times: one sorted array of times (s) per unit. The counts are
    float32 (exact for whole numbers below 2**24), the dtype LFADS trains
    on: MC_Maze at 5 ms is 2869 x 180 x 182 values, so no int64 copy first.
    """
    starts = np.asarray(starts, dtype=np.float64)
    ends = starts + n_bins * bin_width
    counts = np.zeros((starts.size, n_bins, len(spike_times)), dtype=np.float32)
    for unit, times in enumerate(spike_times):
        lo = np.searchsorted(times, starts - EDGE_TOL_S, side="left")
        hi = np.searchsorted(times, ends - EDGE_TOL_S, side="left")
        per_trial = hi - lo
        total = int(per_trial.sum())
        if total == 0:
            continue
        # Indices of every spike inside every window, without a Python loop
        # over trials: trial t contributes times[lo[t]:hi[t]].
        trial = np.repeat(np.arange(starts.size), per_trial)
        offsets = np.cumsum(per_trial) - per_trial
        idx = np.arange(total) - np.repeat(offsets, per_trial) + np.repeat(lo, per_trial)
        k = np.floor((times[idx] - starts[trial] + EDGE_TOL_S) / bin_width).astype(np.int64)
        # Rounding can still push an edge time one bin out of the window.
        np.clip(k, 0, n_bins - 1, out=k)
        np.add.at(counts[:, :, unit], (trial, k), 1)
    return counts


def resample_signal(
    timestamps: np.ndarray, values: np.ndarray, starts: np.ndarray, n_bins: int, bin_width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the samples in each bin: (trials, n_bins, dims), and which trials are covered.

    timestamps: (samples,) ascending seconds; values: (samples, dims). NaN
    samples are left out of a bin's mean (a bin of only NaN samples is NaN).
    A trial is covered when every bin holds at least one sample and the
    window lies within the series (to one sample period beyond either end).
    """
    timestamps = np.asarray(timestamps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or values.shape[0] != timestamps.size:
        # Reshaping to (timestamps.size, -1) would fold 2n samples into n x 2.
        raise DataError(
            f"behaviour data has {values.shape[0] if values.ndim else 0} samples but "
            f"timestamps has {timestamps.size}"
        )
    values = values.reshape(timestamps.size, -1)
    starts = np.asarray(starts, dtype=np.float64)
    edges = starts[:, None] + bin_width * np.arange(n_bins + 1)  # (trials, n_bins + 1)
    # The same half-open bins as the spikes': a sample on an edge (up to
    # float error) belongs to the bin it starts.
    idx = np.searchsorted(timestamps, edges - EDGE_TOL_S, side="left")
    present = ~np.isnan(values)
    # Cumulative sums with a leading zero row: the sum over samples [a, b) is c[b] - c[a].
    csum = np.concatenate(
        [np.zeros((1, values.shape[1])), np.cumsum(np.where(present, values, 0.0), axis=0)]
    )
    ccount = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(present, axis=0)])
    a, b = idx[:, :-1], idx[:, 1:]
    sums = csum[b] - csum[a]
    counts = ccount[b] - ccount[a]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    period = float(np.median(np.diff(timestamps))) if timestamps.size > 1 else 0.0
    # Within one sample period of the series' ends: samples may sit at bin centres.
    inside = (edges[:, 0] >= timestamps[0] - period - 1e-9) & (
        edges[:, -1] <= timestamps[-1] + period + 1e-9
    )
    covered = inside & np.all(b > a, axis=1)
    return means, covered


def condition_psth(
    spike_times: Sequence[np.ndarray],
    starts: np.ndarray,
    cond_ids: np.ndarray,
    n_conditions: int,
    n_bins: int,
    bin_ms: int,
    kern_sd_ms: float,
) -> np.ndarray:
    """Per-condition mean of smoothed spike counts: (conditions, n_bins, units), counts/bin.

    As NLB builds its `psth`: spikes at 1 ms resolution, smoothed with a
    Gaussian of `kern_sd_ms` (0: no smoothing) computed past the window's
    edges, summed into bins, averaged over each condition's trials
    (NaN for a condition without trials).
    """
    pad = int(np.ceil(4 * kern_sd_ms))  # gaussian_filter1d's kernel reaches 4 sd
    width_ms = n_bins * bin_ms
    psth = np.full((n_conditions, n_bins, len(spike_times)), np.nan)
    for cond in range(n_conditions):
        trials = np.flatnonzero(cond_ids == cond)
        if trials.size == 0:
            continue
        fine = bin_spike_times(spike_times, starts[trials] - pad / 1000.0, width_ms + 2 * pad, 1e-3)
        fine = fine.astype(np.float64)
        if kern_sd_ms > 0:
            fine = gaussian_filter1d(fine, kern_sd_ms, axis=1, mode="constant")
        fine = fine[:, pad : pad + width_ms]  # (trials, ms, units)
        binned = fine.reshape(trials.size, n_bins, bin_ms, -1).sum(axis=2)
        psth[cond] = binned.mean(axis=0)
    return psth
