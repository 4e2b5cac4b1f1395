"""Synthetic datasets: determinism, shapes, rate ranges, ceiling vs floor, and the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from autolfads.cli import main
from autolfads.errors import DataError
from autolfads.trainer.data.dataset import validate_data
from autolfads.trainer.data.lfads_h5 import load_lfads_h5
from autolfads.trainer.data.synth import make_chaotic_rnn, make_lorenz, make_synthetic
from autolfads.trainer.evaluation.metrics import evaluate
from autolfads.trainer.evaluation.smoothing import smooth_spikes, smoothing_baseline

SMALL_RNN = {"n_conditions": 20, "n_replications": 5}
SMALL_LORENZ = {"n_conditions": 12, "n_trials_per_condition": 5}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with threadpool_limits(1):  # the suite shares 2 cores
        yield


@pytest.fixture(scope="module")
def rnn():
    return make_chaotic_rnn(seed=3, **SMALL_RNN)


@pytest.fixture(scope="module")
def lorenz():
    return make_lorenz(seed=3, **SMALL_LORENZ)


def test_same_seed_same_data_other_seed_other_data(rnn):
    again = make_chaotic_rnn(seed=3, **SMALL_RNN)
    other = make_chaotic_rnn(seed=4, **SMALL_RNN)
    for field in ("recon_data", "truth", "behavior"):
        np.testing.assert_array_equal(getattr(rnn.train, field), getattr(again.train, field))
    assert other.train.truth is not None
    assert not np.array_equal(rnn.train.truth, other.train.truth)


def test_chaotic_rnn_has_the_nlb_style_shapes_and_split(rnn):
    validate_data(rnn)
    assert (rnn.train.n_trials, rnn.valid.n_trials) == (80, 20)  # 4 + 1 reps per condition
    assert (rnn.encod_data_dim, rnn.heldout_dim) == (38, 12)
    assert (rnn.encod_seq_len, rnn.fp_seq_len) == (100, 20)
    assert rnn.behavior_dim == 2
    for split in (rnn.train, rnn.valid):
        np.testing.assert_array_equal(split.encod_data, split.recon_data[:, :100, :38])
        counts = np.bincount(split.cond_idx, minlength=20)
        assert counts.min() == counts.max()  # every condition in both splits


def test_chaotic_rnn_rates_peak_at_30_hz_and_average_half_that(rnn):
    truth = rnn.train.truth
    assert truth.min() >= 0.0 and truth.max() == pytest.approx(0.3, rel=1e-5)
    assert 0.1 < truth.mean() < 0.2
    # Poisson counts follow the true rates
    assert rnn.train.recon_data.mean() == pytest.approx(truth.mean(), rel=0.05)


def test_replications_of_a_condition_are_alike_but_not_identical(rnn):
    first, second = rnn.train.truth[0], rnn.train.truth[1]  # same condition
    other = rnn.train.truth[4]  # next condition
    assert rnn.train.cond_idx[0] == rnn.train.cond_idx[1] != rnn.train.cond_idx[4]
    assert not np.array_equal(first, second)
    assert np.abs(first - second).mean() < np.abs(first - other).mean()


def test_psth_is_the_condition_mean_of_the_true_rates(rnn):
    psth = rnn.attrs["psth"]
    ids = np.concatenate([rnn.train.cond_idx, rnn.valid.cond_idx])
    truth = np.concatenate([rnn.train.truth, rnn.valid.truth])[:, :100]
    np.testing.assert_allclose(psth[5], truth[ids == 5].mean(axis=0), rtol=1e-5)


def test_lorenz_rates_stay_within_1_to_100_hz(lorenz):
    validate_data(lorenz)
    assert (lorenz.train.n_trials, lorenz.valid.n_trials) == (48, 12)
    assert (lorenz.encod_data_dim, lorenz.heldout_dim) == (22, 8)
    assert (lorenz.encod_seq_len, lorenz.fp_seq_len) == (50, 10)
    hz = lorenz.train.truth / 0.020
    assert hz.min() >= 1.0 - 1e-4 and hz.max() <= 100.0 + 1e-3
    assert hz.max() / hz.min() > 20  # a real dynamic range


@pytest.mark.parametrize("data_name", ["rnn", "lorenz"])
def test_true_rates_beat_smoothing_which_beats_the_null(request, data_name):
    data = request.getfixturevalue(data_name)
    truth = {"train_output_params": data.train.truth, "valid_output_params": data.valid.truth}
    ceiling = evaluate(data, truth)
    floor = evaluate(data, smoothing_baseline(data, sd_bins=2.0))
    assert ceiling["co_bps"] > floor["co_bps"] > 0.0
    assert ceiling["fp_bps"] > 0.1 > abs(floor["fp_bps"])  # smoothing cannot extrapolate
    assert ceiling["vel_r2"] > 0.8 and ceiling["vel_r2"] > floor["vel_r2"]
    assert ceiling["psth_r2"] > floor["psth_r2"]
    assert ceiling["rate_r2"] == 1.0


def test_smoothing_keeps_a_constant_rate_constant_up_to_the_edges():
    flat = np.full((2, 30, 3), 0.25)
    np.testing.assert_allclose(smooth_spikes(flat, 3.0), flat, rtol=1e-12)
    with pytest.raises(DataError, match="sd must be > 0"):
        smooth_spikes(flat, 0.0)


@pytest.mark.parametrize(
    ("kind", "sizes", "message"),
    [
        ("chaotic-rnn", {"n_replications": 1}, "leaves an empty train or valid split"),
        ("chaotic-rnn", {"n_heldout": 50}, "n_heldout 50 must be between 1 and"),
        ("lorenz", {"min_rate_hz": 0.0}, "min_rate_hz"),
        ("lorenz", {"n_bins": 0}, "need n_bins >= 1"),
        ("chaotic-rnn", {"behavior_lag_bins": -1}, "behavior_lag_bins >= 0"),
        ("lorenz", {"n_replications": 3}, "unexpected keyword argument 'n_replications'"),
        ("chaotic-rnn", {"n_conditions": 10**6}, "neurons is .* values, over the"),
        # Used to pass the limit and then ask numpy for ~160 GB (lag bins
        # are simulated) or ~240 GB (Lorenz keeps every Euler step).
        ("chaotic-rnn", {"behavior_lag_bins": 100_000}, "100120 bins .* over the"),
        ("lorenz", {"steps_per_bin": 100_000}, "Euler steps x 3 is .* over the"),
        ("lorenz", {"seed": -1}, "seed must be >= 0"),
        ("poisson", {}, "unknown synthetic dataset 'poisson'"),
    ],
)
def test_bad_generator_arguments_raise_data_errors(kind, sizes, message):
    with pytest.raises(DataError, match=message):
        make_synthetic(kind, **sizes)


# --------------------------------------------------------------------------- CLI


def test_cli_synth_writes_a_file_that_check_summarises(tmp_path, capsys):
    out = tmp_path / "lorenz.h5"
    argv = ["data", "synth", "lorenz", "--out", str(out), "--seed", "3"]
    sizes = ["--n-conditions", "12", "--n-trials", "5"]
    assert main([*argv, *sizes]) == 0
    assert "48 train + 12 valid trials" in capsys.readouterr().out
    data = load_lfads_h5(out)
    np.testing.assert_array_equal(
        data.valid.recon_data, make_lorenz(seed=3, **SMALL_LORENZ).valid.recon_data
    )

    assert main([*argv, *sizes]) == 2  # refuses to overwrite
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main([*argv, "--small", "--force"]) == 0
    capsys.readouterr()

    assert main(["data", "check", str(out)]) == 0
    report = capsys.readouterr().out
    for expected in (
        "train: 160 trials, encod_data (160, 50, 22), recon_data (160, 60, 30)",
        "channels: 22 held-in + 8 held-out = 30",
        "bins: 50 observed + 10 forward = 60",
        "mean rate (valid):",
        "behavior (2-D), cond_idx (20 train conditions)",
        "co-bps of the true rates (valid):",
    ):
        assert expected in report


def test_cli_rejects_bad_sizes_with_one_line(tmp_path, capsys):
    out = tmp_path / "x.h5"
    assert main(["data", "synth", "chaotic-rnn", "--out", str(out), "--n-trials", "0"]) == 2
    assert capsys.readouterr().err.strip() == "autolfads: error: --n-trials must be > 0, got 0"
    assert not out.exists()


def test_cli_check_of_a_bad_file_is_one_line_from_the_real_command(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    result = subprocess.run(
        [sys.executable, "-m", "autolfads", "data", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"autolfads: error: {bad}: not an HDF5 file (or unreadable)\n"
