"""Staging a run (`autolfads stage`, `autolfads coordinator --config`):
what a refused or interrupted staging leaves in the store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from coordinator_helpers import tiny_config

from autolfads.coordinator.search.staging import load_run, stage_run
from autolfads.errors import DataError
from autolfads.storage import LocalStore, RunLayout
from autolfads.storage.base import sha256_file
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


def test_staging_other_data_after_an_interrupted_stage_replaces_its_leftovers(
    tmp_path: Path,
) -> None:
    """A `stage` interrupted after the upload (before config.yaml) left its
    data and baseline.json; staging another file then gave a run with two data
    files (refused by coordinator and finalize) and the first file's baseline."""
    store = LocalStore(tmp_path / "store")
    layout = RunLayout("search")
    first = tiny_data(tmp_path / "first.h5", seed=0)
    stage_run(store, tiny_config(), first)
    store.delete(layout.config())  # as if interrupted before the config
    first_baseline = store.get_json(layout.baseline())
    second = tiny_data(tmp_path / "second.h5", seed=1)
    stage_run(store, tiny_config(), second)
    _, key, sha = load_run(store, "search")
    assert [o.key for o in store.list("search/data/")] == [key]
    assert sha == sha256_file(second)[0]
    assert store.get_json(layout.baseline()) != first_baseline


def test_restaging_the_same_data_after_an_interrupted_stage_keeps_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    layout = RunLayout("search")
    data = tiny_data(tmp_path / "data.h5")
    stage_run(store, tiny_config(), data)
    store.delete(layout.config())
    before = store.stat(layout.baseline())
    stage_run(store, tiny_config(), data)
    assert store.stat(layout.baseline()) == before
    assert load_run(store, "search")[2] == sha256_file(data)[0]


def test_restaging_the_same_bytes_under_another_file_name_keeps_one_data_file(
    tmp_path: Path,
) -> None:
    """data.hdf5, a copy of data.h5, was uploaded again under a key ending in
    .hdf5: the run then held two data files and coordinator and finalize
    refused it ("several data files")."""
    store = LocalStore(tmp_path / "store")
    data = tiny_data(tmp_path / "data.h5")
    stage_run(store, tiny_config(), data)
    copy = tmp_path / "data.hdf5"
    shutil.copy(data, copy)
    stage_run(store, tiny_config(), copy)
    _, key, sha = load_run(store, "search")
    assert [o.key for o in store.list("search/data/")] == [key]
    assert key.endswith(".h5") and sha == sha256_file(data)[0]


def test_a_local_data_file_other_than_the_staged_one_is_named(tmp_path: Path) -> None:
    """`coordinator --config` whose data.path holds other data was told the
    run had no data and to stage it, which `stage` then refused."""
    store = LocalStore(tmp_path / "store")
    stage_run(store, tiny_config(), tiny_data(tmp_path / "data.h5"))
    other = tiny_data(tmp_path / "other.h5", seed=1)
    cfg = tiny_config().model_copy(
        update={"data": tiny_config().data.model_copy(update={"path": str(other)})}
    )
    with pytest.raises(DataError, match="other.h5 is not the data run 'search' was staged with"):
        load_run(store, "search", cfg)
