"""Test helpers: tiny PBT configs and a deterministic stand-in for training.

`fake_train` plays a trainer without torch: it loads the start checkpoint from
the real store (verifying its checksum, as the worker does), derives the new
checkpoint bytes and metric from (start bytes, hyperparameters, epochs) only,
publishes the checkpoint and returns the report. So results depend on what
was trained, never on which worker or in which order: exactly the property
the coordinator's determinism relies on.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from autolfads.config import RunConfig, parse_config
from autolfads.coordinator.search.messages import Lease, SegmentReport
from autolfads.coordinator.search.recovery import read_state
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.search.state import SearchState, StartPoint
from autolfads.storage import ChecksumMismatch, LocalStore, Store


def tiny_config(**pbt: object) -> RunConfig:
    settings = {
        "population": 4,
        "burn_in_epochs": 2,
        "generation_epochs": 1,
        "max_generations": 3,
        "seed": 7,
        **pbt,
    }
    return parse_config(
        {
            "name": "search",
            "data": {"path": "unused.h5"},
            "training": {"l2_increase_epochs": 1, "kl_increase_epochs": 1},
            "pbt": settings,
        }
    )


# A data file the coordinator only names (these tests never train on it).
FAKE_DATA_SHA256 = "ab" * 32
FAKE_DATA_KEY = f"search/data/{FAKE_DATA_SHA256}.h5"


def open_tiny_search(
    store: Store, cfg: RunConfig | None = None, **kwargs: Any
) -> CoordinatorService:
    """A new search of `tiny_config()` (or `cfg`) over the fake data file."""
    return CoordinatorService.open_search(
        cfg or tiny_config(), store, FAKE_DATA_KEY, FAKE_DATA_SHA256, **kwargs
    )


def saved_state(store: Store, run: str, history: bool = True) -> SearchState:
    """The run's state as a restarted coordinator would rebuild it; the test
    knows it was written."""
    state = read_state(store, run, history=history)
    assert state is not None, f"{run}: no coordinator state in {store.url}"
    return state


def _load(store: Store, point: StartPoint) -> bytes:
    if point.fresh:
        return f"fresh-{point.seed}".encode()
    return store.get_bytes(point.checkpoint, expected_sha256=point.sha256)


def fake_train(
    store: Store, grant: Lease, worker_id: str, metric: float | None = None
) -> SegmentReport:
    corrupt: list[StartPoint] = []
    start = b""
    for point in (grant.start, *grant.fallbacks):
        try:
            start = _load(store, point)
            break
        except ChecksumMismatch:
            corrupt.append(point)
    hparams = json.dumps(grant.hparams, sort_keys=True).encode()
    blob = hashlib.sha256(start + hparams + bytes([grant.epochs])).digest() * 4
    if metric is None:
        # Lower lr_init and a "lucky" checkpoint hash give a lower NLL.
        metric = 1.0 + blob[0] / 2550.0 + grant.hparams["lr_init"]
    info = store.put_bytes(grant.checkpoint_key, blob)
    assert info.sha256 is not None  # a store always hashes what it writes
    return SegmentReport(
        lease_id=grant.lease_id,
        worker_id=worker_id,
        member=grant.member,
        generation=grant.generation,
        outcome="succeeded",
        hparams=dict(grant.hparams),
        epochs=tuple((e, {"valid_recon_smth": metric}) for e in range(grant.epochs)),
        fitness=metric,
        checkpoint_key=grant.checkpoint_key,
        checkpoint_sha256=info.sha256,
        checkpoint_size=len(blob),
        corrupt=tuple(corrupt),
    )


def stage_tiny_run(root: Path) -> LocalStore:
    """A local store under `root` holding the run "search" of `tiny_config()`
    over a small synthetic data file, staged for `autolfads coordinator`."""
    from autolfads.coordinator.search.staging import stage_run
    from autolfads.trainer.data.lfads_h5 import write_lfads_h5
    from autolfads.trainer.data.synth import make_chaotic_rnn

    store = LocalStore(root / "store")
    data = root / "data.h5"
    write_lfads_h5(
        make_chaotic_rnn(seed=0, n_conditions=4, n_replications=4, n_neurons=8, n_heldout=2,
                         n_bins=10, n_fp_bins=2),
        data,
    )  # fmt: skip
    stage_run(store, tiny_config(), data)
    return store


def run_threads(threads: list[threading.Thread], timeout_s: float) -> None:
    """Start `threads` and wait for them all; fail if one is still running."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    assert not any(thread.is_alive() for thread in threads)
