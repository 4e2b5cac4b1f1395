"""Neural Latents Benchmark metrics, exactly as nlb_tools 0.0.4 defines them (numpy only).

Rates are expected spike counts per bin, arrays are (trials, bins, neurons)
with held-in neurons first and forward bins last (shared/reference/
nlb-metrics-and-data.md sections 2-4). Parity with nlb_tools is tested in
tests/test_metrics.py. Bad inputs raise DataError with one line.

`evaluate(data, output)` scores a posterior-sampling output (the
`{split}_output_params` rates) against an `LfadsData`: co_bps, fp_bps, vel_r2,
psth_r2, rate_r2 (vs true rates) and bps (held-in neurons).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.special import gammaln
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV

from autolfads.errors import DataError
from autolfads.trainer.data.dataset import LfadsData

log = logging.getLogger(__name__)

# Rates of exactly zero are scored as this (log(0) would be -inf), as in NLB.
ZERO_RATE = 1e-9
# What `autolfads run` prints and the report's table shows, in this order.
SUMMARY_METRICS = ("co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2", "bps")
RIDGE_ALPHAS = np.logspace(-4, 0, 9)


def summary_names(best_doc: Mapping[str, object]) -> list[str]:
    """The summary metrics of a best/metrics.json, then the search's fitness."""
    return [*SUMMARY_METRICS, str(best_doc.get("fitness_metric", "valid_recon_smth"))]


def _same_shape(what: str, rates: np.ndarray, spikes: np.ndarray) -> None:
    if rates.shape != spikes.shape:
        raise DataError(f"{what}: rates {rates.shape} and spikes {spikes.shape} differ in shape")


