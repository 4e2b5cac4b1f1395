"""Bounded resources over real gRPC on loopback: request size, report payload
limits, leases per worker, population, concurrent streams, remembered worker
ids, and a flood of bogus calls during which a real worker is still served."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest
from coordinator_helpers import fake_train, open_tiny_search, saved_state
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from autolfads.config import parse_config
from autolfads.coordinator.search.errors import (
    CoordinatorError,
    CoordinatorUnavailable,
    InvalidRequest,
    Overloaded,
)
from autolfads.coordinator.search.service import MAX_TRACKED_WORKERS, CoordinatorService
from autolfads.coordinator.search.state import SearchState
from autolfads.coordinator.search.validation import MAX_EPOCH_METRICS
from autolfads.coordinator.security.auth import bearer_metadata
from autolfads.coordinator.security.exposure import ClientSecurity, ServerSecurity
from autolfads.coordinator.security.interceptors import RpcMetrics
from autolfads.coordinator.security.limits import (
    HEALTH_CALLS,
    MAX_BIDI_STREAMS,
    MAX_HEALTH_WATCHES,
    MAX_REQUEST_BYTES,
    UNGUARDED_CALLS,
)
from autolfads.coordinator.security.tokens import TokenSet
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import CoordinatorServer, create_server
from autolfads.errors import ConfigError
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

TOKENS = TokenSet.generate()


def open_service(store, **kwargs) -> CoordinatorService:
    return open_tiny_search(store, **kwargs)


def serve_limited(store, **limits) -> tuple[CoordinatorService, CoordinatorServer, str, RpcMetrics]:
    """A tiny search served with tokens and the given bounds."""
    service = open_service(store)
    metrics = RpcMetrics()
    server, port = create_server(
        "127.0.0.1:0", service, metrics=metrics, security=ServerSecurity(tokens=TOKENS), **limits
    )
    return service, server, f"127.0.0.1:{port}", metrics


@pytest.fixture
def served(local_store):
    service, server, target, metrics = serve_limited(local_store, max_streams=2)
    yield service, target, metrics
    server.stop(0)


def worker_client(target: str) -> CoordinatorClient:
    return CoordinatorClient(
        target, timeout_s=10, unavailable_wait_s=5, security=ClientSecurity(token=TOKENS.worker)
    )


def persisted(store) -> bytes:
    return saved_state(store, "search").to_json().encode()  # always loadable


def test_oversized_requests_are_refused_and_change_nothing(served, local_store):
    service, target, _ = served
    with worker_client(target) as client:
        grant = client.request_work("w0", 1).leases[0]
    before = persisted(local_store)
    request = pb.ReportResultRequest(
        lease_id=grant.lease_id, worker_id="w0", message="x" * (MAX_REQUEST_BYTES + 1)
    )
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        assert TOKENS.worker is not None  # generate() makes a token for every role
        with pytest.raises(grpc.RpcError) as err:
            stub.ReportResult(request, timeout=10, metadata=bearer_metadata(TOKENS.worker))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert persisted(local_store) == before


def test_a_request_over_the_size_bound_is_not_retried(served, local_store):
    # Retrying cannot make it fit: the client raises at once instead of
    # waiting out its unavailable_wait_s as for a busy coordinator.
    _, target, metrics = served
    pauses: list[float] = []
    client = CoordinatorClient(
        target,
        unavailable_wait_s=60,
        sleep=pauses.append,
        security=ClientSecurity(token=TOKENS.worker),
    )
    with client:
        grant = client.request_work("w0", 1).leases[0]
        report = fake_train(local_store, grant, "w0")
        with pytest.raises(Overloaded, match="larger than max"):
            client.report(replace(report, message="x" * (MAX_REQUEST_BYTES + 1)))
        assert pauses == []
        assert client.report(report).accepted


def test_a_busy_coordinator_refuses_as_overloaded_and_clients_wait_it_out(local_store):
    _, server, target, metrics = serve_limited(local_store, max_concurrent_rpcs=1)
    assert TOKENS.observer is not None  # generate() makes a token for every role
    try:
        with grpc.insecure_channel(target) as channel:
            # One stream open takes the one call in flight the server allows.
            probe = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=60
            )
            assert next(probe).status == health_pb2.HealthCheckResponse.SERVING
            stub = pb_grpc.CoordinatorStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetStatus(
                    pb.GetStatusRequest(), timeout=10, metadata=bearer_metadata(TOKENS.observer)
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailing = dict(refused.value.trailing_metadata() or ())
            assert trailing["autolfads-error"] == "Overloaded"
            assert 200 <= int(trailing["grpc-retry-pushback-ms"]) <= 800

            # Out of patience, a client says the coordinator was busy, not
            # that it could not be reached (it answered every time).
            observer = ClientSecurity(token=TOKENS.observer)
            impatient = CoordinatorClient(target, unavailable_wait_s=0, security=observer)
            busy = pytest.raises(CoordinatorUnavailable, match="busy .it refused every try. for")
            with impatient, busy:
                impatient.status()

            # The client retries a busy coordinator like an unreachable one;
            # here the slot frees up during its first pause.
            pauses: list[float] = []

            def pause(seconds: float) -> None:
                pauses.append(seconds)
                probe.cancel()
                time.sleep(seconds)

            with CoordinatorClient(
                target, unavailable_wait_s=60, sleep=pause, security=observer
            ) as client:
                assert client.status().run == "search"
            assert pauses
            assert metrics.wait_for("GetStatus", "RESOURCE_EXHAUSTED", 2, timeout_s=10) >= 2
    finally:
        server.stop(0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": tuple((e, {"valid_recon_smth": 1.0}) for e in range(3))}, "3 epochs reported"),
        (
            {"epochs": ((0, {f"m{i}": 1.0 for i in range(MAX_EPOCH_METRICS + 1)}),)},
            "more than 64 metrics",
        ),
        ({"epochs": ((0, {"bad name with spaces": 1.0}),)}, "metric name"),
        ({"epochs": ((0, {"x" * 65: 1.0}),)}, "metric name"),
        ({"member": "m" * 129}, "member is longer"),
        ({"message": "m" * 5000}, "message is longer"),
        ({"checkpoint_key": "k" * 1025}, "checkpoint_key is longer"),
        ({"lease_id": "l" * 129}, "lease_id is longer"),
        ({"hparams": {f"h{i}": 1.0 for i in range(8)}}, "8 hyperparameters"),
    ],
)
def test_report_payload_limits(served, local_store, change, message):
    service, target, _ = served
    with worker_client(target) as client:
        grant = client.request_work("w0", 1).leases[0]
        good = fake_train(local_store, grant, "w0")
        before = persisted(local_store)
        with pytest.raises(InvalidRequest, match=message):
            client.report(replace(good, **change))
        assert persisted(local_store) == before
        assert client.report(good).accepted


def test_non_finite_metrics_are_stored_as_diverged(served, local_store):
    service, target, _ = served
    with worker_client(target) as client:
        grants = client.request_work("w0", 2).leases
        for grant, metric in zip(grants, (-math.inf, math.inf), strict=True):
            assert client.report(fake_train(local_store, grant, "w0", metric=metric)).accepted
    state = SearchState.from_json(persisted(local_store))
    for grant in grants:
        result = state.segments[grant.member].result
        assert result is not None and math.isnan(result.metric)


def test_population_is_capped_by_the_config():
    with pytest.raises(ConfigError, match="pbt.population"):
        parse_config({"data": {"path": "x.h5"}, "pbt": {"population": 1025}})


def test_a_worker_never_holds_more_than_the_lease_cap(local_store):
    service = open_service(local_store, max_leases_per_request=2)
    assert len(service.request_work("greedy", 2, "r1").leases) == 2
    # A fresh request id does not get around the cap while both are active.
    assert service.request_work("greedy", 2, "r2").action == "wait"
    assert len(service.request_work("modest", 2, "r3").leases) == 2
    with pytest.raises(InvalidRequest, match="between 1 and 2"):
        service.request_work("greedy", 3, "r4")


def test_bogus_worker_ids_cannot_grow_memory(local_store):
    service = open_service(local_store)
    service.drain()  # no work handed out: only the bookkeeping of who asked
    for i in range(MAX_TRACKED_WORKERS + 500):
        assert service.request_work(f"bogus-{i}", 1).action == "wait"
    remembered = service.workers_not_told_done(window_s=3600)
    assert MAX_TRACKED_WORKERS // 2 <= len(remembered) <= MAX_TRACKED_WORKERS
    assert f"bogus-{MAX_TRACKED_WORKERS + 499}" in remembered


def test_streams_cannot_take_every_thread(served):
    service, target, _ = served  # at most 2 WatchStatus streams
    observer = ClientSecurity(token=TOKENS.observer)
    streams = [CoordinatorClient(target, security=observer) for _ in range(3)]
    watches = [c.watch(timeout_s=30) for c in streams]
    try:
        assert next(watches[0]).run == next(watches[1]).run == "search"
        with pytest.raises(Overloaded, match="2 streams are open"):
            next(watches[2])
        with worker_client(target) as client:  # unary calls still have threads
            assert client.request_work("w0", 1).action == "train"
    finally:
        for c in streams:
            c.close()


def test_health_watches_take_no_watcher_slot(served):
    # A load balancer or monitor watching health (async, no thread) must
    # neither fill the watchers' slots nor be refused for them.
    _, target, _ = served  # at most 2 WatchStatus streams
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        probes = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(3)]
        try:
            for probe in probes:
                assert next(probe).status == health_pb2.HealthCheckResponse.SERVING
            observer = ClientSecurity(token=TOKENS.observer)
            streams = [CoordinatorClient(target, security=observer) for _ in range(2)]
            try:
                watches = [c.watch(timeout_s=30) for c in streams]
                assert next(watches[0]).run == next(watches[1]).run == "search"
            finally:
                for c in streams:
                    c.close()
        finally:
            for probe in probes:
                probe.cancel()


def test_idle_reflection_streams_cannot_take_gRPCs_cap_on_calls(local_store):
    # Reflection is open without a token. Its streams are not counted with
    # the calls; enough idle ones reached gRPC's own cap, whose refusal
    # (unmarked RESOURCE_EXHAUSTED) a worker's client takes as final.
    _, server, target, _ = serve_limited(local_store, max_concurrent_rpcs=4)
    enough = 4 + UNGUARDED_CALLS  # gRPC's cap on that server

    async def hold_streams_and_ask() -> tuple[list[grpc.StatusCode], int]:
        never = asyncio.Event()

        async def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            await never.wait()  # idle from then on

        async with grpc.aio.insecure_channel(target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            streams = [stub.ServerReflectionInfo(requests()) for _ in range(enough)]
            codes = []
            for stream in streams:
                try:
                    await stream.read()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
            with worker_client(target) as client:
                loop = asyncio.get_running_loop()
                generation = (await loop.run_in_executor(None, client.status)).generation
            for stream in streams:
                stream.cancel()
            return codes, generation

    try:
        codes, generation = asyncio.run(hold_streams_and_ask())
    finally:
        server.stop(0)
    assert generation == 0
    assert Counter(codes) == {
        grpc.StatusCode.OK: MAX_BIDI_STREAMS,
        grpc.StatusCode.RESOURCE_EXHAUSTED: enough - MAX_BIDI_STREAMS,
    }


def test_idle_health_watches_cannot_fill_the_bound_on_calls(local_store):
    # Health is open without a token, and its Watch counts with the calls:
    # enough idle watches took every slot, and workers were refused until
    # their wait ran out.
    bound = MAX_HEALTH_WATCHES + 16
    _, server, target, _ = serve_limited(local_store, max_concurrent_rpcs=bound)
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        probes = [health.Watch(health_pb2.HealthCheckRequest(), timeout=60) for _ in range(bound)]
        codes = []
        try:
            for probe in probes:
                try:
                    next(probe)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
            with worker_client(target) as client:
                assert client.request_work("w0", 1).action == "train"
        finally:
            for probe in probes:
                probe.cancel()
            server.stop(0)
    assert Counter(codes) == {
        grpc.StatusCode.OK: MAX_HEALTH_WATCHES,
        grpc.StatusCode.RESOURCE_EXHAUSTED: bound - MAX_HEALTH_WATCHES,
    }


def test_idle_watches_on_the_health_port_leave_room_for_probes(local_store):
    # `--health-listen` has a few calls for the probes, and anyone who
    # reaches it may watch: idle watches took them all and every Check (a
    # Kubernetes probe) was refused.
    server, _ = create_server("127.0.0.1:0", open_service(local_store), health_addr="127.0.0.1:0")
    target = f"127.0.0.1:{server.health_port}"
    request = health_pb2.HealthCheckRequest()
    with grpc.insecure_channel(target) as channel, grpc.insecure_channel(target) as prober:
        watches = [
            health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)
            for _ in range(HEALTH_CALLS)
        ]
        codes = []
        try:
            for watch in watches:
                try:
                    next(watch)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
            check = health_pb2_grpc.HealthStub(prober).Check(request, timeout=10)
        finally:
            for watch in watches:
                watch.cancel()
            server.stop(0)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1


def _flood(target: str, stop: threading.Event, codes: list[grpc.StatusCode]) -> None:
    """Bogus calls as fast as possible: no token, a wrong token, garbage bytes,
    malformed requests with a valid token. Every call gets a status code."""
    bogus = (("authorization", "Bearer " + "f" * 43),)
    assert TOKENS.worker is not None  # generate() makes a token for every role
    worker = bearer_metadata(TOKENS.worker)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        raw = channel.unary_unary("/autolfads.pbt.v1.Coordinator/ReportResult")
        calls = [
            lambda: stub.RequestWork(pb.RequestWorkRequest(worker_id="x"), timeout=5),
            lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=5, metadata=bogus),
            lambda: raw(b"\xff\x00garbage" * 10, timeout=5, metadata=worker),
            lambda: stub.Heartbeat(
                pb.HeartbeatRequest(lease_id="nope", worker_id="w"), timeout=5, metadata=worker
            ),
        ]
        i = 0
        while not stop.is_set() and i < 2000:
            try:
                calls[i % len(calls)]()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
            i += 1


def test_a_flood_of_bogus_calls_does_not_starve_a_real_worker(served, local_store):
    service, target, metrics = served
    stop = threading.Event()
    codes: list[grpc.StatusCode] = []
    flooders = [threading.Thread(target=_flood, args=(target, stop, codes)) for _ in range(6)]
    for thread in flooders:
        thread.start()
    try:
        start = time.monotonic()
        with worker_client(target) as client:
            while not service.terminal:
                assert time.monotonic() - start < 60, "the real worker was starved"
                for grant in client.request_work("real-worker", 4).leases:
                    assert client.report(fake_train(local_store, grant, "real-worker")).accepted
            final = client.status()
    finally:
        stop.set()
        for thread in flooders:
            thread.join(timeout=30)
    assert final.state == "finished" and final.best is not None
    assert len(codes) > 100 and grpc.StatusCode.OK not in codes
    assert set(codes) <= {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }
    assert metrics.count("RequestWork", "UNAUTHENTICATED") > 10
    # Garbage bytes are refused before the servicer and still counted.
    assert metrics.wait_for("ReportResult", "INVALID_ARGUMENT", 10, timeout_s=30) >= 10
    SearchState.from_json(persisted(local_store))


class LoopGate(grpc.aio.ServerInterceptor):
    """Blocks the server's event loop, on purpose, from the first GetStatus
    until released: meanwhile the server accepts no call at all."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    async def intercept_service(self, continuation, details):
        if details.method.endswith("/GetStatus") and not self.entered.is_set():
            self.entered.set()
            self.release.wait(60)
        return await continuation(details)


