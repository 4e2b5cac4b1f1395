"""Synthetic ground truth through NWB: `data synth` spikes written as NWB spike
times, converted back by `data from-nwb`, give the very same tensors."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from autolfads.cli import main
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import load_lfads_h5

pytest.importorskip("pynwb")

BIN_S = 0.010  # the chaotic RNN's dt
TRIAL_EVERY_S = 1.0
SIZES = {
    "--n-conditions": 8,
    "--n-trials": 5,
    "--n-neurons": 12,
    "--n-heldout": 3,
    "--n-bins": 20,
    "--n-fp-bins": 5,
}


def write_synth_nwb(data: LfadsData, path: Path, seed: int = 0) -> None:
    """Each count c in bin k of trial i becomes c spike times inside that bin;
    trial i lasts the observed bins and starts at i seconds."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    rng = np.random.default_rng(seed)
    splits = {"train": data.train, "valid": data.valid}
    n_trials = sum(s.n_trials for s in splits.values())
    recon = np.zeros((n_trials, data.recon_seq_len, data.recon_data_dim))
    behavior = np.zeros((n_trials, data.encod_seq_len, data.behavior_dim))
    split_of, cond_of = np.empty(n_trials, dtype=object), np.zeros(n_trials, int)
    for name, split in splits.items():
        recon[split.trial_idx] = split.recon_data
        behavior[split.trial_idx] = split.behavior
        split_of[split.trial_idx] = "val" if name == "valid" else "train"
        cond_of[split.trial_idx] = split.cond_idx
    starts = 1.0 + TRIAL_EVERY_S * np.arange(n_trials)
    nwb = NWBFile("chaotic RNN", "synth", datetime(2024, 1, 1, tzinfo=timezone.utc))
    nwb.add_unit_column("heldout", "held out of the encoder")
    for unit in range(data.recon_data_dim):
        trial, k = np.nonzero(recon[:, :, unit])
        reps = recon[trial, k, unit].astype(int)
        base = np.repeat(starts[trial] + k * BIN_S, reps)
        times = np.sort(base + BIN_S * rng.uniform(0.1, 0.9, base.size))
        # Observed until a second after the last trial: its forward bins are recorded.
        observed = [[0.0, starts[-1] + TRIAL_EVERY_S]]
        nwb.add_unit(spike_times=times, obs_intervals=observed, heldout=unit >= data.encod_data_dim)
    nwb.add_trial_column("split", "train / val")
    nwb.add_trial_column("condition", "initial-state condition")
    for i, start in enumerate(starts):
        nwb.add_trial(
            start_time=start,
            stop_time=start + data.encod_seq_len * BIN_S,
            split=split_of[i],
            condition=int(cond_of[i]),
        )
    # One behaviour sample at each bin centre (trials far apart: still ascending).
    centres = (starts[:, None] + BIN_S * (np.arange(data.encod_seq_len) + 0.5)).reshape(-1)
    module = nwb.create_processing_module("behavior", "synthetic velocity")
    module.add(
        TimeSeries(
            name="vel",
            data=behavior.reshape(-1, data.behavior_dim),
            unit="a.u.",
            timestamps=centres,
        )
    )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def test_chaotic_rnn_through_nwb_gives_the_synth_tensors(tmp_path: Path) -> None:
    synth = tmp_path / "synth.h5"
    flags = [str(x) for pair in SIZES.items() for x in pair]
    assert main(["data", "synth", "chaotic-rnn", "--out", str(synth), "--seed", "2", *flags]) == 0
    truth = load_lfads_h5(synth)
    nwb = tmp_path / "synth.nwb"
    write_synth_nwb(truth, nwb)
    out = tmp_path / "back.h5"
    code = main(
        ["data", "from-nwb", str(nwb), "--out", str(out), "--bin-ms", "10",
         "--align", "start_time", "--window", "0", str(SIZES["--n-bins"] * 10),
         "--fp-ms", str(SIZES["--n-fp-bins"] * 10), "--heldout-column", "heldout",
         "--split-column", "split", "--condition-columns", "condition",
         "--behavior", "behavior/vel"]
    )  # fmt: skip
    assert code == 0
    back = load_lfads_h5(out)
    assert back.attrs["nwb_unit_index"].tolist() == list(range(truth.recon_data_dim))
    for name in ("train", "valid"):
        want, got = getattr(truth, name), getattr(back, name)
        np.testing.assert_array_equal(got.trial_idx, want.trial_idx)
        np.testing.assert_array_equal(got.encod_data, want.encod_data)
        np.testing.assert_array_equal(got.recon_data, want.recon_data)
        np.testing.assert_array_equal(got.cond_idx, want.cond_idx)
        np.testing.assert_allclose(got.behavior, want.behavior, rtol=1e-6, atol=1e-6)
