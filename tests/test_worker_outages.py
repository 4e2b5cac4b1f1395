"""A trainer across coordinator outages, in process: a real coordinator on
loopback, the real worker training a tiny model on CPU.

A restart longer than one client call's wait must cost the search nothing
(the worker rides it out for `unavailable_wait_s`, reports included), and a
stop during an outage must end the worker at once (143), not after the wait.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from run_helpers import serve_staged, stage_tiny_search, until

from autolfads.coordinator.search.errors import CoordinatorUnavailable
from autolfads.coordinator.search.messages import SegmentReport
from autolfads.coordinator.search.recovery import read_state
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import CoordinatorServer
from autolfads.signals import StopEvent
from autolfads.storage import LocalStore, WrapperStore
from autolfads.trainer.worker import EXIT_TERMINATED, Worker

pytestmark = pytest.mark.slow  # trains a tiny model
RUN = "outage"


def staged(root: Path) -> LocalStore:
    return stage_tiny_search(root, RUN, population=2, max_generations=1)


def serve(store: LocalStore, port: int = 0) -> tuple[CoordinatorServer, int]:
    return serve_staged(store, RUN, port)


def unreachable_worker(
    tmp_path: Path, stop: StopEvent, wait_s: float
) -> tuple[CoordinatorClient, Worker]:
    """A client (both waits `wait_s`) and worker for a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = CoordinatorClient(f"127.0.0.1:{port}", unavailable_wait_s=wait_s)
    worker = Worker(
        client,
        LocalStore(tmp_path / "runs"),
        "w1",
        cache_dir=tmp_path / "cache",
        stop=stop,
        unavailable_wait_s=wait_s,
    )
    return client, worker


