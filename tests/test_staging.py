"""Staging a run (`autolfads stage`, `autolfads coordinator --config`):
what a refused or interrupted staging leaves in the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from coordinator_helpers import tiny_config

from autolfads.coordinator.search.staging import load_run, stage_run
from autolfads.errors import DataError
from autolfads.storage import LocalStore, RunLayout
from autolfads.trainer.data.lfads_h5 import write_lfads_h5
from autolfads.trainer.data.synth import make_chaotic_rnn


def tiny_data(path: Path, seed: int = 0) -> Path:
    sizes = {"n_conditions": 4, "n_replications": 4, "n_neurons": 8, "n_heldout": 2}
    write_lfads_h5(make_chaotic_rnn(seed=seed, n_bins=10, n_fp_bins=2, **sizes), path)
    return path


def test_a_config_refused_for_missing_data_is_not_kept(tmp_path: Path) -> None:
    """`coordinator --config` on a run without data stored the config first,
    so the run then refused any edited config at `stage` ("already holds a
    different config") although it had never been staged."""
    store = LocalStore(tmp_path / "store")
    with pytest.raises(DataError, match="has no data"):
        load_run(store, "search", tiny_config())
    assert not store.exists(RunLayout("search").config())
    edited = tiny_config(population=2)
    stage_run(store, edited, tiny_data(tmp_path / "data.h5"))
    assert load_run(store, "search")[0].pbt.population == 2