def neg_log_likelihood(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Poisson NLL summed over all elements: sum(rate - y ln rate + ln Gamma(y + 1)).

    NaN spikes are dropped together with their rates; a NaN or negative rate
    where a spike count is present is an error; zero rates count as 1e-9. The
    caller's arrays are never modified.
    """
    rates = np.asarray(rates, dtype=np.float64)
    spikes = np.asarray(spikes, dtype=np.float64)
    _same_shape("neg_log_likelihood", rates, spikes)
    present = ~np.isnan(spikes)
    rates, spikes = rates[present], spikes[present]  # copies, flattened
    if np.any(np.isnan(rates)):
        raise DataError("neg_log_likelihood: NaN rate predictions where spikes are present")
    if np.any(rates < 0):
        raise DataError(f"neg_log_likelihood: negative rate predictions (min {rates.min():.3g})")
    rates[rates == 0] = ZERO_RATE
    return float(np.sum(rates - spikes * np.log(rates) + gammaln(spikes + 1.0)))


def bits_per_spike(rates: np.ndarray, spikes: np.ndarray) -> float:
    """(NLL_null - NLL_model) / (ln 2 * total spikes); any ndim >= 2.

    The null predicts each neuron's (last axis) nanmean over the same spikes,
    so the neuron's own mean rate scores exactly 0. NaN if there are no spikes.
    """
    rates = np.asarray(rates, dtype=np.float64)
    spikes = np.asarray(spikes, dtype=np.float64)
    _same_shape("bits_per_spike", rates, spikes)
    if spikes.ndim < 2:
        raise DataError(f"bits_per_spike: need (..., neurons) arrays, got shape {spikes.shape}")
    n_spikes = float(np.nansum(spikes))
    if n_spikes == 0:
        return float("nan")
    nll_model = neg_log_likelihood(rates, spikes)
    axes = tuple(range(spikes.ndim - 1))
    present = ~np.isnan(spikes)
    # nanmean without the all-NaN warning: an all-NaN neuron contributes nothing.
    counts = present.sum(axis=axes, keepdims=True)
    mean = np.nansum(spikes, axis=axes, keepdims=True) / np.maximum(counts, 1)
    null_rates = np.broadcast_to(mean, spikes.shape)
    nll_null = neg_log_likelihood(null_rates, spikes)
    return float((nll_null - nll_model) / n_spikes / np.log(2))


def co_bps(rates: np.ndarray, spikes: np.ndarray, encod_data_dim: int, encod_seq_len: int) -> float:
    """Bits per spike of the held-out neurons over the observed bins.

    rates, spikes: (trials, recon_seq_len, recon_data_dim) with held-out
    neurons after the first `encod_data_dim`.
    """
    rates, spikes = np.asarray(rates), np.asarray(spikes)
    _same_shape("co_bps", rates, spikes)
    if spikes.shape[-1] <= encod_data_dim:
        raise DataError(f"co_bps: no held-out neurons beyond the {encod_data_dim} held-in ones")
    window = (slice(None), slice(0, encod_seq_len), slice(encod_data_dim, None))
    return bits_per_spike(rates[window], spikes[window])


def fp_bps(rates: np.ndarray, spikes: np.ndarray, encod_seq_len: int) -> float:
    """Bits per spike of all neurons over the forward bins (after `encod_seq_len`)."""
    rates, spikes = np.asarray(rates), np.asarray(spikes)
    _same_shape("fp_bps", rates, spikes)
    if spikes.shape[1] <= encod_seq_len:
        raise DataError(f"fp_bps: no forward bins beyond the {encod_seq_len} observed ones")
    return bits_per_spike(rates[:, encod_seq_len:], spikes[:, encod_seq_len:])


def _flatten(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1]) if x.ndim > 2 else x


class NotScorable(DataError):
    """The data cannot give this metric (no rows to score): `evaluate` leaves
    it out, as it does a metric whose inputs the data lacks altogether."""


def _fit_and_score(
    train_rates: np.ndarray,
    train_behavior: np.ndarray,
    eval_rates: np.ndarray,
    eval_behavior: np.ndarray,
    grid_search: bool,
) -> float | None:
    """Ridge from rates to behaviour on 2-D rows; rows with NaN behaviour
    dropped. None when either side has no row left (a decode mask that
    selects no trial with behaviour)."""
    keep_train = ~np.isnan(train_behavior[:, 0])
    keep_eval = ~np.isnan(eval_behavior[:, 0])
    train_rates, train_behavior = train_rates[keep_train], train_behavior[keep_train]
    eval_rates, eval_behavior = eval_rates[keep_eval], eval_behavior[keep_eval]
    if train_rates.shape[0] < 2 or eval_rates.shape[0] < 2:
        # Ridge cannot fit, nor R2 score, fewer rows.
        return None
    if np.isnan(train_rates).any() or np.isnan(eval_rates).any():
        raise DataError("vel_r2: NaN rate predictions where behaviour is present")
    # cv=None: 5-fold KFold without shuffling, i.e. contiguous blocks of trials.
    decoder = GridSearchCV(Ridge(), {"alpha": RIDGE_ALPHAS}) if grid_search else Ridge(alpha=1e-2)
    decoder.fit(train_rates, train_behavior)
    return float(decoder.score(eval_rates, eval_behavior))


def vel_r2(
    train_rates: np.ndarray,
    train_behavior: np.ndarray,
    eval_rates: np.ndarray,
    eval_behavior: np.ndarray,
    decode_masks: tuple[np.ndarray, np.ndarray] | None = None,
    grid_search: bool = True,
) -> float:
    """Ridge-decoding R2 of behaviour from rates (NLB `velocity_decoding`).

    rates: (trials, bins, neurons), behaviour: (trials, bins, behavior_dim), over
    the observed bins. The decoder is fitted on train rows and scored
    (`Ridge.score`, uniform over behaviour columns) on eval rows; with
    `decode_masks` = (train_mask, eval_mask), each (trials, n_masks) bool, one
    decoder per mask column and the mean R2 over masks. A mask that leaves no
    trial with behaviour on either split is left out (NLB's code would fail
    on it); NotScorable if every one is.
    """
    train_rates, eval_rates = np.asarray(train_rates), np.asarray(eval_rates)
    train_behavior, eval_behavior = np.asarray(train_behavior), np.asarray(eval_behavior)
    for what, r, b in (("train", train_rates, train_behavior), ("eval", eval_rates, eval_behavior)):
        if r.shape[:-1] != b.shape[:-1]:
            raise DataError(f"vel_r2: {what} rates {r.shape} and behaviour {b.shape} do not align")
    if decode_masks is None:
        decode_masks = (
            np.ones((train_rates.shape[0], 1), dtype=bool),
            np.ones((eval_rates.shape[0], 1), dtype=bool),
        )
    train_mask, eval_mask = (np.asarray(m, dtype=bool) for m in decode_masks)
    if train_mask.shape[1] != eval_mask.shape[1]:
        raise DataError(
            f"vel_r2: {train_mask.shape[1]} train masks but {eval_mask.shape[1]} eval masks"
        )
    scores = [
        _fit_and_score(
            _flatten(train_rates[train_mask[:, i]]),
            _flatten(train_behavior[train_mask[:, i]]),
            _flatten(eval_rates[eval_mask[:, i]]),
            _flatten(eval_behavior[eval_mask[:, i]]),
            grid_search,
        )
        for i in range(train_mask.shape[1])
    ]
    scored = [x for x in scores if x is not None]
    if not scored:
        raise NotScorable("vel_r2: no decode mask selects trials with behaviour on both splits")
    if len(scored) < len(scores):
        log.warning(
            "vel_r2: %d of %d decode masks select no trial with behaviour; left out",
            len(scores) - len(scored),
            len(scores),
        )
    return float(np.mean(scored))


def condition_trials(
    cond_idx: Sequence[np.ndarray] | np.ndarray, n_conditions: int
) -> list[np.ndarray]:
    """Index arrays per condition from either form of `cond_idx`:
    a list (or object array) of index arrays, a 2-D integer array of index
    rows padded with -1, or a 1-D integer array of per-trial condition ids
    (-1 = no condition)."""
    if isinstance(cond_idx, np.ndarray) and cond_idx.dtype != object:
        if cond_idx.ndim == 1:
            return [np.flatnonzero(cond_idx == c) for c in range(n_conditions)]
        if cond_idx.ndim != 2:
            raise DataError(
                f"psth_r2: cond_idx of shape {cond_idx.shape} is neither ids nor index rows"
            )
    groups = [np.asarray(idx, dtype=np.int64).reshape(-1) for idx in cond_idx]
    # Rows of a 2-D index array are padded with negative entries.
    groups = [g[g >= 0] for g in groups]
    if len(groups) > n_conditions:
        raise DataError(f"psth_r2: {len(groups)} conditions but only {n_conditions} psth rows")
    return groups


def psth_r2(
    eval_rates: np.ndarray,
    cond_idx: Sequence[np.ndarray] | np.ndarray,
    true_psth: np.ndarray,
) -> float:
    """R2 of per-condition mean rates vs the true PSTH (NLB `eval_psth`, no jitter).

    eval_rates: (trials, bins, neurons); true_psth: (conditions, bins, neurons),
    NaN where a condition has no data (those rows are skipped). Conditions
    without eval trials are skipped. sklearn r2_score, averaged over neurons.
    """
    eval_rates = np.asarray(eval_rates, dtype=np.float64)
    true_psth = np.asarray(true_psth, dtype=np.float64)
    if true_psth.ndim != 3 or true_psth.shape[1:] != eval_rates.shape[1:]:
        raise DataError(f"psth_r2: psth {true_psth.shape} does not fit rates {eval_rates.shape}")
    true_rows, pred_rows = [], []
    for cond, trials in enumerate(condition_trials(cond_idx, true_psth.shape[0])):
        if trials.size == 0:
            continue
        keep = ~np.isnan(true_psth[cond, :, 0])
        pred = eval_rates[trials].mean(axis=0)[keep]
        if np.isnan(pred).any():
            raise DataError("psth_r2: NaN rate predictions where the psth is defined")
        true_rows.append(true_psth[cond][keep])
        pred_rows.append(pred)
    if not true_rows:
        raise NotScorable("psth_r2: no condition has eval trials")
    return float(r2_score(np.vstack(true_rows), np.vstack(pred_rows)))


def rate_r2(pred_rates: np.ndarray, true_rates: np.ndarray) -> float:
    """R2 of predicted vs true rates, per neuron over (trials * bins), averaged."""
    pred_rates, true_rates = np.asarray(pred_rates), np.asarray(true_rates)
    if pred_rates.shape != true_rates.shape:
        raise DataError(f"rate_r2: predictions {pred_rates.shape} vs truth {true_rates.shape}")
    return float(r2_score(_flatten(true_rates), _flatten(pred_rates)))


def _output_rates(data: LfadsData, output: Mapping[str, np.ndarray], split: str) -> np.ndarray:
    key = f"{split}_output_params"
    if key not in output:
        raise DataError(f"evaluate: output has no {key} (rates for the {split} split)")
    rates = np.asarray(output[key], dtype=np.float64)
    want = (getattr(data, split).n_trials, data.recon_seq_len, data.recon_data_dim)
    if rates.shape != want:
        raise DataError(f"evaluate: {key} has shape {rates.shape}, expected {want}")
    return rates


def evaluate(
    data: LfadsData, output: Mapping[str, np.ndarray], split: str = "valid"
) -> dict[str, float]:
    """NLB metrics of posterior-mean rates on one split (train or valid).

    `output` maps `{split}_output_params` to rates (counts per bin, shape
    (trials, recon_seq_len, recon_data_dim)); `train_output_params` is also
    needed when the data has behaviour (the decoder is fitted on train).
    Returns bps (held-in), and co_bps / fp_bps / vel_r2 / psth_r2 / rate_r2
    when the data has held-out neurons / forward bins / behaviour /
    conditions / true rates.
    """
    if split not in ("train", "valid"):
        raise DataError(
            f"evaluate: split must be 'train' or 'valid' (test has no targets), got {split!r}"
        )
    target = getattr(data, split)
    rates = _output_rates(data, output, split)
    spikes = target.recon_data
    t_obs, d_in = data.encod_seq_len, data.encod_data_dim
    results = {"bps": bits_per_spike(rates[:, :t_obs, :d_in], spikes[:, :t_obs, :d_in])}
    if data.heldout_dim > 0:
        results["co_bps"] = co_bps(rates, spikes, d_in, t_obs)
    if data.fp_seq_len > 0:
        results["fp_bps"] = fp_bps(rates, spikes, t_obs)
    train_behavior, eval_behavior = data.train.behavior, target.behavior
    if eval_behavior is not None and train_behavior is not None:
        train_rates = rates if split == "train" else _output_rates(data, output, "train")
        masks = None
        if target.decode_mask is not None and data.train.decode_mask is not None:
            masks = (data.train.decode_mask, target.decode_mask)
        _scored(
            results,
            "vel_r2",
            lambda: vel_r2(
                train_rates[:, :t_obs], train_behavior, rates[:, :t_obs], eval_behavior, masks
            ),
        )
    psth = _true_psth(data)
    if target.cond_idx is not None and psth is not None:
        _scored(
            results, "psth_r2", lambda: psth_r2(rates[:, :t_obs], target.cond_idx, psth[:, :t_obs])
        )
    if target.truth is not None:
        results["rate_r2"] = rate_r2(rates, target.truth)
    return results


def _scored(results: dict[str, float], name: str, score: Callable[[], float]) -> None:
    """results[name] = score(), left out (with a warning) where the data
    cannot give it: one metric must not cost the others (finalize scores
    after posterior sampling)."""
    try:
        results[name] = score()
    except NotScorable as err:
        log.warning("%s; left out", err)


def _true_psth(data: LfadsData) -> np.ndarray | None:
    """attrs["psth"], else the per-condition mean true rate over all labelled trials."""
    if "psth" in data.attrs:
        return data.attrs["psth"]
    labelled = [
        s for s in (data.train, data.valid) if s.cond_idx is not None and s.truth is not None
    ]
    if not labelled:
        return None
    ids = np.concatenate([s.cond_idx for s in labelled])
    truth = np.concatenate([s.truth for s in labelled])
    n_cond = int(ids.max()) + 1
    psth = np.full((n_cond,) + truth.shape[1:], np.nan)
    for cond in range(n_cond):
        if np.any(ids == cond):
            psth[cond] = truth[ids == cond].mean(axis=0)
    return psth