async def _burst(target: str, calls: int, gate: LoopGate) -> Counter[grpc.StatusCode]:
    """`calls` heartbeats for an unknown lease, sent over 8 connections while
    the server's loop is blocked; the codes they end with."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
    stubs = [pb_grpc.CoordinatorStub(c) for c in channels]
    beat = pb.HeartbeatRequest(lease_id="nope", worker_id="w")
    pending = [stubs[i % 8].Heartbeat(beat, timeout=60) for i in range(calls)]
    # They go out as this loop runs; the server, unblocked, accepts one per
    # method per turn of its loop, far slower than they arrive.
    gate.release.set()
    codes: Counter[grpc.StatusCode] = Counter()
    for call in pending:
        try:
            await call
            codes[grpc.StatusCode.OK] += 1
        except grpc.aio.AioRpcError as err:
            codes[err.code()] += 1
    for channel in channels:
        await channel.close()
    return codes


def test_a_burst_of_calls_waiting_to_be_accepted_is_not_dropped(local_store):
    # A fleet that asks at the same instant queues its calls in gRPC's core
    # until the server accepts them. Past core's default backlog (1000 per
    # method) calls were dropped at random with CANCELLED: 80-150 of 2,000
    # simulated trainers' first RequestWork, 600-700 of these 2,900.
    gate = LoopGate()
    server, port = create_server("127.0.0.1:0", open_service(local_store), interceptors=[gate])
    target = f"127.0.0.1:{port}"
    blocker = threading.Thread(target=lambda: CoordinatorClient(target, timeout_s=60).status())
    try:
        blocker.start()
        assert gate.entered.wait(30)
        codes = asyncio.run(_burst(target, 2900, gate))
    finally:
        gate.release.set()
        blocker.join(60)
        server.stop(0)
    assert codes == {grpc.StatusCode.NOT_FOUND: 2900}  # each one answered


class DropCalls(grpc.aio.ServerInterceptor):
    """Ends the first `count` calls of `method` with CANCELLED: before the
    handler, as gRPC's core drops calls it has not accepted, or after it (the
    answer is lost on the way, e.g. by a proxy)."""

    def __init__(self, method: str, count: int, after_handler: bool) -> None:
        self.method, self.left, self.after_handler = method, count, after_handler

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not details.method.endswith("/" + self.method) or self.left == 0:
            return handler
        self.left -= 1

        async def drop(request, context):
            if self.after_handler:
                await handler.unary_unary(request, context)
            await context.abort(grpc.StatusCode.CANCELLED, "dropped")

        return grpc.unary_unary_rpc_method_handler(
            drop,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@pytest.mark.parametrize("after_handler", [False, True])
@pytest.mark.parametrize("wait_s", [0.0, 5.0])
def test_a_dropped_call_is_retried_and_grants_once(local_store, wait_s, after_handler):
    # Six drops: more than the channel's five quick attempts, so the
    # client's own retry loop takes over.
    service = open_service(local_store)
    drops = DropCalls("RequestWork", 6, after_handler)
    server, port = create_server("127.0.0.1:0", service, interceptors=[drops])
    try:
        target = f"127.0.0.1:{port}"
        with CoordinatorClient(target, timeout_s=10, sleep=lambda s: None) as client:
            reply = client.request_work("w0", 1, wait_s=wait_s)
    finally:
        server.stop(0)
    assert drops.left == 0 and reply.action == "train"
    (lease,) = reply.leases
    leases = service.snapshot().leases
    assert list(leases) == [lease.lease_id] and leases[lease.lease_id].worker_id == "w0"


class ParkStatus(grpc.aio.ServerInterceptor):
    """GetStatus never answers (until the server stops): a call in flight."""

    def __init__(self) -> None:
        self.entered = threading.Event()

    async def intercept_service(self, continuation, details):
        if details.method.endswith("/GetStatus"):
            self.entered.set()
            await asyncio.get_running_loop().create_future()
        return await continuation(details)


def test_closing_a_client_ends_its_call_in_flight_without_a_retry(local_store):
    # Closing cancels the call (CANCELLED), which is retryable when the
    # server drops a call; here it must end the call instead.
    park = ParkStatus()
    server, port = create_server("127.0.0.1:0", open_service(local_store), interceptors=[park])
    client = CoordinatorClient(f"127.0.0.1:{port}", timeout_s=60, unavailable_wait_s=600)
    pool = ThreadPoolExecutor(1)
    try:
        status = pool.submit(client.status)
        assert park.entered.wait(30)
        client.close()
        with pytest.raises(CoordinatorError, match="Channel closed"):
            status.result(timeout=30)
    finally:
        server.stop(0)
        pool.shutdown()


@pytest.mark.parametrize("call", ["status", "watch"])
def test_closing_a_client_between_tries_ends_its_call_in_one_line(call):
    # Closed while it waits to try again (another thread's close): the next
    # try met a closed channel, and gRPC's ValueError escaped as a traceback.
    with socket.socket() as probe:  # a port nobody serves: every try fails
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waiting, closed = threading.Event(), threading.Event()

    def sleep(_: float) -> None:
        waiting.set()
        closed.wait(30)

    client = CoordinatorClient(f"127.0.0.1:{port}", unavailable_wait_s=600, sleep=sleep)
    pool = ThreadPoolExecutor(1)
    try:
        result = pool.submit(client.status if call == "status" else lambda: list(client.watch()))
        assert waiting.wait(30)
        client.close()
        closed.set()
        with pytest.raises(CoordinatorError, match="this client was closed"):
            result.result(timeout=30)
    finally:
        closed.set()
        pool.shutdown()
