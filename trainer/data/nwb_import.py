"""NWB recordings into the lfads-torch layout (`autolfads data from-nwb`).

    spikes      units.spike_times binned at bin_ms in each trial's window:
                [align + window[0], align + window[1]) ms, or whole trials
                from start_time to stop_time when they all have one length;
                fp_ms more bins after the window go to *_recon_data only
    channels    held-in units (table order), then held-out ones
    behaviour   a TimeSeries averaged within each bin of the window shifted
                by behavior_lag_ms (the lag lives in the targets, as in NLB)
    splits      a trials column (train / val / test; "none" = not used) or
                a seeded random valid fraction
    conditions  unique combinations of trial columns -> {split}_cond_idx and
                the per-condition mean smoothed spikes `psth` (train + valid)

Every check raises DataError with one line before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from autolfads.errors import DataError
from autolfads.trainer.data.dataset import LfadsData, Split
from autolfads.trainer.data.nwb_binning import bin_spike_times, condition_psth, resample_signal
from autolfads.trainer.data.nwb_read import NwbRecording, read_nwb, trials_sha256

SPLIT_VALUES = {"train": "train", "val": "valid", "valid": "valid", "test": "test", "none": None}

# The PSTH's smoothing (NLB's MC_Maze uses 70 ms): beyond this the kernel's
# padding (4 sd each side, at 1 ms) costs memory for nothing a metric uses.
MAX_PSTH_KERN_SD_MS = 200.0

# NLB's MC_Maze tensors (nlb_tools PARAMS['mc_maze']): move-onset aligned
# -250..450 ms, 200 ms forward prediction, velocity lagged 100 ms, PSTH kernel 70 ms.
PRESETS: dict[str, dict[str, object]] = {
    "mc_maze": {
        "align": "move_onset_time",
        "window_ms": (-250, 450),
        "fp_ms": 200,
        "behavior": "behavior/hand_vel",
        "behavior_lag_ms": 100,
        "heldout_column": "heldout",
        "split_column": "split",
        "condition_columns": ("trial_type", "trial_version"),
        "psth_kern_sd_ms": 70.0,
    },
}
PRESET_BIN_MS = {"mc_maze": (5, 20)}


@dataclass(frozen=True)
class NwbImportOptions:
    """How to cut an NWB recording into LFADS tensors (CLI flags of from-nwb)."""

    bin_ms: int = 5
    align: str | None = None  # trials column; None with window_ms: start_time
    window_ms: tuple[int, int] | None = None  # None: whole trials
    fp_ms: int = 0
    heldout_column: str | None = None
    heldout: int = 0  # random held-out units when no column is given
    seed: int = 0
    behavior: str | None = None  # "module/series"
    behavior_lag_ms: int = 0
    split_column: str | None = None
    valid_fraction: float = 0.2
    condition_columns: tuple[str, ...] = ()
    psth_kern_sd_ms: float = 0.0
    drop_bad_trials: bool = False
    unit_index: tuple[int, ...] | None = None  # fixed channels (held-in then held-out)
    n_heldin: int | None = None  # with unit_index
    unit_ids: tuple[int, ...] | None = None  # with unit_index: the units' ids (None: unknown)
    units_from: str = ""  # the file unit_index came from (for messages)

    @classmethod
    def from_preset(cls, preset: str, **overrides: object) -> NwbImportOptions:
        if preset not in PRESETS:
            raise DataError(f"unknown --preset {preset!r}; choose one of {sorted(PRESETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        opts = replace(cls(), **{**PRESETS[preset], **given})  # type: ignore[arg-type]
        if opts.bin_ms not in PRESET_BIN_MS[preset]:
            raise DataError(
                f"--preset {preset} is defined for --bin-ms {' or '.join(map(str, PRESET_BIN_MS[preset]))}, "
                f"got {opts.bin_ms}"
            )
        return opts


@dataclass
class ImportReport:
    """What the conversion did, for the summary `from-nwb` prints."""

    n_units: int = 0
    dropped_units: list[int] = field(default_factory=list)
    dropped_trials: dict[str, int] = field(default_factory=dict)
    unused_trials: int = 0
    lines: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Windows:
    starts: np.ndarray  # (trials,) first observed bin's start, seconds
    n_obs: int  # observed bins
    n_fp: int  # forward bins


def _check_ms(opts: NwbImportOptions) -> None:
    # --window alone is placed around start_time (README); --align alone has no window.
    if opts.align is not None and opts.window_ms is None:
        raise DataError(
            f"--align {opts.align} needs --window START_MS END_MS (the window is placed around "
            "the align time); pass both, or neither to bin whole trials from start_time to stop_time"
        )
    if opts.bin_ms < 1:
        raise DataError(f"--bin-ms must be >= 1, got {opts.bin_ms}")
    if opts.seed < 0:
        raise DataError(f"--seed must be >= 0, got {opts.seed}")
    if not 0 <= opts.psth_kern_sd_ms <= MAX_PSTH_KERN_SD_MS:
        raise DataError(
            f"--psth-kern-sd-ms {opts.psth_kern_sd_ms} must be between 0 (no smoothing) "
            f"and {MAX_PSTH_KERN_SD_MS:g}"
        )
    if opts.fp_ms < 0 or opts.fp_ms % opts.bin_ms:
        raise DataError(
            f"--fp-ms {opts.fp_ms} must be >= 0 and a multiple of --bin-ms {opts.bin_ms}"
        )
    if opts.window_ms is not None:
        lo, hi = opts.window_ms
        if hi <= lo:
            raise DataError(f"--window {lo} {hi}: the end must come after the start")
        if (hi - lo) % opts.bin_ms:
            raise DataError(
                f"--bin-ms {opts.bin_ms} does not divide the {hi - lo} ms window ({lo}, {hi}); "
                "choose a bin size that divides it or change --window"
            )


def _nan_times(rec: NwbRecording) -> np.ndarray:
    """(trials,) True where start_time or stop_time is NaN: such a trial has no
    extent to bin (or to check a window against: NaN compares false)."""
    start, stop = rec.trial_columns["start_time"], rec.trial_columns["stop_time"]
    return np.isnan(start.astype(np.float64)) | np.isnan(stop.astype(np.float64))


def _check_positive_lengths(
    rec: NwbRecording, rows: np.ndarray, start: np.ndarray, stop: np.ndarray
) -> None:
    """Whole-trial binning: a trial that ends before it starts (or at once) has
    no extent, and its length would otherwise surface as a bin size that "does
    not divide" it or as trials of many lengths."""
    empty = stop - start <= 0
    if empty.any():
        first = int(np.argmax(empty))
        raise DataError(
            f"{rec.source}: {int(empty.sum())} of {rec.trial_columns['start_time'].size} "
            f"trials end before they start or last no time (first: trial row {rows[first]}, "
            f"start_time {start[first]:.6f} s, stop_time {stop[first]:.6f} s); "
            "fix the trials table or bin a window with --align COLUMN --window START_MS END_MS"
        )


