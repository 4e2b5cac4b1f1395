"""A trainer whose own machine or storage fails it, in process: a real
coordinator on loopback, the real worker training a tiny model on CPU.

A segment is marked failed for good only for what every worker would hit
the same way (its run's objects are damaged, its training diverges). A
storage error of this worker, a damaged copy in its own cache folder or a
device its machine lacks must cost the search nothing: the lease goes back
to another worker, or the copy is fetched again, or the trainer refuses to
start.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from run_helpers import one_line_error, serve_staged, stage_tiny_search, until

from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.recovery import read_state
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.search.staging import load_run
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import create_server
from autolfads.signals import StopEvent
from autolfads.storage import DataCache, FaultyStore, LocalStore
from autolfads.storage.base import sha256_file
from autolfads.storage.errors import StorageError
from autolfads.trainer.evaluation.finalize import finalize_run
from autolfads.trainer.worker import EXIT_TERMINATED, Worker

pytestmark = pytest.mark.slow  # trains a tiny model
RUN = "faults"


def finished_without_failures(store: LocalStore, generations: int) -> None:
    state = read_state(store, RUN)
    assert state is not None and state.status == "finished"
    for member, entries in state.history.items():
        assert [h.generation for h in entries] == list(range(generations)), member
        assert all(math.isfinite(h.metric) for h in entries), (member, entries)


def test_a_storage_error_reading_a_start_point_hands_the_lease_back(tmp_path: Path) -> None:
    """A 503 while reading a start checkpoint used to fail that segment for
    good (metric NaN, no checkpoint): the member's line ended there."""
    store = stage_tiny_search(tmp_path, RUN, population=2, max_generations=2)
    flaky = FaultyStore(store)
    flaky.inject("get", r"checkpoint\.pt$", fail="503 Slow Down")  # once
    server, port = serve_staged(store, RUN)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as client:
            first = Worker(client, flaky, "w1", cache_dir=tmp_path / "cache")
            # Generation 0 starts fresh; generation 1 reads a checkpoint.
            with pytest.raises(StorageError, match="503 Slow Down"):
                first.run()
            # Handed back, not expired: queued again at once for the next worker.
            second = Worker(client, store, "w2", cache_dir=tmp_path / "cache")
            assert second.run() == 0
    finally:
        server.stop(0)
    finished_without_failures(store, generations=2)


def test_a_storage_error_storing_a_checkpoint_hands_the_lease_back(tmp_path: Path) -> None:
    """A 503 while storing a finished checkpoint ended the worker with its
    lease still active: the unit waited out the lease timeout, and the
    expiry counted towards the 3 that fail its member for good."""
    store = stage_tiny_search(tmp_path, RUN, population=2, max_generations=1)
    flaky = FaultyStore(store)
    flaky.inject("put", r"checkpoint\.pt$", fail="503 Slow Down")  # once
    server, port = serve_staged(store, RUN)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as client:
            first = Worker(client, flaky, "w1", cache_dir=tmp_path / "cache")
            with pytest.raises(StorageError, match="503 Slow Down"):
                first.run()
            state = read_state(store, RUN)
            assert state is not None
            assert [x.status for x in state.leases.values() if x.status == "active"] == []
            assert any(e["kind"] == "lease_abandoned" for e in state.events), state.events
            # Handed back, not expired: queued again at once for the next worker.
            second = Worker(client, store, "w2", cache_dir=tmp_path / "cache")
            assert second.run() == 0
    finally:
        server.stop(0)
    finished_without_failures(store, generations=1)


