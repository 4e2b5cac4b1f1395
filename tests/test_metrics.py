"""NLB metrics: hand-checked formulas, NaN rules, and parity with nlb_tools 0.0.4."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from autolfads.errors import DataError
from autolfads.trainer.data.dataset import LfadsData, Split
from autolfads.trainer.evaluation.metrics import (
    bits_per_spike,
    co_bps,
    evaluate,
    fp_bps,
    neg_log_likelihood,
    psth_r2,
    rate_r2,
    vel_r2,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The suite shares 2 cores; BLAS threads would only contend.
    with threadpool_limits(1):
        yield


def poisson_data(seed: int = 0, shape: tuple[int, int, int] = (30, 20, 8)):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 0.2, size=shape)
    return rates, rng.poisson(rates).astype(np.float64)


def nasty_arrays(seed: int):
    """Rates and spikes with NaN spikes, exact-zero rates and a silent neuron."""
    rates, spikes = poisson_data(seed)
    rng = np.random.default_rng(seed + 100)
    spikes[rng.random(spikes.shape) < 0.1] = np.nan
    rates[rng.random(rates.shape) < 0.05] = 0.0
    spikes[:, :, 3] = 0.0  # a neuron that never fires
    spikes[:5, :, 5] = np.nan  # trials where one neuron was not recorded
    return rates, spikes


# --------------------------------------------------------------------------- NLL and bps


def test_nll_matches_the_formula_by_hand():
    rates = np.array([[1.0, 2.0], [0.5, 3.0]])
    spikes = np.array([[0.0, 1.0], [2.0, 3.0]])
    expected = sum(
        r - y * math.log(r) + math.lgamma(y + 1)
        for r, y in zip(rates.ravel(), spikes.ravel(), strict=True)
    )
    assert neg_log_likelihood(rates, spikes) == pytest.approx(expected, rel=1e-12)


def test_nll_drops_nan_spikes_and_scores_zero_rates_as_1e9_without_mutating():
    rates = np.array([[0.0, 2.0, np.nan]])
    spikes = np.array([[1.0, 0.0, np.nan]])
    before = rates.copy()
    expected = 1e-9 - math.log(1e-9) + 2.0
    assert neg_log_likelihood(rates, spikes) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(rates, before)


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        (np.array([[np.nan, 1.0]]), "NaN rate"),
        (np.array([[-0.1, 1.0]]), "negative rate"),
        (np.array([[1.0, 1.0, 1.0]]), "differ in shape"),
    ],
)
def test_nll_rejects_bad_rates(rates, message):
    with pytest.raises(DataError, match=message):
        neg_log_likelihood(rates, np.array([[1.0, 0.0]]))


def test_null_predictor_scores_exactly_zero_bps():
    _, spikes = nasty_arrays(1)
    mean = np.nanmean(spikes, axis=(0, 1))
    null = np.broadcast_to(mean, spikes.shape)
    assert bits_per_spike(null, spikes) == pytest.approx(0.0, abs=1e-12)


def test_true_rates_beat_noisy_rates_which_beat_wrong_rates():
    rates, spikes = poisson_data(2)
    rng = np.random.default_rng(3)
    noisy = rates * rng.lognormal(0.0, 0.5, rates.shape)
    shuffled = rng.permutation(rates.reshape(-1)).reshape(rates.shape)
    true_bps = bits_per_spike(rates, spikes)
    assert true_bps > bits_per_spike(noisy, spikes) > bits_per_spike(shuffled, spikes)
    assert true_bps > 0


def test_nan_trials_count_as_if_removed():
    rates, spikes = poisson_data(4)
    masked = spikes.copy()
    masked[:7] = np.nan
    assert bits_per_spike(rates, masked) == pytest.approx(
        bits_per_spike(rates[7:], spikes[7:]), rel=1e-12
    )


def test_bps_without_spikes_is_nan():
    assert math.isnan(bits_per_spike(np.ones((2, 3, 1)), np.zeros((2, 3, 1))))


def test_co_bps_and_fp_bps_score_only_their_windows():
    rates, spikes = poisson_data(5, (10, 12, 6))  # 4 held-in, 9 observed bins
    base_co, base_fp = co_bps(rates, spikes, 4, 9), fp_bps(rates, spikes, 9)
    assert base_co == pytest.approx(bits_per_spike(rates[:, :9, 4:], spikes[:, :9, 4:]))
    assert base_fp == pytest.approx(bits_per_spike(rates[:, 9:], spikes[:, 9:]))
    changed = rates.copy()
    changed[:, :9, :4] *= 3.0  # held-in, observed: neither metric looks here
    assert co_bps(changed, spikes, 4, 9) == base_co
    assert fp_bps(changed, spikes, 9) == base_fp
    changed[:, 9:, 4:] *= 3.0  # held-out, forward: only fp-bps
    assert co_bps(changed, spikes, 4, 9) == base_co
    assert fp_bps(changed, spikes, 9) != base_fp
    with pytest.raises(DataError, match="no held-out neurons"):
        co_bps(rates, spikes, 6, 9)
    with pytest.raises(DataError, match="no forward bins"):
        fp_bps(rates, spikes, 12)


# --------------------------------------------------------------------------- R2 metrics


def decoding_problem(seed: int = 0, n: int = 40, t: int = 15, c: int = 10):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 0.3, (n, t, c))
    readout = rng.standard_normal((c, 2))
    behavior = rates @ readout + 0.05 * rng.standard_normal((n, t, 2))
    return rates, behavior


def test_vel_r2_is_high_for_informative_rates_and_low_for_noise():
    rates, behavior = decoding_problem()
    half = 30
    good = vel_r2(rates[:half], behavior[:half], rates[half:], behavior[half:])
    noise = np.random.default_rng(9).gamma(2.0, 0.3, rates.shape)
    bad = vel_r2(noise[:half], behavior[:half], noise[half:], behavior[half:])
    assert good > 0.95
    assert bad < 0.1
    assert isinstance(good, float)


def test_vel_r2_drops_rows_with_nan_behavior():
    rates, behavior = decoding_problem(1)
    with_nan = behavior.copy()
    with_nan[30:, :3, 0] = np.nan  # eval rows without behaviour
    flat_r, flat_b = rates[30:].reshape(-1, 10), behavior[30:].reshape(-1, 2)
    keep = ~np.isnan(with_nan[30:].reshape(-1, 2)[:, 0])
    full = vel_r2(rates[:30], behavior[:30], rates[30:], with_nan[30:], grid_search=False)
    manual = vel_r2(rates[:30], behavior[:30], flat_r[keep], flat_b[keep], grid_search=False)
    assert full == pytest.approx(manual, rel=1e-12)


def test_psth_r2_accepts_ids_index_lists_and_padded_rows_alike():
    rng = np.random.default_rng(2)
    psth = rng.gamma(2.0, 0.2, (3, 8, 5))
    ids = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    rates = psth[ids] + 0.05 * rng.standard_normal((8, 8, 5))
    lists = [np.flatnonzero(ids == c) for c in range(3)]
    padded = np.full((3, 3), -1)
    for c, idx in enumerate(lists):
        padded[c, : idx.size] = idx
    scores = {psth_r2(rates, form, psth) for form in (ids, lists, padded)}
    assert len(scores) == 1
    assert 0.5 < scores.pop() < 1.0
    assert psth_r2(psth[ids], ids, psth) == pytest.approx(1.0)


def test_rate_r2_is_one_for_truth_and_zero_for_the_mean():
    rates, _ = poisson_data(6)
    assert rate_r2(rates, rates) == 1.0
    mean = np.broadcast_to(rates.mean(axis=(0, 1)), rates.shape)
    assert rate_r2(mean, rates) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DataError, match="truth"):
        rate_r2(rates[:2], rates)


# --------------------------------------------------------------------------- evaluate


def tiny_data(with_extras: bool = True) -> LfadsData:
    """16 train / 8 valid trials, 10 + 2 bins, 5 held-in + 2 held-out neurons."""
    rng = np.random.default_rng(7)
    readout = rng.standard_normal((7, 2))

    def split(n: int, start: int) -> Split:
        truth = rng.gamma(3.0, 0.2, (n, 12, 7)).astype(np.float32)
        recon = rng.poisson(truth).astype(np.float32)
        extras: dict[str, np.ndarray] = {}
        if with_extras:
            extras = {
                "truth": truth,
                "behavior": (truth[:, :10] @ readout).astype(np.float32),
                "cond_idx": (np.arange(start, start + n) % 4).astype(np.int64),
            }
        return Split(np.ascontiguousarray(recon[:, :10, :5]), recon, **extras)

    return LfadsData(split(16, 0), split(8, 16))


def test_evaluate_reports_every_metric_the_data_supports():
    data = tiny_data()
    assert data.train.truth is not None and data.valid.truth is not None
    assert data.valid.recon_data is not None
    output = {"train_output_params": data.train.truth, "valid_output_params": data.valid.truth}
    scores = evaluate(data, output)
    assert set(scores) == {"bps", "co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2"}
    assert scores["rate_r2"] == 1.0
    assert scores["vel_r2"] > 0.99  # behaviour is an exact linear readout of the rates
    assert scores["co_bps"] == co_bps(data.valid.truth, data.valid.recon_data, 5, 10)
    assert all(type(v) is float for v in scores.values())
    bare = tiny_data(with_extras=False)
    rates = {"valid_output_params": np.ones((8, 12, 7))}
    assert set(evaluate(bare, rates)) == {"bps", "co_bps", "fp_bps"}


def test_evaluate_leaves_out_what_the_split_cannot_give_and_scores_the_rest():
    # Valid trials without condition labels (NLB index lists that cover only
    # train), and a decode mask that selects no valid trial: these metrics
    # cannot be computed, and used to fail finalize (after posterior
    # sampling), staging's reference scores and apply with them.
    data = tiny_data()
    assert data.train.truth is not None and data.valid.truth is not None
    output = {"train_output_params": data.train.truth, "valid_output_params": data.valid.truth}
    unlabelled = replace(data, valid=replace(data.valid, cond_idx=np.full(8, -1)))
    assert set(evaluate(unlabelled, output)) == {"bps", "co_bps", "fp_bps", "vel_r2", "rate_r2"}
    masks = np.ones((16, 2), bool), np.ones((8, 2), bool)
    masks[1][:, 1] = False  # the second mask has no valid trial
    masked = replace(
        data,
        train=replace(data.train, decode_mask=masks[0]),
        valid=replace(data.valid, decode_mask=masks[1]),
    )
    one_mask = replace(
        data,
        train=replace(data.train, decode_mask=masks[0][:, :1]),
        valid=replace(data.valid, decode_mask=masks[1][:, :1]),
    )
    assert evaluate(masked, output)["vel_r2"] == evaluate(one_mask, output)["vel_r2"]
    none = replace(masked, valid=replace(masked.valid, decode_mask=np.zeros((8, 2), bool)))
    assert "vel_r2" not in evaluate(none, output)


def test_evaluate_rejects_missing_or_misshapen_outputs():
    data = tiny_data()
    assert data.train.truth is not None and data.valid.truth is not None
    with pytest.raises(DataError, match="no valid_output_params"):
        evaluate(data, {"train_output_params": data.train.truth})
    with pytest.raises(DataError, match="no train_output_params"):
        evaluate(data, {"valid_output_params": data.valid.truth})  # needed for vel_r2
    with pytest.raises(DataError, match=r"shape \(8, 10, 7\), expected \(8, 12, 7\)"):
        evaluate(data, {"valid_output_params": data.valid.truth[:, :10]})
    with pytest.raises(DataError, match="split must be"):
        evaluate(data, {}, split="test")


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def nlb():
    return pytest.importorskip("nlb_tools.evaluation")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bits_per_spike_matches_nlb_tools(nlb, seed):
    rates, spikes = nasty_arrays(seed)
    for r, s in ((rates, spikes), (rates[:, :, 4:], spikes[:, :, 4:])):
        ours = bits_per_spike(r, s)
        theirs = nlb.bits_per_spike(r.copy(), s.copy())
        assert ours == pytest.approx(float(theirs), rel=1e-12, abs=1e-14)
        assert neg_log_likelihood(r, s) == pytest.approx(
            nlb.neg_log_likelihood(r.copy(), s.copy(), zero_warning=False), rel=1e-12
        )


@pytest.mark.parametrize("grid_search", [True, False])
def test_vel_r2_matches_nlb_velocity_decoding_with_masks(nlb, grid_search):
    rates, behavior = decoding_problem(3, n=50)
    rng = np.random.default_rng(4)
    behavior[rng.random(behavior.shape[:2]) < 0.1] = np.nan  # NaN rows in both splits
    train_mask = np.stack([np.arange(35) % 2 == 0, np.arange(35) % 2 == 1], axis=1)
    eval_mask = np.stack([np.arange(15) % 3 != 0, np.arange(15) % 3 == 0], axis=1)
    args = (rates[:35], behavior[:35], rates[35:], behavior[35:])
    ours = vel_r2(*args, decode_masks=(train_mask, eval_mask), grid_search=grid_search)
    theirs = nlb.velocity_decoding(
        rates[:35], behavior[:35], train_mask, rates[35:], behavior[35:], eval_mask, grid_search
    )
    assert ours == pytest.approx(float(theirs), rel=1e-10)
    flat = vel_r2(*args, grid_search=grid_search)
    theirs_flat = nlb.fit_and_eval_decoder(
        *(a.reshape(-1, a.shape[-1]) for a in args), grid_search=grid_search
    )
    assert flat == pytest.approx(float(theirs_flat), rel=1e-10)


def test_psth_r2_matches_nlb_eval_psth(nlb):
    rng = np.random.default_rng(5)
    psth = rng.gamma(2.0, 0.2, (5, 9, 6))
    psth[1, 6:] = np.nan  # a condition whose trials end early
    ids = rng.integers(0, 4, size=20)  # condition 4 has no eval trials
    rates = psth[ids] + 0.1 * rng.standard_normal((20, 9, 6))
    rates[ids == 1, 6:] = np.nan  # predictions may be NaN where the psth is undefined
    lists = [np.flatnonzero(ids == c) for c in range(5)]
    ours = psth_r2(rates, ids, psth)
    assert ours == pytest.approx(float(nlb.eval_psth(psth, rates, lists)), rel=1e-12)