def _windows(
    rec: NwbRecording, opts: NwbImportOptions, nan_times: np.ndarray
) -> tuple[Windows, np.ndarray]:
    """Each trial's window, and a bool (trials,) of trials whose align time is NaN."""
    width = opts.bin_ms / 1000.0
    n_fp = opts.fp_ms // opts.bin_ms
    if opts.window_ms is None:
        start = rec.trial_columns["start_time"].astype(np.float64)
        stop = rec.trial_columns["stop_time"].astype(np.float64)
        if nan_times.all():
            raise DataError(f"{rec.source}: every trial has a NaN start_time or stop_time")
        # Trials without times are refused or dropped by `_bad_trials`; the
        # length is that of the others.
        rows = np.flatnonzero(~nan_times)
        start, stop = start[~nan_times], stop[~nan_times]
        _check_positive_lengths(rec, rows, start, stop)
        # One length (to float error): lengths that differ by less than half
        # a bin would round to one bin count.
        if np.ptp(stop - start) > 1e-6:
            raise DataError(
                f"{rec.source}: trials last {np.min(stop - start) * 1000:.3f} to "
                f"{np.max(stop - start) * 1000:.3f} ms; whole-trial binning needs one length: "
                "pass --align COLUMN --window START_MS END_MS"
            )
        n_bins = np.round((stop - start) / width)
        if np.any(np.abs((stop - start) - n_bins * width) > 1e-6) or n_bins[0] < 1:
            raise DataError(
                f"--bin-ms {opts.bin_ms} does not divide the trials' length of "
                f"{(stop[0] - start[0]) * 1000:.3f} ms; choose a bin size that divides it"
            )
        starts = rec.trial_columns["start_time"].astype(np.float64)
        return Windows(starts, int(n_bins[0]), n_fp), np.zeros(starts.size, bool)
    column = opts.align or "start_time"
    values = np.asarray(rec.trial_columns[column])
    if values.dtype.kind not in "iuf":
        raise DataError(
            f"{rec.source}: --align {column}: the trials column holds "
            f"{'text' if values.dtype.kind in 'OSU' else values.dtype}, not times in seconds"
        )
    align = values.astype(np.float64)
    lo, hi = opts.window_ms
    return Windows(align + lo / 1000.0, (hi - lo) // opts.bin_ms, n_fp), np.isnan(align)


def _bad_trials(
    rec: NwbRecording,
    opts: NwbImportOptions,
    win: Windows,
    nan_times: np.ndarray,
    nan_align: np.ndarray,
) -> dict[str, np.ndarray]:
    """Trials each check rejects, by the reason a user reads, in check order
    (each trial under its first reason only, so dropped counts add up)."""
    width = opts.bin_ms / 1000.0
    start, stop = rec.trial_columns["start_time"], rec.trial_columns["stop_time"]
    obs_end = win.starts + win.n_obs * width
    full_end = obs_end + win.n_fp * width
    no_align = nan_align & ~nan_times
    timed = ~(nan_times | nan_align)
    with np.errstate(invalid="ignore"):
        outside = timed & ((win.starts < start - 1e-9) | (obs_end > stop + 1e-9))
        beyond = timed & ~outside & ((full_end > rec.recording_end + 1e-9) | (win.starts < 0))
    bad = {
        "have a NaN start_time or stop_time": nan_times,
        f"have no {opts.align or 'start_time'} (NaN)": no_align,
        "have a window outside the trial's start_time..stop_time": outside,
        f"have a window (with {opts.fp_ms} ms forward bins) past the recording's end "
        f"at {rec.recording_end:.3f} s": beyond,
    }
    if rec.behavior is not None:
        times = rec.behavior[0]
        period = float(np.median(np.diff(times))) if times.size > 1 else 0.0
        if period > width + 1e-9:
            raise DataError(
                f"{rec.source}: {rec.behavior_name} is sampled every {period * 1000:.3g} ms, "
                f"coarser than --bin-ms {opts.bin_ms}: its bins would hold no samples; "
                "choose a larger --bin-ms"
            )
        ok = timed & ~(outside | beyond)
        lagged = np.where(ok, win.starts, 0.0) + opts.behavior_lag_ms / 1000.0
        _, covered = resample_signal(*rec.behavior, lagged, win.n_obs, width)
        bad[f"have a window that {rec.behavior_name} does not cover"] = ok & ~covered
    return bad


def _apply_bad(bad: dict[str, np.ndarray], opts: NwbImportOptions, source: str) -> np.ndarray:
    keep = np.ones(next(iter(bad.values())).shape, bool)
    for reason, mask in bad.items():
        if mask.any() and not opts.drop_bad_trials:
            first = int(np.flatnonzero(mask)[0])
            raise DataError(
                f"{source}: {int(mask.sum())} of {mask.size} trials {reason} (first: trial row "
                f"{first}); pass --drop-bad-trials to leave them out"
            )
        keep &= ~mask
    return keep


# --------------------------------------------------------------------------- splits, units


def _unused_by_split(rec: NwbRecording, opts: NwbImportOptions) -> np.ndarray:
    """(trials,) True where the split column says "none" (other values are
    checked by `_splits`)."""
    if not opts.split_column:
        return np.zeros(rec.n_trials, bool)
    values = rec.trial_columns[opts.split_column]
    return np.array([str(v) == "none" for v in values], dtype=bool)


def _splits(rec: NwbRecording, opts: NwbImportOptions, keep: np.ndarray) -> np.ndarray:
    """Split name per trial ('' = not used)."""
    names = np.full(rec.n_trials, "", dtype=object)
    if opts.split_column:
        values = rec.trial_columns[opts.split_column]
        other = sorted({str(v) for v in values} - SPLIT_VALUES.keys())
        if other:
            raise DataError(
                f"{rec.source}: split column {opts.split_column!r} has values {other[:5]}; "
                f"expected {sorted(SPLIT_VALUES)} (val = valid, none = not used)"
            )
        names[:] = [SPLIT_VALUES[str(v)] or "" for v in values]
    else:
        if not 0 < opts.valid_fraction < 1:
            raise DataError(f"--valid-fraction must lie in (0, 1), got {opts.valid_fraction}")
        order = np.random.default_rng(opts.seed).permutation(np.flatnonzero(keep))
        n_valid = max(1, int(round(opts.valid_fraction * order.size)))
        names[order[:n_valid]] = "valid"
        names[order[n_valid:]] = "train"
    names[~keep] = ""
    for split in ("train", "valid"):
        if not np.any(names == split):
            raise DataError(
                f"{rec.source}: no {split} trials left after the split and the trial checks; "
                "LFADS needs both train and valid trials"
            )
    return names


def _choose_units(
    rec: NwbRecording, opts: NwbImportOptions, counts: np.ndarray, report: ImportReport
) -> tuple[np.ndarray, int]:
    """Unit rows in channel order (held-in, then held-out) and the held-in count."""
    if opts.unit_index is not None:
        index = np.asarray(opts.unit_index, dtype=np.int64)
        if index.max() >= rec.n_units:
            raise DataError(
                f"{rec.source}: the units table has {rec.n_units} rows, but --units-from names "
                f"row {int(index.max())}; convert data recorded from the same units"
            )
        _check_unit_ids(rec, opts, index)
        assert opts.n_heldin is not None
        return index, opts.n_heldin
    active = counts.sum(axis=(0, 1)) > 0
    if not active.any():
        # Else the held-out count check below would say "between 0 and -1".
        raise DataError(
            f"{rec.source}: no unit has a spike in any trial window; check --align / --window "
            "against the units' spike times"
        )
    report.dropped_units = [int(u) for u in np.flatnonzero(~active)]
    if opts.heldout_column:
        raw = rec.unit_columns[opts.heldout_column]
        if raw.dtype.kind not in "bi" or not np.isin(raw, (0, 1)).all():
            raise DataError(
                f"{rec.source}: units column {opts.heldout_column!r} must be boolean "
                f"(got {raw.dtype})"
            )
        heldout = raw.astype(bool)
    else:
        if opts.heldout < 0 or opts.heldout >= int(active.sum()):
            raise DataError(
                f"--heldout {opts.heldout} must lie between 0 and {int(active.sum()) - 1} "
                f"(the units with spikes, less one)"
            )
        heldout = np.zeros(rec.n_units, bool)
        pick = np.random.default_rng(opts.seed).choice(
            np.flatnonzero(active), opts.heldout, replace=False
        )
        heldout[pick] = True
    heldin_rows = np.flatnonzero(active & ~heldout)
    if heldin_rows.size == 0:
        raise DataError(f"{rec.source}: no held-in units with spikes; the encoder needs some")
    return np.concatenate([heldin_rows, np.flatnonzero(active & heldout)]), int(heldin_rows.size)


def _check_unit_ids(rec: NwbRecording, opts: NwbImportOptions, index: np.ndarray) -> None:
    """--units-from: each channel's row here must hold the unit (by id) it held there.

    A new session of the same neurons is another NWB file (another
    identifier), so the identifier cannot be compared; the units table's ids
    can: a table with other units or another order puts the model's
    channels on the wrong neurons, with no other sign.
    """
    if opts.unit_ids is None:
        return  # a file from before unit ids were kept: rows are all there is
    want = np.asarray(opts.unit_ids, dtype=np.int64)
    have = rec.ids[index]
    differ = np.flatnonzero(have != want)
    if differ.size:
        k = int(differ[0])
        raise DataError(
            f"{rec.source}: units table row {int(index[k])} is unit id {int(have[k])}, but "
            f"channel {k} of --units-from {opts.units_from} is unit id {int(want[k])} "
            f"({differ.size} of {want.size} channels differ); convert data recorded from "
            "the same units, with the same unit ids"
        )


def _order_key(value: object) -> tuple[int, float, str]:
    """Numbers in numeric order (2 before 10), then text; NaN last."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
    return (0, number, "") if np.isfinite(number) else (2, 0.0, str(value))


def _conditions(rec: NwbRecording, columns: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """Condition id per trial: index of its column values among the sorted unique ones."""
    keys = [tuple(str(rec.trial_columns[c][i]) for c in columns) for i in range(rec.n_trials)]
    unique = sorted(set(keys), key=lambda key: tuple(_order_key(v) for v in key))
    lookup = {key: i for i, key in enumerate(unique)}
    return np.array([lookup[k] for k in keys], dtype=np.int64), len(unique)


# --------------------------------------------------------------------------- assembly


def build_dataset(rec: NwbRecording, opts: NwbImportOptions) -> tuple[LfadsData, ImportReport]:
    """The LFADS dataset of a recording under `opts`, and what was dropped."""
    _check_ms(opts)
    report = ImportReport(n_units=rec.n_units)
    nan_times = _nan_times(rec)
    win, nan_align = _windows(rec, opts, nan_times)
    # Trials the split column leaves out ("none", often failed trials) are
    # neither checked nor counted as dropped.
    unused = _unused_by_split(rec, opts)
    found = _bad_trials(rec, opts, win, nan_times, nan_align)
    bad = {reason: mask & ~unused for reason, mask in found.items()}
    keep = _apply_bad(bad, opts, rec.source)
    report.dropped_trials = {reason: int(m.sum()) for reason, m in bad.items() if m.any()}
    split_of = _splits(rec, opts, keep)
    report.unused_trials = int(np.sum(keep & (split_of == "")))
    used = np.flatnonzero(split_of != "")
    width = opts.bin_ms / 1000.0
    # (trials used, n_obs + n_fp, units): every unit, before choosing channels.
    counts = bin_spike_times(rec.spike_times, win.starts[used], win.n_obs + win.n_fp, width)
    units, n_heldin = _choose_units(rec, opts, counts, report)
    recon = counts[:, :, units]  # float32 counts, channels in LFADS order
    behavior = None
    if rec.behavior is not None:
        lagged = win.starts[used] + opts.behavior_lag_ms / 1000.0
        behavior, _ = resample_signal(*rec.behavior, lagged, win.n_obs, width)
        behavior = behavior.astype(np.float32)
    cond = n_cond = None
    attrs: dict[str, np.ndarray] = {
        "nwb_unit_index": units.astype(np.int64),
        "nwb_bin_width": np.asarray(width, dtype=np.float64),
        # Which recording, for to-nwb and --units-from (dataset.NWB_KEYS).
        "nwb_identifier": np.frombuffer(rec.identifier.encode("utf-8"), dtype=np.uint8).copy(),
        "nwb_trials_sha256": trials_sha256(
            rec.trial_columns["start_time"], rec.trial_columns["stop_time"]
        ),
        "nwb_unit_id": rec.ids[units].astype(np.int64),
    }
    if opts.condition_columns:
        cond_all, n_cond = _conditions(rec, opts.condition_columns)
        cond = cond_all[used]
        labelled = np.isin(split_of[used], ("train", "valid"))
        psth = condition_psth(
            [rec.spike_times[u] for u in units],
            win.starts[used][labelled],
            cond[labelled],
            n_cond,
            win.n_obs,
            opts.bin_ms,
            opts.psth_kern_sd_ms,
        )
        attrs["psth"] = psth.astype(np.float32)
    splits: dict[str, Split | None] = {}
    for name in ("train", "valid", "test"):
        rows = np.flatnonzero(split_of[used] == name)
        if rows.size == 0:
            splits[name] = None
            continue
        r = recon[rows]
        splits[name] = Split(
            encod_data=np.ascontiguousarray(r[:, : win.n_obs, :n_heldin]),
            recon_data=r,
            behavior=None if behavior is None else behavior[rows],
            cond_idx=None if cond is None else cond[rows],
            trial_idx=used[rows].astype(np.int64),
        )
        attrs[f"nwb_{name}_start"] = win.starts[used][rows].astype(np.float64)
    assert splits["train"] is not None and splits["valid"] is not None
    data = LfadsData(splits["train"], splits["valid"], splits["test"], rec.source, attrs)
    report.lines = _summary(data, report, n_heldin, units.size - n_heldin, opts)
    if opts.unit_index is not None and opts.unit_ids is None:
        report.lines.append(
            f"unit ids not checked: {opts.units_from} was made before from-nwb kept them "
            "(channels taken by units table row)"
        )
    return data, report


def _summary(
    data: LfadsData, report: ImportReport, n_heldin: int, n_heldout: int, opts: NwbImportOptions
) -> list[str]:
    trials = ", ".join(f"{s.n_trials} {name}" for name, s in data.splits().items())
    rate = np.mean(
        [s.recon_data.mean() for s in data.splits().values() if s.recon_data is not None]
    ) / (opts.bin_ms / 1000)
    lines = [
        f"trials: {trials}"
        + (f" ({report.unused_trials} marked none)" if report.unused_trials else ""),
        f"neurons: {n_heldin} held-in + {n_heldout} held-out (of {report.n_units} units)",
        f"bins: {data.encod_seq_len} observed + {data.fp_seq_len} forward at {opts.bin_ms} ms",
        f"mean rate: {rate:.2f} spikes/s per neuron",
    ]
    if report.dropped_units:
        shown = ", ".join(map(str, report.dropped_units[:10]))
        more = "" if len(report.dropped_units) <= 10 else ", ..."
        lines.append(
            f"dropped {len(report.dropped_units)} units without spikes in any window (rows {shown}{more})"
        )
    for reason, n in report.dropped_trials.items():
        lines.append(f"dropped {n} trials that {reason}")
    return lines


def nwb_to_lfads(path: str | Path, opts: NwbImportOptions) -> tuple[LfadsData, ImportReport]:
    """Read `path` and build its dataset (the whole of `from-nwb` but the write)."""
    trial_cols = [c for c in (opts.align, opts.split_column, *opts.condition_columns) if c]
    unit_cols = [opts.heldout_column] if opts.heldout_column and opts.unit_index is None else []
    rec = read_nwb(path, unit_cols, list(dict.fromkeys(trial_cols)), opts.behavior)
    return build_dataset(rec, opts)


def units_like(data: LfadsData) -> dict[str, object]:
    """Options that reuse another converted file's channels (`--units-from`)."""
    index = data.attrs.get("nwb_unit_index")
    if index is None:
        raise DataError(
            f"{data.source}: has no nwb_unit_index; --units-from needs a file made by from-nwb"
        )
    ids = data.attrs.get("nwb_unit_id")
    return {
        "unit_index": tuple(int(u) for u in index),
        "n_heldin": data.encod_data_dim,
        "unit_ids": None if ids is None else tuple(int(u) for u in ids),
        "units_from": data.source,
    }