class RestartAtFirstReport:
    """The worker's link to the coordinator, passed through, except that the
    coordinator goes down as the first report is sent and comes back only
    once that call has given up (the client's `unavailable_wait_s`)."""

    def __init__(
        self, client: CoordinatorClient, store: LocalStore, first: CoordinatorServer
    ) -> None:
        self.client, self.store, self.first = client, store, first
        self.port = int(client.target.rsplit(":", 1)[1])
        self.restarted: CoordinatorServer | None = None
        self.gave_up = 0

    def request_work(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.request_work(*args, **kwargs)

    def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.heartbeat(*args, **kwargs)

    def report(self, report: SegmentReport, **kwargs: Any) -> Any:
        if self.restarted is None:
            self.first.stop(0)
            try:
                return self.client.report(report, **kwargs)
            except CoordinatorUnavailable:
                self.gave_up += 1
                self.restarted, _ = serve(self.store, self.port)  # the restarted pod
                raise
        return self.client.report(report, **kwargs)


def test_a_restart_longer_than_a_call_loses_no_report(tmp_path: Path) -> None:
    store = staged(tmp_path)
    first, port = serve(store)
    with CoordinatorClient(f"127.0.0.1:{port}", unavailable_wait_s=0.3) as client:
        link = RestartAtFirstReport(client, store, first)
        worker = Worker(
            link, store, "w1", cache_dir=tmp_path / "cache", run=RUN, unavailable_wait_s=120
        )
        try:
            assert worker.run() == 0  # the search ended: DONE
        finally:
            first.stop(0)
            if link.restarted is not None:
                link.restarted.stop(0)
    assert link.gave_up == 1  # the outage outlasted the client's own wait
    state = read_state(store, RUN)
    assert state is not None and state.status == "finished"
    assert sorted(state.history) == ["m000", "m001"]  # both segments counted


def test_a_stop_during_an_outage_ends_the_worker_at_once(tmp_path: Path) -> None:
    stop = StopEvent()

    class StopAtFirstRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage():
                stop.set()  # SIGTERM, while the client waits to retry

    handler = StopAtFirstRetry()
    client_log = logging.getLogger("autolfads.coordinator.wire.client")
    client_log.addHandler(handler)
    old_level = client_log.level
    client_log.setLevel(logging.INFO)
    result: list[int] = []
    client, worker = unreachable_worker(tmp_path, stop, wait_s=3600)
    try:
        thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
        thread.start()
        thread.join(60)  # an hour before the change
        assert not thread.is_alive(), "the stop waited out the outage"
    finally:
        client.close()
        client_log.removeHandler(handler)
        client_log.setLevel(old_level)
    assert result == [EXIT_TERMINATED]


class OutageAtLastBeat:
    """The worker's link, passed through, except that the coordinator goes
    down and the worker is told to stop (SIGTERM) as the segment's last
    heartbeat is sent: a pod evicted during a coordinator outage."""

    def __init__(self, client: CoordinatorClient, server: CoordinatorServer, stop: StopEvent):
        self.client, self.server, self.stop = client, server, stop

    def request_work(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.request_work(*args, **kwargs)

    def heartbeat(self, lease_id: str, worker_id: str, epochs_done: int = 0, **kwargs: Any):
        if epochs_done >= 2:  # the burn-in segment's last epoch is done
            self.server.stop(0)
            self.stop.set()
        return self.client.heartbeat(lease_id, worker_id, epochs_done, **kwargs)

    def report(self, report: SegmentReport, **kwargs: Any) -> Any:
        return self.client.report(report, **kwargs)


def test_a_stop_during_an_outage_mid_segment_still_publishes_and_ends_at_once(
    tmp_path: Path,
) -> None:
    """The heartbeat, the report and the hand-back each used to wait out the
    whole outage (an hour here; 300 s by default) before the worker ended."""
    store = staged(tmp_path)
    server, port = serve(store)
    stop = StopEvent()
    result: list[int] = []
    with CoordinatorClient(f"127.0.0.1:{port}", unavailable_wait_s=3600) as client:
        link = OutageAtLastBeat(client, server, stop)
        worker = Worker(
            link, store, "w1", cache_dir=tmp_path / "cache", stop=stop, unavailable_wait_s=3600
        )
        try:
            thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
            thread.start()
            thread.join(60)
            assert not thread.is_alive(), "the stop waited out the outage"
        finally:
            server.stop(0)
    assert result == [EXIT_TERMINATED]
    # The trained segment was stored, though its report could not be sent.
    state = read_state(store, RUN)
    assert state is not None
    stored = [x.key for x in store.list(f"{RUN}/members/") if x.key.endswith("checkpoint.pt")]
    assert len(stored) == 1


class StopAtDataDownload(WrapperStore):
    """Storage that stops the worker (its SIGTERM) as the run's data downloads."""

    def __init__(self, inner: LocalStore, stop: StopEvent) -> None:
        super().__init__(inner)
        self.stop = stop

    def _download(self, key: str, tmp: Path) -> Any:
        self.stop.set()
        return super()._download(key, tmp)


def test_a_stop_while_loading_hands_the_leases_back_before_any_epoch(tmp_path: Path) -> None:
    """A stop (pod eviction) that came while the data downloaded used to
    train an epoch of every leased segment first: with epochs longer than
    the pod's grace period, it was killed and the leases expired instead."""
    store = staged(tmp_path)
    server, port = serve(store)
    stop = StopEvent()
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as client:
            evicted = StopAtDataDownload(store, stop)
            worker = Worker(
                client, evicted, "w1", cache_dir=tmp_path / "cache", stop=stop, max_leases=2
            )
            assert worker.run() == EXIT_TERMINATED
    finally:
        server.stop(0)
    assert worker.clock.totals["train"] == 0.0  # not one epoch
    state = read_state(store, RUN)
    assert state is not None
    assert sorted(x.status for x in state.leases.values()) == ["abandoned", "abandoned"]


def test_a_failed_loop_leaves_the_callers_stop_unset(tmp_path: Path) -> None:
    # A Ray trainer actor runs a new worker with the same stop event after
    # one fails: the failure must not read as a stop there.
    stop = StopEvent()
    client, worker = unreachable_worker(tmp_path, stop, wait_s=0.2)
    with client, pytest.raises(CoordinatorUnavailable):
        worker.run()
    assert not stop.is_set()


def test_a_lease_whose_answer_was_lost_comes_back_with_the_retry(tmp_path, monkeypatch, caplog):
    """One journal write slower than the call's deadline: the answer to the
    worker's RequestWork is lost. The retry used to carry a new request id,
    so the coordinator granted the worker another lease while the first
    stayed with it unheard of, and the synchronous search stalled on that
    member for a whole lease timeout (here 600 s)."""
    from autolfads.coordinator.search.service import CoordinatorService
    from autolfads.coordinator.search.staging import load_run
    from autolfads.coordinator.wire.server import create_server
    from autolfads.storage import FaultyStore
    from autolfads.trainer import worker as worker_module

    monkeypatch.setattr(worker_module, "WORK_WAIT_S", 0.5)  # the long poll, shortened
    store = staged(tmp_path)
    cfg, key, sha = load_run(store, RUN)
    flaky = FaultyStore(store)
    service = CoordinatorService.open_search(cfg, flaky, key, sha, lease_timeout_s=600.0)
    written = threading.Event()
    flaky.inject("put", r"/coordinator/journal/", hold=written)  # the first grant's write
    server, port = create_server("127.0.0.1:0", service)
    client = CoordinatorClient(f"127.0.0.1:{port}", timeout_s=1.0, unavailable_wait_s=1.0)
    worker = Worker(
        client, store, "w1", cache_dir=tmp_path / "cache", run=RUN, unavailable_wait_s=60.0
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()))
    try:
        with caplog.at_level(logging.INFO, logger="autolfads.coordinator.rpc"):
            thread.start()
            # The coordinator saw the first answer's deadline pass.
            until(lambda: "RequestWork CANCELLED" in caplog.text, "the lost answer", 20)
            written.set()
            thread.join(timeout=120)
    finally:
        if thread.is_alive():
            worker.stop.set()
            thread.join()
        client.close()
        server.stop(0)
    assert codes == [0]
    state = read_state(store, RUN)
    assert state is not None and state.status == "finished"
    # One lease per segment, each answered and reported: none was orphaned.
    assert sorted(x.status for x in state.leases.values()) == ["accepted", "accepted"]
