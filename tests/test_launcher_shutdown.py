"""Stopping a search (`autolfads run`'s shutdown, and the Ray coordinator
actor's): storage failing on the way still leaves no trainer training and no
coordinator serving, and the error is not swallowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from coordinator_helpers import open_tiny_search

from autolfads.coordinator.search.errors import CoordinatorUnavailable
from autolfads.coordinator.security.exposure import ServerSecurity
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.launcher import serve, shut_down
from autolfads.storage import LocalStore, StorageError
from autolfads.storage.faults import FaultyStore


def test_storage_failing_at_shutdown_still_stops_the_trainers_and_the_server(tmp_path: Path):
    store = FaultyStore(LocalStore(tmp_path / "store"))
    service = open_tiny_search(store)
    serving = serve(service, "127.0.0.1:0", ServerSecurity())
    target = f"127.0.0.1:{serving.port}"
    with CoordinatorClient(target, timeout_s=5, unavailable_wait_s=0) as client:
        assert client.request_work("w0", 1).action == "train"  # a lease to hand back
        store.inject("put", fail="disk full", times=None)
        stopped: list[str] = []
        with pytest.raises(StorageError, match="disk full"):
            shut_down(service, serving, lambda: stopped.append("trainers"))
        assert stopped == ["trainers"]
        with pytest.raises(CoordinatorUnavailable):  # nobody serves the run any more
            client.status()