class HeldAfterFirstRound:
    """The worker's link, passed through, except that every lease request
    after the first waits for `go` (the worker asks while publishing)."""

    def __init__(self, client: CoordinatorClient) -> None:
        self.client, self.go, self.asked = client, threading.Event(), 0

    def request_work(self, *args: Any, **kwargs: Any) -> Any:
        self.asked += 1
        if self.asked > 1:
            self.go.wait()
        return self.client.request_work(*args, **kwargs)

    def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.heartbeat(*args, **kwargs)

    def report(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.report(*args, **kwargs)


def test_a_segment_whose_lease_expired_while_it_waited_to_upload_is_not_stored(
    tmp_path: Path,
) -> None:
    """Two finished segments wait on one held upload while their leases
    expire and another worker trains and reports both. The second used to
    be uploaded all the same, over the checkpoint and metrics.json the
    coordinator had recorded from the new owner (on a GPU, different bytes:
    the next generation's start failed its checksum and fell back). The
    upload already under way is the known race (docs/protocol.md)."""
    store = stage_tiny_search(tmp_path, RUN, population=2, max_generations=1)
    cfg, key, sha = load_run(store, RUN)
    clock = ManualClock()
    service = CoordinatorService.open_search(
        cfg, store, key, sha, clock=clock, lease_timeout_s=600.0
    )
    server, port = create_server("127.0.0.1:0", service)
    uploads = FaultyStore(store)
    held = threading.Event()
    first_upload = uploads.inject("put", r"checkpoint\.pt$", hold=held)
    codes: list[int] = []
    with CoordinatorClient(f"127.0.0.1:{port}") as client:
        link = HeldAfterFirstRound(client)
        first = Worker(link, uploads, "w1", cache_dir=tmp_path / "c1", max_leases=2)
        thread = threading.Thread(target=lambda: codes.append(first.run()))
        thread.start()
        try:
            until(lambda: first_upload.hits == 1, "w1's first upload held")
            clock.advance(601.0)  # both of w1's leases expire
            second = Worker(client, store, "w2", cache_dir=tmp_path / "c2")
            assert second.run() == 0
        finally:
            link.go.set()
            held.set()
            thread.join(120)
            server.stop(0)
    assert codes == [0]
    state = read_state(store, RUN)
    assert state is not None and state.status == "finished"
    # w1 trained both segments; the one whose upload had not begun is not stored.
    stored = uploads.calls("put", r"/members/")
    assert len(stored) == 2 and len({key.rsplit("/", 1)[0] for key in stored}) == 1, stored


class Heartbeats:
    """The worker's link, passed through, noting the heartbeats the worker's
    own thread sends: (lease id, epochs done); `stop_at` (epochs, stop):
    the worker is stopped as it sends a heartbeat with that many epochs."""

    def __init__(
        self,
        client: CoordinatorClient,
        thread: threading.Thread,
        stop_at: tuple[int, StopEvent] | None = None,
    ) -> None:
        self.client, self.thread, self.stop_at = client, thread, stop_at
        self.sent: list[tuple[str, int]] = []

    def request_work(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.request_work(*args, **kwargs)

    def heartbeat(self, lease_id: str, worker_id: str, epochs_done: int = 0, **kwargs: Any) -> Any:
        if threading.current_thread() is self.thread:
            self.sent.append((lease_id, epochs_done))
            if self.stop_at and epochs_done == self.stop_at[0]:
                self.stop_at[1].set()  # SIGTERM, once a lease has trained that many epochs
        return self.client.heartbeat(lease_id, worker_id, epochs_done, **kwargs)

    def report(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.report(*args, **kwargs)


def test_leases_trained_together_are_heartbeated_between_epochs_not_rounds(
    tmp_path: Path,
) -> None:
    """A trainer of N leases heartbeated only after one epoch of each: with
    --max-leases 4 and epochs a third of the lease timeout, every lease
    expired mid-round, again and again, until its member failed; the docs
    ask only that the timeout exceed one epoch. Here an interval (1 ms) far
    shorter than any epoch: a heartbeat is due after every epoch."""
    store = stage_tiny_search(tmp_path, RUN, population=2, max_generations=1)
    cfg, key, sha = load_run(store, RUN)
    # A manual clock: nothing expires, however short the timeout.
    service = CoordinatorService.open_search(
        cfg, store, key, sha, clock=ManualClock(), lease_timeout_s=0.004
    )
    server, port = create_server("127.0.0.1:0", service)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as client:
            link = Heartbeats(client, threading.current_thread())
            worker = Worker(link, store, "w1", cache_dir=tmp_path / "cache", max_leases=2)
            assert worker.run() == 0
    finally:
        server.stop(0)
    finished_without_failures(store, generations=1)
    first, second = dict.fromkeys(lease for lease, _ in link.sent)  # in the order first sent
    # The second lease is heartbeated between the first one's epoch and its own.
    assert (first, 1) in link.sent and link.sent[link.sent.index((first, 1)) + 1] == (second, 0)


def test_a_stop_between_two_leases_epochs_trains_no_further_epoch(tmp_path: Path) -> None:
    """A stop (SIGTERM) after one lease's epoch still waited for an epoch of
    every other lease of the round before handing them back: with N leases,
    up to N epochs against the pod's grace period."""
    store = stage_tiny_search(tmp_path, RUN, population=2, max_generations=1)
    cfg, key, sha = load_run(store, RUN)
    service = CoordinatorService.open_search(
        cfg, store, key, sha, clock=ManualClock(), lease_timeout_s=0.004
    )
    server, port = create_server("127.0.0.1:0", service)
    stop = StopEvent()
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as client:
            link = Heartbeats(client, threading.current_thread(), stop_at=(1, stop))
            worker = Worker(
                link, store, "w1", cache_dir=tmp_path / "cache", max_leases=2, stop=stop
            )
            assert worker.run() == EXIT_TERMINATED
    finally:
        server.stop(0)
    first, second = dict.fromkeys(lease for lease, _ in link.sent)
    assert (first, 1) in link.sent and (second, 1) not in link.sent, link.sent
    state = read_state(store, RUN)
    assert state is not None
    assert sorted(x.status for x in state.leases.values()) == ["abandoned", "abandoned"]


def test_a_damaged_copy_in_the_cache_folder_is_fetched_again(tmp_path: Path) -> None:
    store = stage_tiny_search(tmp_path, RUN, population=2, max_generations=1)
    _, key, sha = load_run(store, RUN)
    cached = DataCache(store, tmp_path / "cache").path_for(key, sha)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not an HDF5 file: the disk went bad after it was verified")
    server, port = serve_staged(store, RUN)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as client:
            worker = Worker(client, store, "w1", cache_dir=tmp_path / "cache")
            assert worker.run() == 0
    finally:
        server.stop(0)
    finished_without_failures(store, generations=1)
    assert sha256_file(cached)[0] == sha


def test_finalize_fetches_a_damaged_cached_copy_again(tmp_path: Path) -> None:
    """finalize read the cache folder's copy as it found it: one damaged since
    it was verified failed the run's final step as bad data."""
    store = stage_tiny_search(tmp_path, RUN, population=2, max_generations=1)
    _, key, sha = load_run(store, RUN)
    server, port = serve_staged(store, RUN)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as client:
            assert Worker(client, store, "w1", cache_dir=tmp_path / "cache").run() == 0
    finally:
        server.stop(0)
    cached = DataCache(store, tmp_path / "cache").path_for(key, sha)
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated on disk
    metrics = finalize_run(store, RUN, device="cpu", num_samples=1, cache_dir=tmp_path / "cache")
    assert metrics["run"] == RUN
    assert sha256_file(cached)[0] == sha


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--unavailable-wait", "nan"], ["--unavailable-wait", "finite"]),
        (["--unavailable-wait", "-1"], ["--unavailable-wait", ">= 0"]),
        pytest.param(
            ["--device", "cuda", "--unavailable-wait", "0"],
            ["'cuda'", "no CUDA GPU"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_a_trainer_that_cannot_run_here_says_so_before_asking_for_work(
    tmp_path: Path, flags: list[str], needles: list[str]
) -> None:
    """Refused in one line before any call: nothing listens at the
    coordinator's address, and a trainer that got as far as asking would
    retry it for the whole wait instead."""
    (tmp_path / "runs").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "autolfads",
            "trainer",
            "--storage",
            str(tmp_path / "runs"),
            "--coordinator",
            f"127.0.0.1:{closed_port()}",
            "--threads",
            "1",
            *flags,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    one_line_error(proc, *needles)
