"""Floor and ceiling: the smoothing baseline and the true rates of a data file,
checked against an independent computation, and `autolfads baseline`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import poisson
from sklearn.linear_model import PoissonRegressor

from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import write_lfads_h5
from autolfads.trainer.data.synth import make_chaotic_rnn
from autolfads.trainer.evaluation.baseline import (
    SD_CANDIDATES_BINS,
    fraction_of_range,
    reference_scores,
)


@pytest.fixture(scope="module")
def data() -> LfadsData:
    return make_chaotic_rnn(
        seed=4, n_conditions=8, n_replications=6, n_neurons=12, n_heldout=4, n_bins=24, n_fp_bins=4
    )


@pytest.fixture(scope="module")
def scores(data: LfadsData) -> dict:
    return reference_scores(data)


# ---- an independent statement of NLB's smoothing baseline and co-bps -------------


def smooth(spikes: np.ndarray, sd: float) -> np.ndarray:
    """Gaussian kernel over bins, truncated at 4 sd, renormalised at trial edges."""
    half = int(4 * sd + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sd) ** 2)
    n, t, c = spikes.shape
    out = np.empty((n, t, c))
    mass = np.convolve(np.ones(t), kernel)[half : half + t]
    for i in range(n):
        for j in range(c):
            out[i, :, j] = np.convolve(spikes[i, :, j], kernel)[half : half + t] / mass
    return out


def heldout_predictions(data: LfadsData, sd: float) -> dict[str, np.ndarray]:
    d_in, t_obs = data.encod_data_dim, data.encod_seq_len
    features = {
        s: np.log(smooth(getattr(data, s).encod_data, sd) + 1e-4).reshape(-1, d_in)
        for s in ("train", "valid")
    }
    assert data.train.recon_data is not None
    targets = data.train.recon_data[:, :t_obs, d_in:].reshape(-1, data.heldout_dim)
    preds = {s: np.empty((len(f), data.heldout_dim)) for s, f in features.items()}
    for ch in range(data.heldout_dim):
        glm = PoissonRegressor(alpha=0.01, max_iter=500).fit(features["train"], targets[:, ch])
        for s, f in features.items():
            preds[s][:, ch] = glm.predict(f)
    return {
        s: p.reshape(getattr(data, s).n_trials, t_obs, data.heldout_dim) for s, p in preds.items()
    }


def cobps(rates: np.ndarray, spikes: np.ndarray) -> float:
    """NLB co-bps: log-likelihood gain over each neuron's mean rate, per spike, in bits."""
    null = np.broadcast_to(spikes.mean(axis=(0, 1), keepdims=True), spikes.shape)
    gain = (
        poisson.logpmf(spikes, np.maximum(rates, 1e-9)).sum() - poisson.logpmf(spikes, null).sum()
    )
    return float(gain / spikes.sum() / np.log(2))


def heldout_spikes(data: LfadsData, split: str) -> np.ndarray:
    return getattr(data, split).recon_data[:, : data.encod_seq_len, data.encod_data_dim :]


def test_floor_is_the_smoothing_baseline_at_the_width_best_on_train(data, scores) -> None:
    floor = scores["floor"]
    by_sd = {sd: heldout_predictions(data, sd) for sd in SD_CANDIDATES_BINS}
    train_score = {sd: cobps(p["train"], heldout_spikes(data, "train")) for sd, p in by_sd.items()}
    assert floor["sd_bins"] == max(train_score, key=train_score.__getitem__)
    expected = cobps(by_sd[floor["sd_bins"]]["valid"], heldout_spikes(data, "valid"))
    assert floor["co_bps"] == pytest.approx(expected, abs=2e-3)


def test_ceiling_is_the_true_rates(data, scores) -> None:
    ceiling = scores["ceiling"]
    truth = data.valid.truth[:, : data.encod_seq_len, data.encod_data_dim :]
    spikes = heldout_spikes(data, "valid")
    assert ceiling["co_bps"] == pytest.approx(cobps(truth, spikes), rel=1e-9)
    assert ceiling["rate_r2"] == pytest.approx(1.0)
    # The held-out NLL in the units of a search's `valid_heldout_recon_smth`:
    # torch's full Poisson NLL, averaged per element.
    nll = torch.nn.functional.poisson_nll_loss(
        torch.tensor(truth), torch.tensor(spikes), log_input=False, full=True, eps=1e-9
    )
    assert ceiling["valid_heldout_recon"] == pytest.approx(float(nll), rel=1e-6)
    assert scores["floor"]["valid_heldout_recon"] > ceiling["valid_heldout_recon"]


