"""RequestWork as a long poll, on a real loopback server: a worker that asks
with `wait_s` and finds nothing to do is held until a lease can be granted
(a generation opens, a lease expires or is handed back), the search ends or
the coordinator drains, and is then answered at once; the hold never
outlasts `wait_s`, and SIGTERM on the worker side (`cancel`) ends it
without losing a lease granted meanwhile."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest
from coordinator_helpers import fake_train, open_tiny_search, run_threads, tiny_config

from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.errors import InvalidRequest
from autolfads.coordinator.search.messages import SegmentReport, WorkReply
from autolfads.coordinator.security.interceptors import RpcMetrics
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.held_calls import HeldCalls
from autolfads.coordinator.wire.server import CoordinatorServer, create_server
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc
from autolfads.storage import FaultyStore, LocalStore, RunLayout

HOLD_S = 60.0  # longer than any test: a hold that ends early was answered
JOURNAL = f"^{re.escape(RunLayout('search').journal_prefix())}"


def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait for a condition the test cannot be told about directly."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class Search:
    def __init__(self, tmp_path, **kwargs) -> None:
        self.store = FaultyStore(LocalStore(tmp_path))
        max_held = kwargs.pop("max_held_calls", None)
        extra = {} if max_held is None else {"max_held_calls": max_held}
        self.service = open_tiny_search(self.store, **kwargs)
        self.server: CoordinatorServer
        self.metrics = RpcMetrics()
        self.server, port = create_server(
            "127.0.0.1:0", self.service, metrics=self.metrics, **extra
        )
        self.target = f"127.0.0.1:{port}"
        self.pool = ThreadPoolExecutor(4)
        self.pool_futures: list[Future[WorkReply]] = []

    def client(self) -> CoordinatorClient:
        # A call still held when the test stops the server gives up quickly.
        return CoordinatorClient(self.target, timeout_s=30, unavailable_wait_s=0.5)

    def held(self) -> int:
        assert self.server.held is not None
        return len(self.server.held)

    def ask(self, worker: str, wait_s: float = HOLD_S, **kw) -> Future[WorkReply]:
        """A worker's long poll on its own thread; returns once it is held
        (or already answered)."""
        before = self.held()

        def call() -> WorkReply:
            with self.client() as client:
                return client.request_work(worker, 1, wait_s=wait_s, **kw)

        future = self.pool.submit(call)
        self.pool_futures.append(future)
        until(lambda: future.done() or self.held() > before)
        return future

    def close(self) -> None:
        self.server.stop(0)
        for future in self.pool_futures:
            future.exception()  # held calls end with the server (UNAVAILABLE)
        self.pool.shutdown(wait=True)


@pytest.fixture
def search(tmp_path) -> Iterator[Search]:
    s = Search(tmp_path)
    yield s
    s.close()


def take_all(search: Search, worker: str = "a", count: int = 4) -> WorkReply:
    """`worker` leases the whole generation (`count` members), leaving nothing queued."""
    with search.client() as client:
        reply = client.request_work(worker, count)
    assert reply.action == "train" and len(reply.leases) == count
    return reply


def report_all(search: Search, grants: WorkReply, worker: str = "a") -> None:
    with search.client() as client:
        for grant in grants.leases:
            client.report(fake_train(search.store, grant, worker))


def test_a_held_request_is_granted_the_moment_the_generation_opens(search):
    grants = take_all(search)
    waiting = search.ask("b")
    assert not waiting.done()  # nothing to do: held, not answered WAIT
    report_all(search, grants)  # the last report opens generation 1
    reply = waiting.result(timeout=30)
    assert reply.action == "train" and reply.leases[0].generation == 1
    assert 0 < reply.held_s < HOLD_S


def test_the_oldest_held_request_gets_a_handed_back_lease(search):
    grants = take_all(search)
    first, second = search.ask("b"), search.ask("c")
    lease = grants.leases[0]
    with search.client() as client:
        client.report(
            SegmentReport(
                lease.lease_id, "a", lease.member, lease.generation, "abandoned", message="stop"
            )
        )
    reply = first.result(timeout=30)
    assert reply.action == "train" and reply.leases[0].member == lease.member
    assert not second.done()  # one unit, one worker: the other stays held
    assert search.held() == 1


def test_an_expired_lease_wakes_a_held_request(tmp_path):
    clock = ManualClock()
    search = Search(tmp_path, clock=clock, lease_timeout_s=10)
    try:
        take_all(search)
        waiting = search.ask("b")
        clock.advance(11)
        search.service.tick()  # the server's once-a-second sweep
        reply = waiting.result(timeout=30)
        assert reply.action == "train" and reply.leases[0].generation == 0
    finally:
        search.close()


def test_held_requests_hear_done_when_the_search_is_cancelled(search):
    take_all(search)
    waiting = [search.ask("b"), search.ask("c")]
    with search.client() as client:
        client.cancel("enough")
    for future in waiting:
        reply = future.result(timeout=30)
        assert reply.action == "done" and reply.search_state == "cancelled"


def test_done_is_not_answered_before_the_end_of_the_search_is_written(tmp_path):
    search = Search(tmp_path, cfg=tiny_config(population=2, max_generations=1))
    gate = threading.Event()
    try:
        grants = take_all(search, count=2)  # the burn-in is the whole search
        first, last = (WorkReply("train", (g,)) for g in grants.leases)
        report_all(search, first)
        waiting = search.ask("b")
        held = search.store.inject("put", JOURNAL, hold=gate)  # the next write waits
        reporter = search.pool.submit(report_all, search, last)
        until(lambda: held.hits == 1)  # the write that ends the search has begun
        with search.client() as client:  # a fresh ask is not told DONE either
            late = search.pool.submit(client.request_work, "c", 1)
            # Not before the write lands (a broken coordinator answers at once).
            with pytest.raises(TimeoutError):
                waiting.result(timeout=0.5)
            assert not late.done()
            gate.set()
            assert late.result(timeout=30).action == "done"
        assert waiting.result(timeout=30).action == "done"
        reporter.result(timeout=30)
    finally:
        gate.set()  # a failed check must not leave the write (and the stop) waiting
        search.close()


def test_a_draining_coordinator_answers_held_requests_at_once(search):
    take_all(search)
    waiting = search.ask("b")
    search.service.drain()  # SIGTERM on the coordinator
    reply = waiting.result(timeout=30)
    assert reply.action == "wait" and reply.held_s < HOLD_S
    # ...and holds nobody afterwards.
    with search.client() as client:
        assert client.request_work("c", 1, wait_s=HOLD_S).held_s == 0


def test_a_hold_ends_with_wait_after_wait_s(search):
    take_all(search)
    with search.client() as client:
        reply = client.request_work("b", 1, wait_s=0.3)
    assert reply.action == "wait" and reply.retry_after_s > 0
    assert reply.held_s >= 0.29
    assert search.held() == 0


def test_a_hold_never_outlasts_the_calls_deadline(search):
    take_all(search)
    # A client whose deadline is shorter than its wait_s (this one's is 2 s)
    # hears WAIT before the deadline: the server ends the hold 1 s early.
    with grpc.insecure_channel(search.target) as channel:
        request = pb.RequestWorkRequest(worker_id="b", max_leases=1, wait_s=HOLD_S)
        reply = pb_grpc.CoordinatorStub(channel).RequestWork(request, timeout=2.0)
    assert reply.action == pb.RequestWorkResponse.WAIT  # not DEADLINE_EXCEEDED
    assert 0 < reply.held_s < 2.0


def test_without_wait_s_a_request_is_answered_at_once(search):
    take_all(search)
    with search.client() as client:
        reply = client.request_work("b", 1)
    assert reply.action == "wait" and reply.held_s == 0


def test_beyond_the_cap_requests_are_answered_at_once(tmp_path):
    search = Search(tmp_path, max_held_calls=1)
    try:
        take_all(search)
        held = search.ask("b")
        with search.client() as client:
            reply = client.request_work("c", 1, wait_s=HOLD_S)
        assert reply.action == "wait" and reply.held_s == 0
        assert not held.done()
    finally:
        search.close()


def test_cancel_ends_a_hold_and_keeps_a_lease_granted_meanwhile(search):
    grants = take_all(search)
    stop = threading.Event()
    waiting = search.ask("b", cancel=stop)
    stop.set()  # the worker's SIGTERM
    assert waiting.result(timeout=30).action == "wait"  # asked again, nothing yet
    # The held call the worker dropped is counted as cancelled.
    assert search.metrics.wait_for("RequestWork", "CANCELLED", 1, timeout_s=30) == 1
    # A grant that races the cancel is not lost: the re-ask (same request
    # id) replays it. Here the unit is queued before the re-ask.
    report_all(search, grants)
    stop2 = threading.Event()
    stop2.set()
    with search.client() as client:
        reply = client.request_work("c", 1, wait_s=HOLD_S, cancel=stop2)
    assert reply.action == "train"


@pytest.mark.parametrize("wait_s", [-1.0, math.nan, math.inf])
def test_wait_s_must_be_finite_and_not_negative(search, wait_s):
    with search.client() as client, pytest.raises(InvalidRequest, match="wait_s"):
        client.request_work("b", 1, wait_s=wait_s)


def test_a_fleet_that_waits_makes_one_call_per_generation(tmp_path):
    """Workers that finish early are held, not polling: each RequestWork
    that does not get work is one call per generation boundary."""
    search = Search(tmp_path, cfg=tiny_config(population=2, max_generations=2))
    calls: list[WorkReply] = []

    def worker(name: str) -> None:
        with search.client() as client:
            while (reply := client.request_work(name, 1, wait_s=HOLD_S)).action != "done":
                calls.append(reply)
                for grant in reply.leases:
                    client.report(fake_train(search.store, grant, name))
            calls.append(reply)

    try:
        run_threads([threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)], 60)
    finally:
        search.close()
    # 2 generations of 2 units: 4 grants and 4 DONEs; no WAIT answers at all.
    assert sorted(r.action for r in calls) == ["done"] * 4 + ["train"] * 4


@pytest.mark.parametrize("woken_first", [False, True])
def test_a_call_cancelled_as_work_arrives_passes_the_wake_on(tmp_path, woken_first):
    """Two held calls, one lease handed back, and the older call cancelled
    by its client just before the wake pass reaches it, or just after it
    was woken and before it could ask: the work goes to the other call,
    which must not sit out its hold with work queued."""
    store = LocalStore(tmp_path)
    service = open_tiny_search(store)
    grants = service.request_work("a", 4).leases  # nothing left queued
    first = grants[0]

    async def scenario() -> None:
        held = HeldCalls(service, asyncio.get_running_loop(), max_held=8)
        try:
            older = asyncio.ensure_future(held.hold(HOLD_S, "x"))
            younger = asyncio.ensure_future(held.hold(HOLD_S, "y"))
            await asyncio.sleep(0)  # both held
            assert len(held) == 2
            # Hand the lease back: the service rings, and the ring's pass is
            # scheduled (run in the next step); the older call's client then
            # cancels in this one, before the pass runs.
            service.report(
                SegmentReport(
                    lease_id=first.lease_id,
                    worker_id="a",
                    member=first.member,
                    generation=first.generation,
                    outcome="abandoned",
                )  # fmt: skip
            )
            await asyncio.sleep(0)  # the ring reaches the loop: a pass is due
            if woken_first:
                await asyncio.sleep(0)  # the pass wakes the older call
            older.cancel()
            done, _ = await asyncio.wait([younger], timeout=30)
            assert younger in done, "the wake was spent on the cancelled call"
            assert older.cancelled()
        finally:
            held.close()

    asyncio.run(scenario())


def test_a_wake_passes_over_a_worker_that_holds_all_the_leases_it_may(tmp_path):
    """A worker at its lease limit asks for its next lease early (the
    trainer does, in its last epoch) and is held; a lease handed back must
    wake a call that can take it, not be spent on that worker's call, which
    is woken once its own report gives it room."""
    store = LocalStore(tmp_path)
    service = open_tiny_search(store, max_leases_per_request=1)
    grants = {w: service.request_work(w, 1).leases[0] for w in "abcd"}  # nothing left queued

    def hand_back(worker: str) -> None:
        x = grants[worker]
        service.report(SegmentReport(x.lease_id, worker, x.member, x.generation, "abandoned"))

    async def scenario() -> None:
        held = HeldCalls(service, asyncio.get_running_loop(), max_held=8)
        try:
            at_limit = asyncio.ensure_future(held.hold(HOLD_S, "a"))  # holds its one lease
            idle = asyncio.ensure_future(held.hold(HOLD_S, "x"))
            await asyncio.sleep(0)  # both held
            hand_back("d")  # one unit queued
            done, _ = await asyncio.wait([idle], timeout=30)
            assert idle in done, "the wake was spent on the worker at its limit"
            assert not at_limit.done() and len(held) == 1
            # Its segment is done (nothing new queued): room again, with the
            # handed-back unit still queued.
            service.report(fake_train(store, grants["a"], "a"))
            done, _ = await asyncio.wait([at_limit], timeout=30)
            assert at_limit in done, "not woken when its report gave it room"
        finally:
            held.close()

    asyncio.run(scenario())
