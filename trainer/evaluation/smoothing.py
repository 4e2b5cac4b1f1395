"""Spike-smoothing baseline: the NLB floor any latent-variable model should beat.

Recipe (nlb_tools smoothing baseline, shared/reference/nlb-metrics-and-data.md
section 10): Gaussian-smooth the held-in spikes of each trial over time, take
log(x + 1e-4), and fit one Poisson GLM (sklearn PoissonRegressor, alpha 0.01)
per held-out neuron on the train split. Held-in rates are the smoothed spikes
themselves. There is no dynamics to extrapolate with, so forward bins predict
each neuron's mean train rate (fp-bps ~ 0). Predicted rates of held-out
neurons and forward bins are at least half a spike per train split (a
neuron silent in train is not predicted as never spiking).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.linear_model import PoissonRegressor
from threadpoolctl import threadpool_limits

from autolfads.errors import DataError
from autolfads.trainer.data.dataset import LfadsData

LOG_OFFSET = 1e-4


def smooth_spikes(spikes: np.ndarray, sd_bins: float) -> np.ndarray:
    """Gaussian smoothing along bins within each trial: (n, T, C) -> (n, T, C).

    Edges are renormalised by the kernel mass inside the trial, so a constant
    rate stays constant up to the trial boundaries.
    """
    if sd_bins <= 0:
        raise DataError(f"smoothing: kernel sd must be > 0 bins, got {sd_bins}")
    spikes = np.asarray(spikes, dtype=np.float64)
    smoothed = gaussian_filter1d(spikes, sd_bins, axis=1, mode="constant", cval=0.0)
    mass = gaussian_filter1d(np.ones(spikes.shape[1]), sd_bins, mode="constant", cval=0.0)
    return smoothed / mass[None, :, None]


def _fit_heldout(features: np.ndarray, targets: np.ndarray, alpha: float) -> list[PoissonRegressor]:
    """One Poisson GLM per held-out neuron. features: (rows, heldin), targets: (rows, heldout)."""
    models = []
    # lbfgs on a tall, narrow matrix: multi-threaded BLAS only adds overhead, and
    # on a busy machine it was 30x slower than one thread.
    with threadpool_limits(1):
        for channel in range(targets.shape[1]):
            glm = PoissonRegressor(alpha=alpha, max_iter=500)
            glm.fit(features, targets[:, channel])
            models.append(glm)
    return models


def smoothing_baseline(
    data: LfadsData, sd_bins: float = 2.0, alpha: float = 0.01
) -> dict[str, np.ndarray]:
    """Rates of the smoothing baseline for train and valid, in the posterior-
    sampling output format: {"train_output_params", "valid_output_params"},
    each (trials, recon_seq_len, recon_data_dim) in counts per bin."""
    t_obs, d_in = data.encod_seq_len, data.encod_data_dim
    assert data.train.recon_data is not None
    smoothed = {
        name: smooth_spikes(split.encod_data, sd_bins)
        for name, split in (("train", data.train), ("valid", data.valid))
    }
    models: list[PoissonRegressor] = []
    if data.heldout_dim > 0:
        features = np.log(smoothed["train"] + LOG_OFFSET).reshape(-1, d_in)
        targets = data.train.recon_data[:, :t_obs, d_in:].reshape(-1, data.heldout_dim)
        models = _fit_heldout(features, targets, alpha)
    mean_rate = data.train.recon_data.mean(axis=(0, 1))  # (recon_data_dim,)
    # A neuron silent in train gets a GLM intercept of -inf and a mean rate of
    # 0: predicted as exactly 0, each of its valid spikes would cost ~20 nats
    # and pull the floor far down (a mediocre model then looks close to the
    # ceiling). Half a spike over the train split's bins is what the data
    # cannot rule out, and the least any predicted rate may be.
    min_rate = 0.5 / (data.train.n_trials * data.recon_seq_len)
    output = {}
    for name, heldin in smoothed.items():
        n = heldin.shape[0]
        rates = np.broadcast_to(mean_rate, (n, data.recon_seq_len, data.recon_data_dim)).copy()
        rates[:, :t_obs, :d_in] = heldin
        rows = np.log(heldin + LOG_OFFSET).reshape(-1, d_in)
        for channel, glm in enumerate(models):
            rates[:, :t_obs, d_in + channel] = glm.predict(rows).reshape(n, t_obs)
        heldout = rates[:, :, d_in:]
        np.maximum(heldout, min_rate, out=heldout)  # held-out neurons and forward bins
        rates[:, t_obs:, :d_in] = np.maximum(rates[:, t_obs:, :d_in], min_rate)
        output[f"{name}_output_params"] = rates
    return output
