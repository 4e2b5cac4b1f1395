"""Synthetic spiking datasets with known rates (numpy only; deterministic per seed).

Two generators stand in for real recordings (shared/reference/nlb-metrics-and-data.md
sections 9-10):

- `make_chaotic_rnn`: the LFADS chaotic rate network (N=50, g=1.5, tau=25 ms,
  dt=10 ms), 400 conditions x 10 replications, rates up to 30 Hz. Its co-bps
  scale resembles MC_Maze: true rates 0.35, spike smoothing 0.23 at seed 0
  (benchmarks/README.md; the ceiling varies with the random network).
- `make_lorenz`: a Lorenz attractor read out by exp(W z + b) into 30 neurons
  firing at ~1-100 Hz in 20 ms bins; small and cheap.

Both hold out the last `n_heldout` neurons from the encoder, simulate
`n_fp_bins` forward-prediction bins after the observed ones, label each trial
with its condition, and add a 2-D "velocity" behaviour (a fixed random
readout of the latent state, lagged and noisy) for vel R2. Trials of one
condition start from jittered initial states, so they differ.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from autolfads.errors import DataError
from autolfads.trainer.data.dataset import LfadsData, Split

SYNTH_KINDS: tuple[str, ...] = ("chaotic-rnn", "lorenz")
# Largest trials x bins x neurons generated (~10x the reference chaotic RNN);
# the simulation keeps a few float64 copies of that size in memory.
MAX_ELEMENTS = 2**28


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise DataError(f"synthetic data: {name} must be > 0, got {value}")


def _split_reps(n_reps: int, valid_fraction: float) -> np.ndarray:
    """True for the replications that go to valid (the last ones, as in the
    LFADS generator: rep r is valid when r + 1 > (1 - valid_fraction) * n_reps)."""
    is_valid = np.arange(1, n_reps + 1) > (1.0 - valid_fraction) * n_reps
    if is_valid.all() or not is_valid.any():
        raise DataError(
            f"synthetic data: {n_reps} trials per condition with valid_fraction "
            f"{valid_fraction} leaves an empty train or valid split"
        )
    return is_valid


def _behavior(
    rng: np.random.Generator, latents: np.ndarray, lag_bins: int, noise_std: float
) -> np.ndarray:
    """2-D 'velocity': a fixed random readout of the latents `lag_bins` earlier.

    latents: (trials, lag_bins + bins, latent_dim) -> (trials, bins, 2), each
    column scaled to unit variance before the noise is added.
    """
    readout = rng.standard_normal((latents.shape[2], 2))
    vel = latents @ readout
    vel = vel[:, : vel.shape[1] - lag_bins] if lag_bins else vel
    vel = (vel - vel.mean(axis=(0, 1))) / vel.std(axis=(0, 1))
    return vel + noise_std * rng.standard_normal(vel.shape)


def _assemble(
    rates: np.ndarray,
    spikes: np.ndarray,
    behavior: np.ndarray,
    cond_ids: np.ndarray,
    is_valid: np.ndarray,
    n_heldin: int,
    n_bins: int,
    source: str,
) -> LfadsData:
    """Cut (trials, bins + fp_bins, neurons) arrays into train/valid LFADS splits."""

    def split(mask: np.ndarray) -> Split:
        recon = spikes[mask].astype(np.float32)
        return Split(
            encod_data=np.ascontiguousarray(recon[:, :n_bins, :n_heldin]),
            recon_data=recon,
            truth=rates[mask].astype(np.float32),
            behavior=behavior[mask].astype(np.float32),
            cond_idx=cond_ids[mask].astype(np.int64),
            trial_idx=np.flatnonzero(mask).astype(np.int64),
        )

    train, valid = split(~is_valid), split(is_valid)
    # The PSTH the psth R2 compares against: per-condition mean true rate over
    # the observed bins of all labelled trials (train + valid, as NLB does).
    n_cond = int(cond_ids.max()) + 1
    psth = np.stack([rates[cond_ids == c, :n_bins].mean(axis=0) for c in range(n_cond)])
    return LfadsData(train, valid, None, source, {"psth": psth.astype(np.float32)})


def _check_sizes(
    seed: int,
    n_trials: int,
    n_neurons: int,
    n_heldout: int,
    n_bins: int,
    n_fp_bins: int,
    lag_bins: int,
) -> None:
    if seed < 0:
        raise DataError(f"synthetic data: seed must be >= 0, got {seed}")
    if not 0 < n_heldout < n_neurons:
        raise DataError(
            f"synthetic data: n_heldout {n_heldout} must be between 1 and n_neurons - 1 "
            f"({n_neurons - 1})"
        )
    if n_bins < 1 or n_fp_bins < 0 or lag_bins < 0:
        raise DataError(
            f"synthetic data: need n_bins >= 1, n_fp_bins >= 0 and behavior_lag_bins >= 0, "
            f"got {n_bins}, {n_fp_bins}, {lag_bins}"
        )
    # The behaviour lag is simulated too: its bins count.
    n_steps = lag_bins + n_bins + n_fp_bins
    _check_elements(
        f"{n_trials} trials x {n_steps} bins x {n_neurons} neurons", n_trials * n_steps * n_neurons
    )


def _check_elements(what: str, size: int) -> None:
    if size > MAX_ELEMENTS:
        raise DataError(
            f"synthetic data: {what} is {size:.2e} values, over the {MAX_ELEMENTS:.2e} limit"
        )


def _rnn_states(
    x0: np.ndarray, weights: np.ndarray, n_steps: int, alpha: float, gain: float
) -> np.ndarray:
    """Euler-integrate the rate network for every trial at once: (trials, steps, neurons)."""
    states = np.empty((x0.shape[0], n_steps, x0.shape[1]))
    x = x0
    for t in range(n_steps):
        states[:, t] = x
        x = (1.0 - alpha) * x + alpha * gain * np.tanh(x) @ weights.T
    return states


def make_chaotic_rnn(
    seed: int = 0,
    n_conditions: int = 400,
    n_replications: int = 10,
    n_neurons: int = 50,
    n_heldout: int = 12,
    n_bins: int = 100,
    n_fp_bins: int = 20,
    gain: float = 1.5,
    tau: float = 0.025,
    dt: float = 0.010,
    x0_std: float = 1.0,
    x0_jitter_std: float = 0.2,
    max_rate_hz: float = 30.0,
    valid_fraction: float = 0.2,
    behavior_lag_bins: int = 3,
    behavior_noise_std: float = 0.2,
) -> LfadsData:
    """The LFADS chaotic-RNN benchmark (Sussillo et al. 2016, NLB-style split).

    x_t = (1 - dt/tau) x_{t-1} + (dt/tau) g W tanh(x_{t-1}),  W ~ N(0, 1/N).
    Each condition draws x0 ~ N(0, x0_std^2); each replication adds
    N(0, x0_jitter_std^2) so trials of a condition diverge gradually.

    Rates: tanh(x) min-max normalised per trial and neuron over the whole
    window (observed + forward bins), as the reference generator does, times
    max_rate_hz * dt: at most 0.3 spikes per bin, 0.15 on average. (Scaling
    per neuron over all trials instead halves the modulation: true-rate co-bps
    fell from 0.35 to 0.19.)
    """
    _positive(n_conditions=n_conditions, n_replications=n_replications)
    n_trials = n_conditions * n_replications
    _check_sizes(seed, n_trials, n_neurons, n_heldout, n_bins, n_fp_bins, behavior_lag_bins)
    _positive(gain=gain, tau=tau, dt=dt, max_rate_hz=max_rate_hz)
    is_valid_rep = _split_reps(n_replications, valid_fraction)
    net_rng, cond_rng, trial_rng, spike_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    weights = net_rng.standard_normal((n_neurons, n_neurons)) / np.sqrt(n_neurons)
    x0_cond = x0_std * cond_rng.standard_normal((n_conditions, n_neurons))
    cond_ids = np.repeat(np.arange(n_conditions), n_replications)  # condition-major trials
    x = x0_cond[cond_ids] + x0_jitter_std * trial_rng.standard_normal((cond_ids.size, n_neurons))

    # Simulate lag + observed + forward bins; the trial window starts after the
    # behaviour lag so that behaviour at bin t can depend on the state at t - lag.
    n_steps = behavior_lag_bins + n_bins + n_fp_bins
    states = _rnn_states(x, weights, n_steps, dt / tau, gain)
    activity = np.tanh(states)  # (trials, steps, neurons)
    window = activity[:, behavior_lag_bins:]
    lo, hi = window.min(axis=1, keepdims=True), window.max(axis=1, keepdims=True)
    rates = (window - lo) / np.maximum(hi - lo, 1e-12) * (max_rate_hz * dt)
    latent = activity[:, : behavior_lag_bins + n_bins]
    behavior = _behavior(net_rng, latent, behavior_lag_bins, behavior_noise_std)
    is_valid = np.tile(is_valid_rep, n_conditions)
    source = f"<chaotic-rnn seed={seed}>"
    spikes = spike_rng.poisson(rates)
    return _assemble(
        rates, spikes, behavior, cond_ids, is_valid, n_neurons - n_heldout, n_bins, source
    )


def _lorenz_states(
    z0: np.ndarray, n_steps: int, dt: float, sigma: float, rho: float, beta: float
) -> np.ndarray:
    """Euler-integrate the Lorenz system for every trial at once: (trials, steps, 3)."""
    out = np.empty((z0.shape[0], n_steps, 3))
    z = z0.copy()
    for t in range(n_steps):
        out[:, t] = z
        dz = np.stack(
            [
                sigma * (z[:, 1] - z[:, 0]),
                z[:, 0] * (rho - z[:, 2]) - z[:, 1],
                z[:, 0] * z[:, 1] - beta * z[:, 2],
            ],
            axis=1,
        )
        z = z + dt * dz
    return out


def _lorenz_log_rates(
    window: np.ndarray, rng: np.random.Generator, n_neurons: int, min_hz: float, max_hz: float
) -> np.ndarray:
    """Log-rates in Hz, (trials, bins, neurons), from the standardised state
    (trials, bins, 3): each neuron reads a random direction of the state; its
    span (in log Hz) is drawn between 1/3 and all of log(max/min), then placed
    at a random offset within [log min, log max]."""
    proj = window @ rng.standard_normal((3, n_neurons))  # (trials, bins, neurons)
    lo, hi = proj.min(axis=(0, 1)), proj.max(axis=(0, 1))
    full_span = np.log(max_hz / min_hz)
    span = full_span * rng.uniform(1.0 / 3.0, 1.0, n_neurons)
    offset = np.log(min_hz) + (full_span - span) * rng.uniform(0.0, 1.0, n_neurons)
    return offset + span * (proj - lo) / np.maximum(hi - lo, 1e-12)


# Long only by its signature: 19 keyword knobs of the generator, each with
# the recipe's default; the body is about 30 lines.
def make_lorenz(
    seed: int = 0,
    n_conditions: int = 65,
    n_trials_per_condition: int = 25,
    n_neurons: int = 30,
    n_heldout: int = 8,
    n_bins: int = 50,
    n_fp_bins: int = 10,
    bin_ms: float = 20.0,
    steps_per_bin: int = 20,
    step_dt: float = 0.006,
    ic_jitter_std: float = 0.2,
    min_rate_hz: float = 1.0,
    max_rate_hz: float = 100.0,
    valid_fraction: float = 0.2,
    behavior_lag_bins: int = 2,
    behavior_noise_std: float = 0.2,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
) -> LfadsData:
    """Lorenz-attractor population (lfads-run-manager recipe, rescaled to NLB-like rates).

    Each condition starts on the attractor (500 burn-in Euler steps from
    N(0,1) + [0,0,25]); each trial adds N(0, ic_jitter_std^2) to that state.
    One bin is `steps_per_bin` Euler steps of `step_dt`. The state is
    standardised over all trials, then each neuron's log-rate w.z + b is
    scaled so that its rate spans part of [min_rate_hz, max_rate_hz].
    """
    _positive(n_conditions=n_conditions, n_trials_per_condition=n_trials_per_condition)
    n_trials = n_conditions * n_trials_per_condition
    _check_sizes(seed, n_trials, n_neurons, n_heldout, n_bins, n_fp_bins, behavior_lag_bins)
    _positive(bin_ms=bin_ms, steps_per_bin=steps_per_bin)
    # Every Euler step of every trial is kept before the bins are taken.
    n_euler = (behavior_lag_bins + n_bins + n_fp_bins) * steps_per_bin
    _check_elements(f"{n_trials} trials x {n_euler} Euler steps x 3", n_trials * n_euler * 3)
    if not 0 < min_rate_hz < max_rate_hz:
        raise DataError(
            f"synthetic data: need 0 < min_rate_hz < max_rate_hz, got {min_rate_hz}, {max_rate_hz}"
        )
    is_valid_rep = _split_reps(n_trials_per_condition, valid_fraction)
    net_rng, cond_rng, trial_rng, spike_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    start = cond_rng.standard_normal((n_conditions, 3)) + np.array([0.0, 0.0, 25.0])
    z0_cond = _lorenz_states(start, 500, step_dt, sigma, rho, beta)[:, -1]
    cond_ids = np.repeat(np.arange(n_conditions), n_trials_per_condition)
    z0 = z0_cond[cond_ids] + ic_jitter_std * trial_rng.standard_normal((cond_ids.size, 3))
    n_total = behavior_lag_bins + n_bins + n_fp_bins
    z = _lorenz_states(z0, n_total * steps_per_bin, step_dt, sigma, rho, beta)
    z = z[:, ::steps_per_bin]  # state at the start of each bin: (trials, bins, 3)
    z = (z - z.mean(axis=(0, 1))) / z.std(axis=(0, 1))

    log_hz = _lorenz_log_rates(
        z[:, behavior_lag_bins:], net_rng, n_neurons, min_rate_hz, max_rate_hz
    )
    rates = np.exp(log_hz) * (bin_ms / 1000.0)
    latent = z[:, : behavior_lag_bins + n_bins]
    behavior = _behavior(net_rng, latent, behavior_lag_bins, behavior_noise_std)
    is_valid = np.tile(is_valid_rep, n_conditions)
    spikes = spike_rng.poisson(rates)
    return _assemble(
        rates,
        spikes,
        behavior,
        cond_ids,
        is_valid,
        n_neurons - n_heldout,
        n_bins,
        f"<lorenz seed={seed}>",
    )


def make_synthetic(kind: str, seed: int = 0, **sizes: float) -> LfadsData:
    """Dispatch on `kind` ("chaotic-rnn" or "lorenz"); `sizes` go to the generator."""
    makers: dict[str, Callable[..., LfadsData]] = {
        "chaotic-rnn": make_chaotic_rnn,
        "lorenz": make_lorenz,
    }
    if kind not in makers:
        raise DataError(f"unknown synthetic dataset {kind!r}; choose one of {list(SYNTH_KINDS)}")
    try:
        return makers[kind](seed=seed, **sizes)
    except TypeError as err:
        raise DataError(f"synthetic {kind}: {err}") from None
