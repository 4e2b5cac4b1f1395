"""Changes over real gRPC are answered only once written: the servicer runs
on the server's event loop and awaits the group commit (`CommitBridge`)
instead of blocking a thread, so these check that no answer overtakes its
write, that concurrent callers share writes and are all answered, that a
lost write reaches the caller and is retried to count once, and that a
stop in the middle of a write neither loses the change nor counts it
twice."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from coordinator_helpers import fake_train, open_tiny_search, saved_state, tiny_config

from autolfads.coordinator.search.errors import CoordinatorUnavailable
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.commit_bridge import CommitBridge
from autolfads.coordinator.wire.server import create_server
from autolfads.storage import FaultyStore, LocalStore, RunLayout
from autolfads.storage.errors import StorageError

JOURNAL = f"^{re.escape(RunLayout('search').journal_prefix())}"


@pytest.fixture
def slow_store(tmp_path):
    """Journal writes take a while, so concurrent changes pile up behind one."""
    store = FaultyStore(LocalStore(tmp_path))
    store.inject("put", JOURNAL, delay_s=0.02, times=None)
    return store


def test_concurrent_workers_are_answered_only_once_their_changes_are_written(slow_store):
    service = open_tiny_search(slow_store, tiny_config(population=24, max_generations=2))
    server, port = create_server("127.0.0.1:0", service)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=30) as client:
                while (reply := client.request_work(name, 1)).action != "done":
                    for grant in reply.leases:
                        # Answered, so in storage already (not just in memory).
                        stored = saved_state(slow_store, "search").leases[grant.lease_id]
                        assert stored.status == "active"
                        client.report(fake_train(slow_store, grant, name))
                        stored = saved_state(slow_store, "search").leases[grant.lease_id]
                        assert stored.status == "accepted"
        except BaseException as err:  # re-raised in the test thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        server.stop(0)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]
    state = saved_state(slow_store, "search")
    assert state.status == "finished" and all(len(h) == 2 for h in state.history.values())
    # 48 grants + 48 reports, in fewer writes than changes.
    assert slow_store.count("put", JOURNAL) < 96 * 0.8


def test_a_lost_write_is_retried_by_the_client_and_counts_once(tmp_path):
    store = FaultyStore(LocalStore(tmp_path))
    service = open_tiny_search(store)
    server, port = create_server("127.0.0.1:0", service)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            grant = client.request_work("w0", 1).leases[0]
            report = fake_train(store, grant, "w0")
            fault = store.inject("put", JOURNAL, fail="disk full")  # the next write only
            ack = client.report(report)
            assert fault.hits == 1  # the first try's write failed...
            assert ack.accepted and not ack.duplicate  # ...and was rolled back
    finally:
        server.stop(0)
    history = saved_state(store, "search").history[grant.member]
    assert len(history) == 1 and history[0].generation == grant.generation


def test_a_report_whose_answer_a_stop_cut_off_is_neither_lost_nor_counted_twice(tmp_path):
    store = FaultyStore(LocalStore(tmp_path))
    service = open_tiny_search(store)
    server, port = create_server("127.0.0.1:0", service)
    target = f"127.0.0.1:{port}"
    with CoordinatorClient(target, timeout_s=10) as client:
        grant = client.request_work("w0", 1).leases[0]
    report = fake_train(store, grant, "w0")
    gate = threading.Event()
    held = store.inject("put", JOURNAL, hold=gate)  # the report's write waits for the gate
    outcome: list[BaseException | object] = []

    def send() -> None:
        try:
            with CoordinatorClient(target, timeout_s=10, unavailable_wait_s=1) as c:
                outcome.append(c.report(report))
        except BaseException as err:  # inspected in the test thread
            outcome.append(err)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 30
    while held.hits == 0 and time.monotonic() < deadline:  # the write has begun
        time.sleep(0.01)
    assert held.hits == 1
    # The stop cuts the call off, then waits for the write under way.
    stopper = threading.Thread(target=server.stop, args=(0,))
    stopper.start()
    sender.join(30)  # the worker heard no answer and gave up
    assert len(outcome) == 1 and isinstance(outcome[0], CoordinatorUnavailable)
    gate.set()  # only now may the write land
    stopper.join(30)
    assert not stopper.is_alive()
    # A coordinator restarted from storage has the report, and takes the
    # worker's retry as the duplicate it is.
    resumed = open_tiny_search(store)
    server, port = create_server("127.0.0.1:0", resumed)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            ack = client.report(report)
    finally:
        server.stop(0)
    assert ack.accepted and ack.duplicate
    assert len(saved_state(store, "search").history[grant.member]) == 1


class _Announcing(FaultyStore):
    """Also sets `started` when a journal write begins."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.started = threading.Event()

    def _put_bytes(self, key, data, sha256, content_type, metadata):
        if re.search(JOURNAL, key):
            self.started.set()
        return super()._put_bytes(key, data, sha256, content_type, metadata)


