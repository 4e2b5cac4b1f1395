"""from-nwb / to-nwb on inputs that used to pass silently or end in a traceback:
NaN trial times, behaviour series whose timestamps do not fit their data,
`--window` without `--align`, trials without spikes, and outputs or
`--units-from` files taken from another recording."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from autolfads.cli import main
from autolfads.trainer.data.lfads_h5 import load_lfads_h5

pytest.importorskip("pynwb")

N_TRIALS, N_UNITS = 30, 4
START = 1.0 + np.arange(N_TRIALS)  # one trial a second, 0.5 s long
STOP = START + 0.5
END = float(STOP[-1] + 1.0)
WHOLE = ("--bin-ms", "20")  # whole trials: 25 bins of 20 ms


def spikes(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.uniform(0.0, END, 600)) for _ in range(N_UNITS)]


def write_nwb(
    path: Path,
    *,
    identifier: str = "session-a",
    start: np.ndarray = START,
    stop: np.ndarray = STOP,
    unit_spikes: list[np.ndarray] | None = None,
    unit_ids: list[int] | None = None,
    behavior: tuple[np.ndarray, np.ndarray] | None = None,  # (timestamps, data)
) -> Path:
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(
        session_description="checks",
        identifier=identifier,
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    for i, times in enumerate(spikes() if unit_spikes is None else unit_spikes):
        nwb.add_unit(spike_times=times, **({} if unit_ids is None else {"id": unit_ids[i]}))
    for a, b in zip(start, stop, strict=True):
        nwb.add_trial(start_time=float(a), stop_time=float(b))
    if behavior is not None:
        times, values = behavior
        module = nwb.create_processing_module("behavior", "behaviour")
        # pynwb refuses to build a series whose data and timestamps differ in
        # length (files from other writers have them): written fitting, then replaced.
        fitting = np.zeros((times.size, *values.shape[1:]))
        module.add(TimeSeries(name="vel", data=fitting, unit="m/s", timestamps=times))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    if behavior is not None:
        with h5py.File(path, "a") as f:
            node = f["processing/behavior/vel/data"]
            attrs = dict(node.attrs)
            del f["processing/behavior/vel/data"]
            f["processing/behavior/vel/data"] = values
            f["processing/behavior/vel/data"].attrs.update(attrs)
    return path


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), err
    return lines[0]


def with_nan(values: np.ndarray, row: int) -> np.ndarray:
    out = values.copy()
    out[row] = np.nan
    return out


# --------------------------------------------------------------------------- from-nwb


TIMES = np.arange(0.0, END, 0.001)  # 1 kHz behaviour
BAD_INPUT: dict[str, tuple[dict[str, Any], tuple[str, ...], str]] = {
    # Whole trials: a NaN start was binned as an all-zero trial, and a NaN
    # stop in row 0 ended in a traceback (int(NaN)).
    "nan start, whole trials": (
        {"start": with_nan(START, 4)},
        WHOLE,
        "1 of 30 trials have a NaN start_time or stop_time (first: trial row 4)",
    ),
    "nan stop in row 0, whole trials": (
        {"stop": with_nan(STOP, 0)},
        WHOLE,
        "1 of 30 trials have a NaN start_time or stop_time (first: trial row 0)",
    ),
    # A window: NaN compares false, so the window passed as inside the trial.
    "nan stop, window": (
        {"stop": with_nan(STOP, 7)},
        ("--bin-ms", "20", "--align", "start_time", "--window", "100", "300"),
        "1 of 30 trials have a NaN start_time or stop_time (first: trial row 7)",
    ),
    # Both were "--bin-ms 20 does not divide the trials' length": a stop
    # before its start, and trials that all last no time.
    "a trial that ends before it starts, whole trials": (
        {"stop": np.where(np.arange(N_TRIALS) == 3, START - 0.5, STOP)},
        WHOLE,
        "1 of 30 trials end before they start or last no time (first: trial row 3, "
        "start_time 4.000000 s, stop_time 3.500000 s)",
    ),
    "trials that last no time, whole trials": (
        {"stop": START},
        WHOLE,
        "30 of 30 trials end before they start or last no time (first: trial row 0,",
    ),
    # Was: "--heldout 0 must lie between 0 and -1".
    "no spikes in any window": (
        {"unit_spikes": [np.array([0.1, 0.2])] * N_UNITS},
        WHOLE,
        "no unit has a spike in any trial window",
    ),
    # 2n samples with n timestamps were folded into n samples x 2 columns.
    "behaviour twice as long as its timestamps": (
        {"behavior": (TIMES, np.ones(2 * TIMES.size))},
        (*WHOLE, "--behavior", "behavior/vel"),
        f"data has {2 * TIMES.size} samples but timestamps has {TIMES.size}",
    ),
    "behaviour shorter than its timestamps": (
        {"behavior": (TIMES, np.ones((TIMES.size - 5, 2)))},
        (*WHOLE, "--behavior", "behavior/vel"),
        f"data has {TIMES.size - 5} samples but timestamps has {TIMES.size}",
    ),
    # NaN passed the strictly-increasing check.
    "behaviour timestamps with NaN": (
        {"behavior": (with_nan(TIMES, 5000), np.ones((TIMES.size, 2)))},
        (*WHOLE, "--behavior", "behavior/vel"),
        "timestamps contain NaN",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_recordings_are_one_line_exit_2_and_write_nothing(case, tmp_path, capsys) -> None:
    kwargs, flags, message = BAD_INPUT[case]
    nwb = write_nwb(tmp_path / "in.nwb", **kwargs)
    out = tmp_path / "out" / "data.h5"
    out.parent.mkdir()
    code, _, err = run(capsys, "data", "from-nwb", nwb, "--out", out, *flags)
    assert code == 2
    assert message in one_error_line(err)
    assert list(out.parent.iterdir()) == []


def test_trials_with_nan_times_are_dropped_on_request(tmp_path, capsys) -> None:
    nwb = write_nwb(tmp_path / "in.nwb", start=with_nan(START, 4), stop=with_nan(STOP, 9))
    out = tmp_path / "data.h5"
    code, stdout, err = run(
        capsys, "data", "from-nwb", nwb, "--out", out, *WHOLE, "--drop-bad-trials"
    )
    assert code == 0, err
    assert "dropped 2 trials that have a NaN start_time or stop_time" in stdout
    data = load_lfads_h5(out)
    kept = np.concatenate([s.trial_idx for s in data.splits().values()])
    assert sorted(kept.tolist()) == [r for r in range(N_TRIALS) if r not in (4, 9)]
    assert data.encod_seq_len == 25  # the others' 500 ms length


def test_window_alone_is_placed_around_start_time(tmp_path, capsys) -> None:
    # README: "--window alone aligns to start_time".
    nwb = write_nwb(tmp_path / "in.nwb")
    out = tmp_path / "data.h5"
    code, _, err = run(
        capsys, "data", "from-nwb", nwb, "--out", out, "--bin-ms", "20", "--window", "100", "300"
    )
    assert code == 0, err
    data = load_lfads_h5(out)
    assert data.encod_seq_len == 10
    units = spikes()
    for name, split in data.splits().items():
        assert split.trial_idx is not None and split.recon_data is not None
        starts = START[split.trial_idx] + 0.100
        np.testing.assert_allclose(data.attrs[f"nwb_{name}_start"], starts)
        for i, s in enumerate(starts):
            edges = s + 0.020 * np.arange(11)
            want = np.stack([np.histogram(t, bins=edges)[0] for t in units], axis=1)
            np.testing.assert_array_equal(split.recon_data[i], want)


# --------------------------------------------------------------------------- to-nwb


def fake_outputs(data_h5: Path, dest: Path, *, strip: tuple[str, ...] = ()) -> Path:
    """An lfads_output file for `data_h5`: its data plus rates, without training.

    `strip` removes provenance keys, as in files made before they were kept."""
    dest.write_bytes(data_h5.read_bytes())
    with h5py.File(dest, "a") as f:
        for name in ("train", "valid"):
            f[f"{name}_output_params"] = f[f"{name}_recon_data"][()].astype(np.float32) + 0.5
        for key in strip:
            if key in f:
                del f[key]
    return dest


@pytest.fixture
def converted(tmp_path, capsys) -> dict[str, Path]:
    nwb = write_nwb(tmp_path / "a.nwb")
    data = tmp_path / "a.h5"
    assert run(capsys, "data", "from-nwb", nwb, "--out", data, *WHOLE)[0] == 0
    return {"nwb": nwb, "data": data, "outputs": fake_outputs(data, tmp_path / "a_out.h5")}


def test_to_nwb_refuses_another_recording_with_enough_rows(converted, tmp_path, capsys) -> None:
    later = START + 0.25  # another session: as many units and trials, other times
    other = write_nwb(tmp_path / "b.nwb", identifier="session-b", start=later, stop=later + 0.5)
    result = tmp_path / "result.nwb"
    code, _, err = run(
        capsys, "data", "to-nwb", converted["outputs"], "--nwb", other, "--out", result
    )
    assert code == 2
    line = one_error_line(err)
    assert "is recording 'session-b'" in line and "converted from 'session-a'" in line
    assert not result.exists() and not list(tmp_path.glob(".*"))
    # The recording it came from is taken.
    args = (converted["outputs"], "--nwb", converted["nwb"], "--out", result)
    assert run(capsys, "data", "to-nwb", *args)[0] == 0


def test_to_nwb_refuses_a_reused_identifier_with_other_trials(converted, tmp_path, capsys) -> None:
    # Identifiers are often a script's constant; the trial times tell sessions apart.
    later = START + 0.25
    other = write_nwb(tmp_path / "b.nwb", start=later, stop=later + 0.5)
    result = tmp_path / "result.nwb"
    code, _, err = run(
        capsys, "data", "to-nwb", converted["outputs"], "--nwb", other, "--out", result
    )
    assert code == 2
    assert "trials' start/stop times differ" in one_error_line(err)
    assert not result.exists()


def test_to_nwb_checks_older_outputs_by_their_windows(converted, tmp_path, capsys) -> None:
    # Outputs made before the identifier was kept: each window must lie in its trial.
    old = fake_outputs(
        converted["data"],
        tmp_path / "old_out.h5",
        strip=("nwb_identifier", "nwb_trials_sha256", "nwb_unit_id"),
    )
    later = START + 0.25
    other = write_nwb(tmp_path / "b.nwb", identifier="session-b", start=later, stop=later + 0.5)
    result = tmp_path / "result.nwb"
    code, _, err = run(capsys, "data", "to-nwb", old, "--nwb", other, "--out", result)
    assert code == 2
    assert "but the outputs' window for it starts at" in one_error_line(err)
    assert not result.exists()
    assert run(capsys, "data", "to-nwb", old, "--nwb", converted["nwb"], "--out", result)[0] == 0


# --------------------------------------------------------------------------- --units-from


def test_units_from_refuses_units_with_other_ids(converted, tmp_path, capsys) -> None:
    # Same number of units, sorted into another order: channel k would be another neuron.
    other = write_nwb(tmp_path / "b.nwb", identifier="session-b", unit_ids=[3, 2, 1, 0])
    out = tmp_path / "b.h5"
    code, _, err = run(
        capsys,
        "data", "from-nwb", other, "--out", out, *WHOLE, "--units-from", converted["data"],
    )  # fmt: skip
    assert code == 2
    line = one_error_line(err)
    assert "units table row 0 is unit id 3, but channel 0 of --units-from" in line
    assert "is unit id 0" in line
    assert not out.exists()


def test_units_from_takes_a_new_session_of_the_same_units(converted, tmp_path, capsys) -> None:
    # README workflow 2: another file (another identifier, other trials), same unit ids.
    later = START + 0.25
    new = write_nwb(tmp_path / "b.nwb", identifier="session-b", start=later, stop=later + 0.5)
    out = tmp_path / "b.h5"
    code, _, err = run(
        capsys, "data", "from-nwb", new, "--out", out, *WHOLE, "--units-from", converted["data"]
    )
    assert code == 0, err
    data = load_lfads_h5(out)
    np.testing.assert_array_equal(
        data.attrs["nwb_unit_index"], load_lfads_h5(converted["data"]).attrs["nwb_unit_index"]
    )
    # ... and its results go back into that new session, not the training one.
    outputs = fake_outputs(out, tmp_path / "b_out.h5")
    result = tmp_path / "b_result.nwb"
    assert run(capsys, "data", "to-nwb", outputs, "--nwb", new, "--out", result)[0] == 0
    code, _, err = run(
        capsys, "data", "to-nwb", outputs, "--nwb", converted["nwb"], "--out", tmp_path / "x.nwb"
    )
    assert code == 2 and "converted from 'session-b'" in one_error_line(err)


# --------------------------------------------------------------------------- data check


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("nwb_unit_index", "nwb_unit_index: unit rows must be >= 0, got -1"),
        ("train_inds", "train_inds: trial indices must be >= 0, got -1"),
    ],
)
def test_data_check_refuses_negative_rows(converted, key, message, capsys) -> None:
    # A negative row would pick a unit or trial from the end of the table in to-nwb.
    with h5py.File(converted["data"], "a") as f:
        rows = f[key][()]
        rows[0] = -1
        f[key][...] = rows
    code, _, err = run(capsys, "data", "check", converted["data"])
    assert code == 2
    assert message in one_error_line(err)
