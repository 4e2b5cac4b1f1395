"""LFADS outputs back into NWB (`autolfads data to-nwb`; pynwb imported lazily).

The result is a copy of the source NWB file (pynwb's export) with one more
processing module, `lfads` by default:

    rates            TimeSeries (bins of all trials, neurons), spikes/s: the
                     posterior-mean Poisson rates, bin-centre timestamps
    factors          TimeSeries (bins, fac_dim)
    inferred_inputs  TimeSeries (bins, co_dim): the controller's posterior
                     means (only for a model with a controller)
    rates_units      DynamicTable: per column of `rates`, its row in the
                     source units table (`unit`, a region) and `heldout`
    lfads_trials     TimeIntervals: per trial its window, its row of the
                     source trials table (`trial`), its `split`, and
                     `timeseries` references to its bins in the series above

Trials are written in the source's trial order; each trial's bins (observed
and forward) are contiguous in every series.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from autolfads.errors import DataError
from autolfads.trainer.data.dataset import LfadsData, nwb_identifier
from autolfads.trainer.data.lfads_h5 import load_lfads_h5
from autolfads.trainer.data.nwb_read import trials_sha256

# lfads_output dataset -> (TimeSeries name, unit, description)
SERIES = {
    "output_params": ("rates", "spikes/s", "LFADS inferred firing rates (posterior mean)"),
    "factors": ("factors", "a.u.", "LFADS latent factors (posterior mean)"),
    "co_means": ("inferred_inputs", "a.u.", "LFADS inferred inputs: controller output means"),
}


@dataclass(frozen=True)
class TrialOutputs:
    """Outputs of every trial in source-trial order, each (trials, bins, dim)."""

    trial_rows: np.ndarray  # (trials,) rows of the source trials table
    splits: np.ndarray  # (trials,) split name
    starts: np.ndarray  # (trials,) first bin start, seconds
    series: dict[str, np.ndarray]  # lfads_output field -> (trials, bins, dim)


def read_outputs(path: str | Path) -> tuple[LfadsData, TrialOutputs]:
    """An lfads_output file with its NWB provenance, trials in source order."""
    data = load_lfads_h5(path)
    if "nwb_unit_index" not in data.attrs or "nwb_bin_width" not in data.attrs:
        raise DataError(
            f"{path}: has no NWB provenance (nwb_unit_index); to-nwb needs outputs of data "
            "made by `autolfads data from-nwb`"
        )
    rows: list[np.ndarray] = []
    names: list[str] = []
    starts: list[np.ndarray] = []
    series: dict[str, list[np.ndarray]] = {k: [] for k in SERIES}
    with h5py.File(path, "r") as f:
        for name, split in data.splits().items():
            if f"{name}_output_params" not in f:
                raise DataError(
                    f"{path}: no {name}_output_params; pass an lfads_output file "
                    "(from finalize, train or apply), not the input data"
                )
            if split.trial_idx is None or f"nwb_{name}_start" not in data.attrs:
                raise DataError(f"{path}: {name}_inds or nwb_{name}_start missing")
            rows.append(split.trial_idx)
            names += [name] * split.n_trials
            starts.append(data.attrs[f"nwb_{name}_start"])
            for key in SERIES:
                if f"{name}_{key}" in f:
                    series[key].append(np.asarray(f[f"{name}_{key}"][()], dtype=np.float32))
    trial_rows = np.concatenate(rows)
    order = np.argsort(trial_rows, kind="stable")
    kept = {k: np.concatenate(v)[order] for k, v in series.items() if v}
    kept = {k: v for k, v in kept.items() if v.shape[2] > 0}  # co_dim 0: no inferred inputs
    outputs = TrialOutputs(
        trial_rows[order], np.array(names, dtype=object)[order], np.concatenate(starts)[order], kept
    )
    return data, outputs


def _check_source(nwbfile, data: LfadsData, out: TrialOutputs, source: str) -> None:
    """Refuse an NWB file other than the one the outputs' data was converted from."""
    n_units = 0 if nwbfile.units is None else len(nwbfile.units)
    n_trials = 0 if nwbfile.trials is None else len(nwbfile.trials)
    need_units = int(data.attrs["nwb_unit_index"].max()) + 1
    if n_units < need_units or n_trials <= int(out.trial_rows.max()):
        raise DataError(
            f"{source}: has {n_units} units and {n_trials} trials, but the outputs refer to "
            f"unit row {need_units - 1} and trial row {int(out.trial_rows.max())}; "
            "pass the NWB file the data was converted from"
        )
    fix = "pass the NWB file the data was converted from"
    made_from = nwb_identifier(data)
    if made_from is not None and str(nwbfile.identifier) != made_from:
        raise DataError(
            f"{source}: is recording {str(nwbfile.identifier)!r} (NWB identifier), but the "
            f"outputs were converted from {made_from!r}; {fix}"
        )
    start = np.asarray(nwbfile.trials["start_time"].data[:], dtype=np.float64)
    stop = np.asarray(nwbfile.trials["stop_time"].data[:], dtype=np.float64)
    digest = data.attrs.get("nwb_trials_sha256")
    if digest is not None and not np.array_equal(digest, trials_sha256(start, stop)):
        raise DataError(
            f"{source}: its trials' start/stop times differ from those of the recording the "
            f"outputs were converted from (same identifier {made_from!r}); {fix}"
        )
    unit_ids = data.attrs.get("nwb_unit_id")
    if unit_ids is not None:
        have = np.asarray(nwbfile.units.id.data[:], dtype=np.int64)[data.attrs["nwb_unit_index"]]
        if not np.array_equal(have, unit_ids):
            raise DataError(
                f"{source}: its units table holds other unit ids at the outputs' unit rows; {fix}"
            )
    # Every window from-nwb keeps lies inside its trial. For files made before
    # the identifier and trial times were kept this is the only check there
    # is: refusing them instead would mean converting and applying again,
    # while another recording's trials almost never hold every window.
    width = float(np.asarray(data.attrs["nwb_bin_width"]).reshape(-1)[0])
    win_end = out.starts + data.encod_seq_len * width
    rows = out.trial_rows
    with np.errstate(invalid="ignore"):
        outside = ~((out.starts >= start[rows] - 1e-6) & (win_end <= stop[rows] + 1e-6))
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{source}: trial row {int(rows[k])} runs {start[rows[k]]:.3f}..{stop[rows[k]]:.3f} s, "
            f"but the outputs' window for it starts at {out.starts[k]:.3f} s; {fix}"
        )