def test_a_metric_the_data_cannot_give_is_left_out_not_nan(data) -> None:
    # Held-out neurons that never spike in the valid split: co-bps is NaN
    # there. baseline.json is strict JSON; staging such data used to fail
    # with a traceback after the data was uploaded.
    recon = data.valid.recon_data.copy()
    recon[:, : data.encod_seq_len, data.encod_data_dim :] = 0
    quiet = replace(data, valid=replace(data.valid, recon_data=recon))
    doc = reference_scores(quiet)
    json.dumps(doc, allow_nan=False)
    assert "co_bps" not in doc["floor"] and "vel_r2" in doc["floor"]


# sklearn's GLM takes log(0) for the silent neuron: the case under test.
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_a_neuron_silent_in_train_is_not_predicted_as_never_spiking(data) -> None:
    # Its GLM and mean rate are exactly 0: each of its valid spikes then cost
    # the floor ~20 nats (the 1e-9 clip), dragging the floor's co-bps far
    # down and making any model look close to the ceiling.
    from autolfads.trainer.evaluation.smoothing import smoothing_baseline

    silent = data.encod_data_dim  # the first held-out neuron
    recon = data.train.recon_data.copy()
    recon[:, :, silent] = 0
    quiet = replace(data, train=replace(data.train, recon_data=recon))
    valid = smoothing_baseline(quiet)["valid_output_params"]
    least = 0.5 / (data.train.n_trials * data.recon_seq_len)
    assert valid[:, :, silent].min() >= least  # observed and forward bins
    assert valid[:, : data.encod_seq_len, : data.encod_data_dim].min() >= 0
    normal = smoothing_baseline(data)["valid_output_params"]
    others = np.s_[:, : data.encod_seq_len, silent + 1 :]
    assert np.array_equal(valid[others], normal[others])  # the others as before


def test_fraction_of_range() -> None:
    assert fraction_of_range(0.154, 0.154, 0.342) == 0.0
    assert fraction_of_range(0.342, 0.154, 0.342) == pytest.approx(1.0)
    assert fraction_of_range(0.248, 0.154, 0.342) == pytest.approx(0.5)
    assert fraction_of_range(0.2, 0.3, 0.3) is None  # no range to place it in
    assert fraction_of_range(math.nan, 0.1, 0.3) is None


# ---- the command ---------------------------------------------------------------------


def baseline_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autolfads", "baseline", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AUTOLFADS_LOG_LEVEL": "ERROR"},
    )


def test_cli_prints_floor_and_ceiling(data, scores, tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    write_lfads_h5(data, path)
    proc = baseline_cli(str(path))
    assert proc.returncode == 0, proc.stderr
    floor, ceiling = scores["floor"]["co_bps"], scores["ceiling"]["co_bps"]
    assert f"co_bps {floor:10.4f} {ceiling:11.4f}".split() == next(
        line.split() for line in proc.stdout.splitlines() if line.strip().startswith("co_bps")
    )
    doc = json.loads(baseline_cli(str(path), "--json").stdout)
    assert doc["floor"]["co_bps"] == pytest.approx(floor)


def test_cli_without_heldout_neurons_says_so_and_reports_the_rest(data, tmp_path: Path) -> None:
    held_in = {
        s: replace(getattr(data, s), recon_data=getattr(data, s).encod_data, truth=None)
        for s in ("train", "valid")
    }
    path = tmp_path / "held_in.h5"
    write_lfads_h5(replace(data, **held_in, attrs={}), path)
    proc = baseline_cli(str(path))
    assert proc.returncode == 0, proc.stderr
    assert "co-bps needs held-out neurons" in proc.stdout
    assert "no true rates" in proc.stdout
    rows = {line.split()[0] for line in proc.stdout.splitlines()[2:] if line.startswith("  ")}
    assert "vel_r2" in rows and "co_bps" not in rows


@pytest.mark.parametrize("content", [None, b"not an hdf5 file"])
def test_cli_bad_input_is_one_line(content: bytes | None, tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    if content is not None:
        path.write_bytes(content)
    proc = baseline_cli(str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: ") and "data.h5" in lines[0]
