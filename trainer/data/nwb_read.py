"""Read what `from-nwb` needs from an NWB file into numpy (pynwb, imported lazily).

The NWB file is opened once, the units' spike times, the requested columns
of the units and trials tables and one behaviour TimeSeries are copied into
an `NwbRecording`, and the file is closed; everything after that (binning,
splits, checks) is numpy on the recording, in trainer/data/nwb_import.py.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autolfads.errors import DataError


@dataclass(frozen=True)
class NwbRecording:
    """The parts of an NWB file a conversion uses (times in seconds)."""

    source: str
    identifier: str
    spike_times: list[np.ndarray]  # one sorted array per row of the units table
    unit_columns: dict[str, np.ndarray]  # requested units columns, one entry per unit
    trial_columns: dict[str, np.ndarray]  # start_time, stop_time + requested trial columns
    trial_colnames: tuple[str, ...]  # every column of the trials table (for messages)
    unit_colnames: tuple[str, ...]
    recording_end: float  # end of the last observation interval (else last trial stop)
    behavior: tuple[np.ndarray, np.ndarray] | None = None  # (timestamps (s,), values (s, d))
    behavior_name: str = ""
    unit_ids: np.ndarray | None = None  # (units,) the units table's `id`s; None: row numbers

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self.n_units) if self.unit_ids is None else self.unit_ids

    @property
    def n_units(self) -> int:
        return len(self.spike_times)

    @property
    def n_trials(self) -> int:
        return int(self.trial_columns["start_time"].shape[0])


def trials_sha256(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """SHA-256 (32 uint8) of a trials table's start and stop times, as float64.

    Kept by from-nwb and compared by to-nwb: identifiers are often reused
    (a rig's default, a copied script), the trial times of two sessions are not.
    """
    times = np.stack([np.asarray(start, "<f8"), np.asarray(stop, "<f8")])
    return np.frombuffer(hashlib.sha256(times.tobytes()).digest(), dtype=np.uint8).copy()


def _as_text(values: np.ndarray) -> np.ndarray:
    """Strings read back as bytes or str, as one str array."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _column(table, name: str) -> np.ndarray:
    from hdmf.common.table import VectorIndex

    column = table[name]
    if isinstance(column, VectorIndex):
        # A ragged column (several values per trial, e.g. `tags`): its
        # `data` is the offsets of each row's values, not values.
        raise DataError(
            f"trials column {name!r} holds several values per trial; "
            "use a column with one value per trial"
        )
    data = np.asarray(column.data[:])
    return _as_text(data) if data.dtype.kind in "OSU" else data


def _spike_times(units) -> list[np.ndarray]:
    """Each unit's spike times, sorted, read in two array reads (not one per unit)."""
    index = units["spike_times"]  # a VectorIndex: cumulative end of each unit's slice
    ends = np.asarray(index.data[:], dtype=np.int64)
    flat = np.asarray(index.target.data[:], dtype=np.float64)
    begins = np.concatenate([[0], ends[:-1]])
    return [np.sort(flat[b:e]) for b, e in zip(begins, ends, strict=True)]


def _recording_end(units, trial_stop: np.ndarray, spikes: list[np.ndarray]) -> float:
    if "obs_intervals" in units.colnames:
        index = units["obs_intervals"]
        flat = np.asarray(index.target.data[:], dtype=np.float64)
        if flat.size:
            return float(flat.reshape(-1, 2)[:, 1].max())
    last_spike = max((float(s[-1]) for s in spikes if s.size), default=-np.inf)
    # A NaN stop_time (refused or dropped later, by trial) must not make the end NaN.
    stops = np.asarray(trial_stop, dtype=np.float64)
    return float(max(np.max(stops[np.isfinite(stops)], initial=-np.inf), last_spike))


def _behavior(nwbfile, path: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A TimeSeries named `module/series` (or `module/interface/series`)."""
    from pynwb import TimeSeries

    parts = path.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise DataError(f"--behavior {path!r}: expected MODULE/SERIES, e.g. behavior/hand_vel")
    modules = nwbfile.processing
    if parts[0] not in modules:
        raise DataError(
            f"{source}: --behavior {path!r}: no processing module {parts[0]!r} "
            f"(modules: {sorted(modules) or 'none'})"
        )
    module = modules[parts[0]]
    if parts[1] not in module.data_interfaces:
        raise DataError(
            f"{source}: --behavior {path!r}: module {parts[0]!r} has no {parts[1]!r} "
            f"(it has {sorted(module.data_interfaces) or 'nothing'})"
        )
    obj = module[parts[1]]
    if len(parts) == 3:
        series = getattr(obj, "time_series", {})
        if parts[2] not in series:
            raise DataError(f"{source}: --behavior {path!r}: {parts[1]!r} has no {parts[2]!r}")
        obj = series[parts[2]]
    if not isinstance(obj, TimeSeries):
        raise DataError(
            f"{source}: --behavior {path!r} is a {type(obj).__name__}, not a TimeSeries"
        )
    # NWB: value = data * conversion + offset.
    values = np.asarray(obj.data[:], dtype=np.float64) * float(obj.conversion or 1.0)
    values = values + float(getattr(obj, "offset", 0.0) or 0.0)
    values = values.reshape(values.shape[0], -1)
    if obj.timestamps is not None:
        times = np.asarray(obj.timestamps[:], dtype=np.float64).reshape(-1)
        # Binning pairs sample i with timestamp i: any other length would pair
        # values with the wrong times (or reshape 2n samples into n x 2).
        if times.size != values.shape[0]:
            raise DataError(
                f"{source}: --behavior {path!r}: data has {values.shape[0]} samples but "
                f"timestamps has {times.size}; they must have one timestamp per sample"
            )
    else:
        rate = float(obj.rate)
        if not (np.isfinite(rate) and rate > 0):
            raise DataError(
                f"{source}: --behavior {path!r}: rate {rate:g} must be a positive sampling rate (Hz)"
            )
        times = float(obj.starting_time or 0.0) + np.arange(values.shape[0]) / rate
    if not np.all(np.isfinite(times)):
        first = int(np.flatnonzero(~np.isfinite(times))[0])
        # NaN compares false, so it would pass the increasing check below.
        raise DataError(
            f"{source}: --behavior {path!r}: timestamps contain NaN or infinite values "
            f"(first: sample {first})"
        )
    if times.size < 1 or np.any(np.diff(times) <= 0):
        raise DataError(f"{source}: --behavior {path!r}: timestamps must be strictly increasing")
    return times, values


def read_nwb(
    path: str | Path,
    unit_columns: Sequence[str] = (),
    trial_columns: Sequence[str] = (),
    behavior: str | None = None,
) -> NwbRecording:
    """Read an NWB file; raise DataError (one line) for a file that cannot serve."""
    from pynwb import NWBHDF5IO

    source = str(path)
    if not Path(path).is_file():
        raise DataError(f"{source}: file not found")
    io = None
    try:
        io = NWBHDF5IO(source, "r")
        with warnings.catch_warnings():
            # pynwb warns of every series whose data and timestamps differ in
            # length: the one --behavior reads is refused in one line below,
            # the others are not used.
            warnings.filterwarnings("ignore", message=".*does not match length of timestamps")
            nwbfile = io.read()
    except Exception as err:  # h5py and hdmf raise many types for foreign files
        if io is not None:
            io.close()
        raise DataError(
            f"{source}: not an NWB file, or unreadable by pynwb ({type(err).__name__})"
        ) from None
    with io:
        units, trials = nwbfile.units, nwbfile.trials
        if units is None or len(units) == 0 or "spike_times" not in units.colnames:
            raise DataError(
                f"{source}: no units table with spike_times; from-nwb bins sorted units"
            )
        if trials is None or len(trials) == 0:
            raise DataError(
                f"{source}: no trials table; from-nwb cuts the recording into its trials"
            )
        missing_units = [c for c in unit_columns if c not in units.colnames]
        if missing_units:
            raise DataError(
                f"{source}: units table has no column {missing_units[0]!r} "
                f"(columns: {', '.join(units.colnames)})"
            )
        missing_trials = [c for c in trial_columns if c not in trials.colnames]
        if missing_trials:
            raise DataError(
                f"{source}: trials table has no column {missing_trials[0]!r} "
                f"(columns: {', '.join(trials.colnames)})"
            )
        spikes = _spike_times(units)
        tcols = {c: _column(trials, c) for c in ("start_time", "stop_time", *trial_columns)}
        return NwbRecording(
            source=source,
            identifier=str(nwbfile.identifier),
            spike_times=spikes,
            unit_columns={c: _column(units, c) for c in unit_columns},
            trial_columns=tcols,
            trial_colnames=tuple(trials.colnames),
            unit_colnames=tuple(units.colnames),
            recording_end=_recording_end(units, tcols["stop_time"], spikes),
            behavior=None if behavior is None else _behavior(nwbfile, behavior, source),
            behavior_name=behavior or "",
            unit_ids=np.asarray(units.id.data[:], dtype=np.int64),
        )
