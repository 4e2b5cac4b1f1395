"""NWB files shaped like NLB's MC_Maze, written with pynwb for the from-nwb tests.

Units with spike times, observation intervals and a `heldout` flag; trials
with start/stop, `move_onset_time`, `split` (train/val/test), `trial_type`
and `trial_version`; `processing/behavior/hand_vel` sampled at 1 kHz. The
spike times are returned too, so tests can bin them independently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

TRIAL_S = 1.0  # trials start every second and last 0.9 s
FIRST_TRIAL_S = 1.0


@dataclass
class MazeTruth:
    """What went into the file (times in seconds)."""

    spike_times: list[np.ndarray]
    heldout: np.ndarray  # (units,) bool
    start: np.ndarray
    stop: np.ndarray
    move_onset: np.ndarray
    split: np.ndarray  # str per trial
    trial_type: np.ndarray
    trial_version: np.ndarray
    vel_rate: float
    vel: np.ndarray  # (samples, 2) from t = 0
    end: float
    extra: dict = field(default_factory=dict)


def make_maze_truth(
    n_trials: int = 240, n_units: int = 30, n_heldout: int = 8, seed: int = 0
) -> MazeTruth:
    rng = np.random.default_rng(seed)
    start = FIRST_TRIAL_S + TRIAL_S * np.arange(n_trials)
    stop = start + 0.9
    onset = start + 0.3 + rng.uniform(0.0, 0.15, n_trials)  # window -250..450 fits the trial
    trial_type = rng.integers(0, 4, n_trials)
    trial_version = rng.integers(0, 2, n_trials)
    split = np.array(["train"] * n_trials, dtype=object)
    split[rng.permutation(n_trials)[: n_trials // 4]] = "val"
    split[-12:] = "test"
    end = float(stop[-1] + 1.0)
    spikes = []
    for unit in range(n_units):
        if unit == 3:  # a unit that only fired before the first trial: dropped
            spikes.append(np.sort(rng.uniform(0.0, 0.5, 5)))
            continue
        base = rng.uniform(5.0, 30.0)
        times = rng.uniform(0.0, end, rng.poisson(base * end))
        # A condition-tuned burst after move onset, so conditions differ.
        for i in range(n_trials):
            extra = rng.poisson(3.0 * (1 + (trial_type[i] + unit) % 3))
            times = np.append(times, onset[i] + rng.uniform(0.0, 0.3, extra))
        spikes.append(np.sort(times))
    heldout = np.zeros(n_units, bool)
    heldout[-n_heldout:] = True
    t = np.arange(int(end * 1000)) / 1000.0
    vel = np.stack([np.sin(2 * np.pi * 0.7 * t), np.cos(2 * np.pi * 1.3 * t) + t / end], axis=1)
    return MazeTruth(
        spikes, heldout, start, stop, onset, split, trial_type, trial_version, 1000.0, vel, end
    )


def write_maze_nwb(
    path: Path,
    truth: MazeTruth,
    *,
    trials: np.ndarray | None = None,
    with_units: bool = True,
    with_trials: bool = True,
    with_behavior: bool = True,
    onset_override: dict[int, float] | None = None,
    split_override: dict[int, str] | None = None,
    with_tags: bool = False,
    behavior_offset: float = 0.0,
) -> Path:
    """Write `truth` (optionally a subset of trial rows) as an NWB file."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(
        session_description="synthetic MC_Maze-like session",
        identifier=f"maze-{path.stem}",
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    if with_units:
        nwb.add_unit_column("heldout", "held-out units of the benchmark")
        for times, held in zip(truth.spike_times, truth.heldout, strict=True):
            nwb.add_unit(spike_times=times, obs_intervals=[[0.0, truth.end]], heldout=bool(held))
    if with_trials:
        for name, desc in (
            ("move_onset_time", "movement onset"),
            ("split", "NLB split"),
            ("trial_type", "maze condition"),
            ("trial_version", "maze version"),
        ):
            nwb.add_trial_column(name, desc)
        rows = np.arange(truth.start.size) if trials is None else trials
        for i in rows:
            onset = (onset_override or {}).get(int(i), truth.move_onset[i])
            nwb.add_trial(
                start_time=float(truth.start[i]),
                stop_time=float(truth.stop[i]),
                move_onset_time=float(onset),
                split=(split_override or {}).get(int(i), str(truth.split[i])),
                trial_type=int(truth.trial_type[i]),
                trial_version=int(truth.trial_version[i]),
                # NWB's own ragged column: a list of values per trial.
                **({"tags": ["left" if i % 2 else "right"]} if with_tags else {}),
            )
    if with_behavior:
        module = nwb.create_processing_module("behavior", "behavioural data")
        module.add(
            TimeSeries(
                name="hand_vel",
                data=truth.vel,
                unit="mm/s",
                rate=truth.vel_rate,
                starting_time=0.0,
                offset=behavior_offset,
                comments="columns=[x,y]",
            )
        )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path