def test_calls_that_run_in_one_turn_of_the_loop_share_one_write(tmp_path):
    """The commit threads are woken once the loop's turn is over, so every
    change staged in that turn (the held calls woken at a generation's
    boundary all run in one) goes out in one write, and no thread takes
    the service lock between them."""
    store = _Announcing(LocalStore(tmp_path))
    service = open_tiny_search(store)
    store.started.clear()
    before = store.count("put", JOURNAL)

    async def grant(bridge: CommitBridge, worker: str, first: bool) -> None:
        if not first:
            # Still the same turn: give a woken commit thread every chance
            # to start writing the first grant alone.
            store.started.wait(0.5)
        reply, ticket = service.request_work_staged(worker, 1)
        assert reply.action == "train" and ticket is not None
        await bridge.written(ticket)

    async def main() -> None:
        bridge = CommitBridge(service, asyncio.get_running_loop())
        try:
            await asyncio.gather(grant(bridge, "w0", True), grant(bridge, "w1", False))
        finally:
            bridge.close()

    asyncio.run(main())
    assert store.count("put", JOURNAL) == before + 1
    leases = saved_state(store, "search").leases.values()
    assert sorted(x.worker_id for x in leases) == ["w0", "w1"]


@pytest.mark.parametrize("fail, shown", [(None, "cancelled"), ("disk full", "running")])
def test_a_status_shows_only_what_is_written(tmp_path, fail, shown):
    """GetStatus and WatchStatus answer once the changes they show are
    written: a reader told "cancelled" (or "finished") must not see the
    search running again after a crash that lost the write; if the write
    fails, they show the state as it was rolled back."""
    store = FaultyStore(LocalStore(tmp_path))
    service = open_tiny_search(store)
    server, port = create_server("127.0.0.1:0", service)
    target = f"127.0.0.1:{port}"
    gate = threading.Event()
    # The cancel's write waits for the gate (then fails, if `fail`).
    held = store.inject("put", JOURNAL, hold=gate, fail=fail)
    cancelled: list[BaseException | str] = []

    def cancel() -> None:
        try:
            cancelled.append(service.cancel("by the test"))
        except StorageError as err:
            cancelled.append(err)

    seen: list[tuple[str, str, bool]] = []

    def get_status() -> None:
        with CoordinatorClient(target, timeout_s=30) as client:
            status = client.status()
        seen.append(("GetStatus", status.state, gate.is_set()))

    def watch_status() -> None:
        with CoordinatorClient(target, timeout_s=30) as client:
            status = next(client.watch(timeout_s=30))
        seen.append(("WatchStatus", status.state, gate.is_set()))

    canceller = threading.Thread(target=cancel)
    readers = [threading.Thread(target=get_status), threading.Thread(target=watch_status)]
    try:
        canceller.start()
        deadline = time.monotonic() + 30
        while held.hits == 0 and time.monotonic() < deadline:  # the write has begun
            time.sleep(0.01)
        assert held.hits == 1 and service.status().state == "cancelled"  # in memory
        for reader in readers:
            reader.start()
        for reader in readers:
            # Time for a reader that would answer from memory to do so.
            reader.join(0.5)
        gate.set()
        for thread in (canceller, *readers):
            thread.join(30)
    finally:
        gate.set()
        server.stop(0)
    assert sorted(seen) == [("GetStatus", shown, True), ("WatchStatus", shown, True)]
    assert len(cancelled) == 1 and isinstance(cancelled[0], str if fail is None else StorageError)