def _add_module(nwbfile, data: LfadsData, out: TrialOutputs, module_name: str) -> None:
    from hdmf.common import DynamicTable
    from pynwb import TimeSeries
    from pynwb.base import TimeSeriesReference
    from pynwb.epoch import TimeIntervals

    width = float(np.asarray(data.attrs["nwb_bin_width"]).reshape(-1)[0])
    n_trials, n_bins = out.series["output_params"].shape[:2]
    # Bin centres: (trials, bins) -> one ascending run per trial.
    times = (out.starts[:, None] + width * (np.arange(n_bins) + 0.5)).reshape(-1)
    module = nwbfile.create_processing_module(
        module_name, "LFADS posterior means per trial (autolfads data to-nwb)"
    )
    made: dict[str, Any] = {}
    for key, arr in out.series.items():
        name, unit, description = SERIES[key]
        values = arr / width if key == "output_params" else arr  # counts/bin -> spikes/s
        ts = TimeSeries(
            name=name,
            data=values.reshape(n_trials * n_bins, -1),
            unit=unit,
            timestamps=times if not made else next(iter(made.values())),
            description=description,
            comments=f"{n_bins} bins of {width * 1000:g} ms per trial, trial by trial",
        )
        module.add(ts)
        made[key] = ts
    units = data.attrs["nwb_unit_index"].astype(np.int64)
    heldout = np.arange(units.size) >= data.encod_data_dim
    table = DynamicTable(name="rates_units", description="the source unit of each rates column")
    table.add_column(name="unit", description="row of the units table", table=nwbfile.units)
    table.add_column(name="heldout", description="held out of the encoder (co-bps neurons)")
    for unit, held in zip(units.tolist(), heldout.tolist(), strict=True):
        table.add_row(unit=unit, heldout=held)
    module.add(table)
    intervals = TimeIntervals(name="lfads_trials", description="LFADS trial windows")
    intervals.add_column(name="trial", description="row of the trials table", table=nwbfile.trials)
    intervals.add_column(name="split", description="train, valid or test")
    for i in range(n_trials):
        refs = [TimeSeriesReference(i * n_bins, n_bins, ts) for ts in made.values()]
        intervals.add_row(
            start_time=float(out.starts[i]),
            stop_time=float(out.starts[i] + n_bins * width),
            trial=int(out.trial_rows[i]),
            split=str(out.splits[i]),
            timeseries=refs,
        )
    module.add(intervals)


def write_result_nwb(
    outputs_path: str | Path, source_nwb: str | Path, dest: str | Path, module: str = "lfads"
) -> str:
    """Copy `source_nwb` to `dest` with the outputs as a processing module; a summary line."""
    from pynwb import NWBHDF5IO

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", module):
        raise DataError(
            f"--module {module!r}: a processing module name is 1-64 letters, digits, '_', '.' "
            "or '-' (NWB names cannot contain '/')"
        )
    data, out = read_outputs(outputs_path)
    source, dest = str(source_nwb), Path(dest)
    if not Path(source).is_file():
        raise DataError(f"{source}: file not found")
    if not dest.parent.is_dir():
        raise DataError(f"{dest}: folder {dest.parent} does not exist")
    if dest.is_dir():
        raise DataError(f"{dest}: is a folder; give the result file's name")
    src_io = None
    try:
        src_io = NWBHDF5IO(source, "r")
        nwbfile = src_io.read()
    except Exception as err:
        if src_io is not None:
            src_io.close()
        raise DataError(
            f"{source}: not an NWB file, or unreadable by pynwb ({type(err).__name__})"
        ) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".partial.nwb", dir=dest.parent)
    os.close(fd)
    try:
        with src_io:
            _check_source(nwbfile, data, out, source)
            if module in nwbfile.processing:
                raise DataError(
                    f"{source}: already has a processing module {module!r}; pass --module NAME"
                )
            _add_module(nwbfile, data, out, module)
            with NWBHDF5IO(tmp, "w") as export_io:
                export_io.export(src_io=src_io, nwbfile=nwbfile)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    n_trials, n_bins = out.series["output_params"].shape[:2]
    line = (
        f"wrote {dest}: processing/{module} with {', '.join(SERIES[k][0] for k in out.series)} "
        f"for {n_trials} trials x {n_bins} bins, {data.recon_data_dim} units"
    )
    width = float(np.asarray(data.attrs["nwb_bin_width"]).reshape(-1)[0])
    overlaps = int(np.sum(out.starts[1:] < out.starts[:-1] + n_bins * width - 1e-9))
    if overlaps:
        # Both trials keep all their bins, so the series' timestamps step back there.
        line += (
            f" ({overlaps} trial windows overlap the next one: timestamps are not ascending there)"
        )
    return line
