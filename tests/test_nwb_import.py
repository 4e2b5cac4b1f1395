"""`autolfads data from-nwb`: NWB files written with pynwb, converted, and checked
against an independent numpy binning of the same spike times."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from autolfads.cli import main
from autolfads.trainer.data.lfads_h5 import load_lfads_h5

pytest.importorskip("pynwb")

from nwb_fixtures import MazeTruth, make_maze_truth, write_maze_nwb  # noqa: E402

SPLIT_OF = {"train": "train", "valid": "val", "test": "test"}
DEAD_UNIT = 3  # fires only before the first trial (nwb_fixtures)


@pytest.fixture(scope="module")
def maze(tmp_path_factory: pytest.TempPathFactory) -> tuple[MazeTruth, Path]:
    truth = make_maze_truth(n_trials=200, n_units=24, n_heldout=6, seed=0)
    return truth, write_maze_nwb(tmp_path_factory.mktemp("nwb") / "maze.nwb", truth)


def convert(nwb: Path, out: Path, *flags: str, capsys=None) -> tuple[int, str, str]:
    code = main(["data", "from-nwb", str(nwb), "--out", str(out), *flags])
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def histogram_counts(
    truth: MazeTruth, rows, starts, n_bins: int, width: float, units
) -> np.ndarray:
    """(trials, bins, units) by np.histogram on explicit bin edges."""
    out = np.zeros((len(rows), n_bins, len(units)))
    for i, start in enumerate(starts):
        edges = start + width * np.arange(n_bins + 1)
        for j, unit in enumerate(units):
            out[i, :, j] = np.histogram(truth.spike_times[unit], bins=edges)[0]
    return out


def expected_channels(truth: MazeTruth) -> tuple[list[int], list[int]]:
    alive = [u for u in range(len(truth.spike_times)) if u != DEAD_UNIT]
    return [u for u in alive if not truth.heldout[u]], [u for u in alive if truth.heldout[u]]


def test_mc_maze_preset_matches_independent_binning(maze, tmp_path, capsys) -> None:
    truth, nwb = maze
    out = tmp_path / "maze.h5"
    code, stdout, _ = convert(nwb, out, "--preset", "mc_maze", "--bin-ms", "20", capsys=capsys)
    assert code == 0
    data = load_lfads_h5(out)
    heldin, heldout = expected_channels(truth)
    assert data.encod_data_dim == len(heldin) and data.heldout_dim == len(heldout)
    assert (data.encod_seq_len, data.fp_seq_len) == (35, 10)  # 700 ms + 200 ms at 20 ms
    assert data.attrs["nwb_unit_index"].tolist() == heldin + heldout
    for name, split in data.splits().items():
        rows = np.flatnonzero(truth.split == SPLIT_OF[name])
        assert split.trial_idx is not None and split.trial_idx.tolist() == rows.tolist()
        starts = truth.move_onset[rows] - 0.250
        np.testing.assert_allclose(data.attrs[f"nwb_{name}_start"], starts)
        want = histogram_counts(truth, rows, starts, 45, 0.020, heldin + heldout)
        np.testing.assert_array_equal(split.recon_data, want)
        np.testing.assert_array_equal(split.encod_data, want[:, :35, : len(heldin)])
    assert "dropped 1 units without spikes in any window (rows 3)" in stdout
    assert f"{len(heldin)} held-in + {len(heldout)} held-out" in stdout
    assert main(["data", "check", str(out)]) == 0


def test_behaviour_is_lagged_and_averaged_within_bins(maze, tmp_path) -> None:
    truth, nwb = maze
    out = tmp_path / "maze.h5"
    assert convert(nwb, out, "--preset", "mc_maze", "--bin-ms", "20")[0] == 0
    data = load_lfads_h5(out)
    t = np.arange(truth.vel.shape[0]) / truth.vel_rate
    for name in ("train", "valid"):
        split = getattr(data, name)
        for i in (0, split.n_trials - 1):
            start = truth.move_onset[split.trial_idx[i]] - 0.250 + 0.100  # 100 ms lag
            for k in (0, 17, 34):
                inside = (t >= start + 0.020 * k) & (t < start + 0.020 * (k + 1))
                np.testing.assert_allclose(
                    split.behavior[i, k], truth.vel[inside].mean(axis=0), rtol=1e-5, atol=1e-6
                )
    # Without the lag the targets differ: the lag lives in the behaviour.
    unlagged = tmp_path / "unlagged.h5"
    flags = ("--preset", "mc_maze", "--bin-ms", "20", "--behavior-lag-ms", "0")
    assert convert(nwb, unlagged, *flags)[0] == 0
    unlagged_behavior, behavior = load_lfads_h5(unlagged).train.behavior, data.train.behavior
    assert unlagged_behavior is not None and behavior is not None
    assert not np.allclose(unlagged_behavior, behavior)


def test_conditions_and_psth(maze, tmp_path) -> None:
    truth, nwb = maze
    raw, smooth = tmp_path / "raw.h5", tmp_path / "smooth.h5"
    flags = ("--preset", "mc_maze", "--bin-ms", "20")
    assert convert(nwb, raw, *flags, "--psth-kern-sd-ms", "0")[0] == 0
    assert convert(nwb, smooth, *flags)[0] == 0  # the preset's 70 ms kernel
    data = load_lfads_h5(raw)
    combos = sorted(
        {(int(a), int(b)) for a, b in zip(truth.trial_type, truth.trial_version, strict=True)}
    )
    psth = data.attrs["psth"]
    assert psth.shape == (len(combos), 35, data.recon_data_dim)
    labelled = [data.train, data.valid]
    assert data.test is not None
    for split in [*labelled, data.test]:
        assert split.trial_idx is not None and split.cond_idx is not None
        for row, cond in zip(split.trial_idx, split.cond_idx, strict=True):
            assert combos[cond] == (truth.trial_type[row], truth.trial_version[row])
    # Unsmoothed psth = per-condition mean of the observed counts over train + valid.
    train_recon, valid_recon = data.train.recon_data, data.valid.recon_data
    assert train_recon is not None and valid_recon is not None
    counts = np.concatenate([train_recon[:, :35], valid_recon[:, :35]])
    ids = np.concatenate([s.cond_idx for s in labelled])
    for cond in range(len(combos)):
        np.testing.assert_allclose(psth[cond], counts[ids == cond].mean(axis=0), rtol=1e-5)
    # Smoothing keeps the spike count (up to the edges) and removes bin-to-bin noise.
    smoothed = load_lfads_h5(smooth).attrs["psth"]
    assert abs(smoothed.sum() / psth.sum() - 1) < 0.05
    assert np.abs(np.diff(smoothed, axis=1)).mean() < 0.5 * np.abs(np.diff(psth, axis=1)).mean()


def test_five_ms_preset_has_nlb_bin_counts(maze, tmp_path) -> None:
    _, nwb = maze
    out = tmp_path / "maze5.h5"
    assert convert(nwb, out, "--preset", "mc_maze")[0] == 0
    data = load_lfads_h5(out)
    assert (data.encod_seq_len, data.recon_seq_len) == (140, 180)


def test_random_heldout_and_fraction_split_are_seeded(maze, tmp_path) -> None:
    truth, nwb = maze
    flags = ("--align", "move_onset_time", "--window", "-200", "400", "--bin-ms", "10")
    a, b, c = (tmp_path / f"{n}.h5" for n in "abc")
    assert convert(nwb, a, *flags, "--heldout", "5", "--seed", "3")[0] == 0
    assert convert(nwb, b, *flags, "--heldout", "5", "--seed", "3")[0] == 0
    assert convert(nwb, c, *flags, "--heldout", "5", "--seed", "4")[0] == 0
    da, db, dc = (load_lfads_h5(p) for p in (a, b, c))
    n_trials = truth.start.size
    assert (da.train.n_trials, da.valid.n_trials, da.test) == (n_trials - 40, 40, None)
    index = da.attrs["nwb_unit_index"]
    assert da.heldout_dim == 5 and DEAD_UNIT not in index
    heldin = index[: da.encod_data_dim].tolist()
    assert heldin == sorted(heldin) and sorted(index.tolist()) == [
        u for u in range(len(truth.spike_times)) if u != DEAD_UNIT
    ]
    np.testing.assert_array_equal(da.valid.recon_data, db.valid.recon_data)
    assert da.valid.trial_idx is not None and dc.valid.trial_idx is not None
    assert da.valid.trial_idx.tolist() != dc.valid.trial_idx.tolist()


def test_whole_trials_without_alignment(maze, tmp_path) -> None:
    truth, nwb = maze
    out = tmp_path / "whole.h5"
    assert convert(nwb, out, "--bin-ms", "20", "--split-column", "split")[0] == 0
    data = load_lfads_h5(out)
    assert (data.encod_seq_len, data.heldout_dim) == (45, 0)  # 900 ms trials
    rows = data.valid.trial_idx
    heldin, heldout = expected_channels(truth)
    want = histogram_counts(truth, rows, truth.start[rows], 45, 0.020, sorted(heldin + heldout))
    np.testing.assert_array_equal(data.valid.recon_data, want)


# --------------------------------------------------------------------------- bad input

MAZE = ("--preset", "mc_maze", "--bin-ms", "20")


def _bad_files(tmp: Path, truth: MazeTruth) -> dict[str, Path]:
    text = tmp / "notes.nwb"
    text.write_text("not hdf5")
    plain = tmp / "plain.nwb"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    nan_onset = {5: float("nan"), 9: float("nan")}
    return {
        "text": text,
        "plain": plain,
        "no_units": write_maze_nwb(tmp / "nounits.nwb", truth, with_units=False),
        "no_trials": write_maze_nwb(tmp / "notrials.nwb", truth, with_trials=False),
        "nan_onset": write_maze_nwb(tmp / "nan.nwb", truth, onset_override=nan_onset),
        "odd_split": write_maze_nwb(tmp / "odd.nwb", truth, split_override={7: "calibration"}),
        "tags": write_maze_nwb(tmp / "tags.nwb", truth, with_tags=True),
        # One trial 2 ms longer than the others (less than half a bin).
        "uneven": write_maze_nwb(
            tmp / "uneven.nwb",
            replace(truth, stop=truth.stop + (np.arange(truth.stop.size) == 0) * 0.002),
        ),
        # Velocity at 20 Hz: every 50 ms, coarser than 20 ms bins.
        "coarse": write_maze_nwb(
            tmp / "coarse.nwb",
            replace(truth, vel=truth.vel[:: int(truth.vel_rate // 20)], vel_rate=20.0),
        ),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory, maze) -> dict[str, Path]:
    truth, nwb = maze
    return {"maze": nwb, **_bad_files(tmp_path_factory.mktemp("bad"), truth)}


BAD_CASES = {
    "not hdf5": ("text", MAZE, "not an NWB file"),
    "hdf5, not nwb": ("plain", MAZE, "not an NWB file"),
    "no units": ("no_units", MAZE, "no units table"),
    "no trials": ("no_trials", MAZE, "no trials table"),
    "align missing": ("maze", ("--align", "go_cue_time", "--window", "0", "100"), "no column 'go_cue_time'"),
    "align NaN": ("nan_onset", MAZE, "2 of 200 trials have no move_onset_time (NaN)"),
    "window outside trial": ("maze", (*MAZE, "--window", "-500", "400"), "outside the trial"),
    "past recording end": ("maze", (*MAZE, "--fp-ms", "2000"), "past the recording's end"),
    "behaviour short": ("maze", (*MAZE, "--behavior-lag-ms", "1500"), "hand_vel does not cover"),
    "bin does not divide": ("maze", ("--preset", "mc_maze", "--bin-ms", "5", "--window", "-250", "448"), "does not divide the 698 ms window"),
    "preset bin": ("maze", ("--preset", "mc_maze", "--bin-ms", "30"), "--bin-ms 5 or 20"),
    "split values": ("odd_split", MAZE, "values ['calibration']"),
    "behaviour missing": ("maze", (*MAZE, "--behavior", "behavior/eye_pos"), "has no 'eye_pos'"),
    "align without window": ("maze", ("--align", "move_onset_time"), "--align move_onset_time needs --window START_MS END_MS"),
    "fraction and split column": ("maze", (*MAZE, "--valid-fraction", "0.3"), "drop one of them"),
    # Each of these used to end in a traceback (or, for tags, in one condition per trial).
    "ragged column": ("tags", (*MAZE, "--condition-columns", "tags"), "'tags' holds several values per trial"),
    "align on text": ("maze", (*MAZE, "--align", "split"), "--align split: the trials column holds text"),
    "negative seed": ("maze", (*MAZE, "--seed", "-1"), "--seed must be >= 0"),
    "psth sd negative": ("maze", (*MAZE, "--psth-kern-sd-ms", "-5"), "--psth-kern-sd-ms -5.0 must be between 0"),
    "psth sd nan": ("maze", (*MAZE, "--psth-kern-sd-ms", "nan"), "--psth-kern-sd-ms nan must be between 0"),
    "psth sd huge": ("maze", (*MAZE, "--psth-kern-sd-ms", "1e9"), "must be between 0 (no smoothing) and 200"),
    # Used to name a bin size that does divide the trials, or to say the series
    # does not cover any trial.
    "lengths differ": ("uneven", ("--bin-ms", "20", "--split-column", "split"), "trials last 900.000 to 902.000 ms"),
    "behaviour too coarse": ("coarse", MAZE, "hand_vel is sampled every 50 ms, coarser than --bin-ms 20"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_writes_nothing(case, bad, tmp_path, capsys) -> None:
    which, flags, message = BAD_CASES[case]
    out = tmp_path / "out.h5"
    code, stdout, stderr = convert(bad[which], out, *flags, capsys=capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), stderr
    assert message in lines[0]
    if "trials" in message and "NaN" in message:
        assert "--drop-bad-trials" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_the_source_file_is_never_the_output(maze, tmp_path, capsys) -> None:
    _, nwb = maze
    source = tmp_path / "copy.nwb"
    source.write_bytes(nwb.read_bytes())
    code, _, stderr = convert(source, source, *MAZE, "--force", capsys=capsys)
    assert code == 2 and "is the source file" in stderr
    assert source.read_bytes() == nwb.read_bytes()


def test_behaviour_values_include_the_series_offset(maze, tmp_path) -> None:
    # NWB: value = data * conversion + offset.
    truth, plain = maze
    shifted = write_maze_nwb(tmp_path / "offset.nwb", truth, behavior_offset=2.5)
    outs = []
    for nwb in (plain, shifted):
        out = tmp_path / f"{nwb.stem}.h5"
        assert convert(nwb, out, *MAZE)[0] == 0
        behavior = load_lfads_h5(out).train.behavior
        assert behavior is not None
        outs.append(behavior)
    np.testing.assert_allclose(outs[1], outs[0] + 2.5, atol=1e-5)  # stored as float32


def test_behaviour_samples_on_bin_edges_fall_in_the_bin_they_start() -> None:
    # 1 kHz samples whose value is their index; 5 ms bins on the same grid:
    # each bin holds exactly its 5 samples, as spikes on edges do. Float
    # edges (0.1 + 0.005 k) land a hair off the samples' own times.
    from autolfads.trainer.data.nwb_binning import resample_signal

    times = np.arange(20_000) / 1000.0
    starts = np.arange(1, 15) * 1.2345 + 0.1
    starts = np.round(starts, 3)  # on the sample grid
    means, covered = resample_signal(times, np.arange(times.size), starts, 40, 0.005)
    first = np.round(starts * 1000)[:, None] + 5 * np.arange(40)  # each bin's first sample
    assert covered.all()
    np.testing.assert_array_equal(means[:, :, 0], first + 2)


def test_trials_the_split_column_leaves_out_are_not_checked(maze, tmp_path, capsys) -> None:
    # A failed trial (no movement onset) marked "none": not an error, and not
    # counted as dropped.
    truth, _ = maze
    nwb = write_maze_nwb(
        tmp_path / "none.nwb", truth, onset_override={5: float("nan")}, split_override={5: "none"}
    )
    code, stdout, stderr = convert(nwb, tmp_path / "out.h5", *MAZE, capsys=capsys)
    assert code == 0, stderr
    assert "trials that have no move_onset_time" not in stdout
    kept = np.concatenate(
        [s.trial_idx for s in load_lfads_h5(tmp_path / "out.h5").splits().values()]
    )
    assert 5 not in kept


def test_drop_bad_trials_leaves_them_out(bad, tmp_path, capsys) -> None:
    out = tmp_path / "out.h5"
    code, stdout, _ = convert(bad["nan_onset"], out, *MAZE, "--drop-bad-trials", capsys=capsys)
    assert code == 0
    data = load_lfads_h5(out)
    kept = np.concatenate([s.trial_idx for s in data.splits().values()])
    assert kept.size == 198 and 5 not in kept and 9 not in kept
    assert "dropped 2 trials that have no move_onset_time (NaN)" in stdout


def test_without_pynwb_one_line_names_the_extra(bad, tmp_path) -> None:
    # sys.modules[name] = None makes the module unimportable, as if not installed.
    code = (
        "import sys; sys.modules['pynwb'] = None\n"
        "from autolfads.cli import main\n"
        f"sys.exit(main(['data', 'from-nwb', {str(bad['maze'])!r}, '--out', "
        f"{str(tmp_path / 'o.h5')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "autolfads: error: `autolfads data from-nwb` needs the 'nwb' extra (pynwb not "
        "installed): pip install 'autolfads[nwb]'"
    ]


def test_spikes_on_a_millisecond_grid_bin_as_integer_arithmetic_does() -> None:
    # Many recordings store spike and trial times in whole milliseconds: a
    # spike on a bin edge belongs to the bin it starts, though its float time
    # may compute as a hair before that edge.
    from autolfads.trainer.data.nwb_binning import bin_spike_times

    rng = np.random.default_rng(7)
    spike_ms = [np.sort(rng.choice(20_000, size=3000, replace=False)) for _ in range(5)]
    start_ms = rng.integers(0, 19_000, size=60)
    n_bins, bin_ms = 40, 5
    counts = bin_spike_times(
        [t / 1000.0 for t in spike_ms], start_ms / 1000.0, n_bins, bin_ms / 1000.0
    )
    expected = np.zeros_like(counts)
    for unit, times in enumerate(spike_ms):
        for trial, s in enumerate(start_ms):
            inside = times[(times >= s) & (times < s + n_bins * bin_ms)]
            np.add.at(expected[trial, :, unit], (inside - s) // bin_ms, 1)
    assert np.array_equal(counts, expected)
