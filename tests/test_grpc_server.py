"""The coordinator over real gRPC on loopback: health, reflection, status
codes for bad requests, status streaming and client retries."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import replace

import grpc
import pytest
from coordinator_helpers import fake_train, tiny_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from autolfads.coordinator.search.errors import (
    CoordinatorError,
    CoordinatorUnavailable,
    InvalidRequest,
    SearchFinished,
    StaleLease,
    UnknownLease,
)
from autolfads.coordinator.search.messages import StatusView
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.security.interceptors import RpcMetrics
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import SERVICE_NAME, create_server
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc


@pytest.fixture
def served(service):
    metrics = RpcMetrics()
    server, port = create_server("127.0.0.1:0", service, metrics=metrics)
    yield f"127.0.0.1:{port}", metrics, server
    server.stop(0)


def test_health_and_reflection(served):
    target, _, _ = served
    with grpc.insecure_channel(target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for name in ("", SERVICE_NAME):
            reply = check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_a_graceful_stop_tells_health_watchers_first(served):
    target, _, server = served
    with grpc.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopping = threading.Thread(target=server.graceful_stop, kwargs={"grace_s": 30})
        stopping.start()
        # The stop waits (up to its grace) for this stream, which hears first.
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        stopping.join(timeout=30)
        assert not stopping.is_alive()


def test_bad_requests_get_status_codes_and_change_nothing(served, service, local_store):
    target, metrics, _ = served
    with CoordinatorClient(target, timeout_s=5) as client:
        grant = client.request_work("w0", 1).leases[0]
        good = fake_train(local_store, grant, "w0")
        before = service.snapshot().to_json()
        with grpc.insecure_channel(target) as channel:
            raw = pb_grpc.CoordinatorStub(channel)
            cases = {
                grpc.StatusCode.NOT_FOUND: pb.ReportResultRequest(
                    lease_id="nope", worker_id="w0", outcome=pb.ReportResultRequest.ABANDONED
                ),
                grpc.StatusCode.INVALID_ARGUMENT: pb.ReportResultRequest(lease_id=grant.lease_id),
            }
            for code, request in cases.items():
                with pytest.raises(grpc.RpcError) as err:
                    raw.ReportResult(request, timeout=5)
                assert err.value.code() == code
        for error, report in [
            (UnknownLease, replace(good, lease_id="0" * 32)),
            (InvalidRequest, replace(good, generation=2)),
            (InvalidRequest, replace(good, hparams={**good.hparams, "kl_ic_scale": float("inf")})),
        ]:
            with pytest.raises(error):
                client.report(report)
        with pytest.raises(InvalidRequest):
            client.request_work("w0", 10_000)
        assert service.snapshot().to_json() == before
        assert client.report(good).accepted
        assert client.report(good).duplicate
    assert metrics.wait_for("ReportResult", "NOT_FOUND", 2, timeout_s=30) == 2
    assert metrics.count("ReportResult", "OK") == 2


def test_stale_and_finished_reports_map_to_distinct_errors(local_store):
    from autolfads.coordinator.search.clock import ManualClock

    clock = ManualClock()
    service = CoordinatorService.open_search(
        tiny_config(),
        local_store,
        "search/data/" + "ab" * 32 + ".h5",
        "ab" * 32,
        clock=clock,
        lease_timeout_s=5,
    )
    server, port = create_server("127.0.0.1:0", service)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=5) as client:
            stale, live = client.request_work("w0", 2).leases
            clock.advance(6)
            again = client.request_work("w1", 1).leases[0]
            with pytest.raises(StaleLease):
                client.report(fake_train(local_store, stale, "w0"))
            assert client.cancel("test") == "cancelled"
            with pytest.raises(SearchFinished):
                client.report(fake_train(local_store, again, "w1"))
            assert client.request_work("w2", 1).action == "done"
            assert client.heartbeat(again.lease_id, "w1").reason == "search_cancelled"
            assert live.lease_id != again.lease_id
    finally:
        server.stop(0)


def _server_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("coordinator-")]


def test_stop_is_whole_once_and_safe_from_any_thread(service):
    server, port = create_server("127.0.0.1:0", service)
    assert _server_threads()  # the loop and the commit threads
    errors: list[BaseException] = []

    def stop_from_a_thread_with_its_own_loop() -> None:
        async def stop() -> None:
            server.stop(0)

        try:
            asyncio.run(stop())
        except BaseException as err:  # re-raised in the test thread
            errors.append(err)

    stopper = threading.Thread(target=stop_from_a_thread_with_its_own_loop)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive() and not errors, errors
    assert server.loop.is_closed() and _server_threads() == []
    server.stop(0)  # again: nothing left to do, nothing raised
    assert server.loop.is_closed() and _server_threads() == []
    client = CoordinatorClient(f"127.0.0.1:{port}", timeout_s=1, unavailable_wait_s=1)
    with client, pytest.raises(CoordinatorUnavailable):
        client.status()


def test_a_call_its_client_gave_up_on_is_counted_as_cancelled(served):
    target, metrics, _ = served
    with CoordinatorClient(target, timeout_s=5) as client:
        watch = client.watch(timeout_s=30)  # nothing changes: it waits for a change
        assert next(watch).state == "running"
        watch.close()  # the client gives up: the stream is cancelled
        with pytest.raises(StopIteration):
            next(watch)
    # The server notices after the client.
    assert metrics.wait_for("WatchStatus", "CANCELLED", 1, timeout_s=10) == 1
    assert metrics.count("WatchStatus", "UNKNOWN") == 0


def test_watch_streams_every_change_until_the_end(served, service, local_store):
    target, _, _ = served
    seen: list[StatusView] = []
    with CoordinatorClient(target, timeout_s=5) as client:
        watcher = threading.Thread(target=lambda: seen.extend(client.watch(timeout_s=30)))
        watcher.start()
        while not service.terminal:
            reply = client.request_work("w0", 4)
            for grant in reply.leases:
                client.report(fake_train(local_store, grant, "w0"))
        watcher.join(timeout=10)
        final = client.status()
    assert not watcher.is_alive()
    assert seen[-1].state == "finished" == final.state
    revisions = [s.revision for s in seen]
    assert revisions == sorted(set(revisions)) and len(seen) >= 4
    assert final.best is not None and final.best.metric == min(final.best_history)
    best = next(m for m in final.members if m.member == final.best.member)
    assert best.lineage[0].generation == 2 and len(best.lineage) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_rides_out_a_coordinator_that_comes_back(service):
    port = _free_port()
    started = []

    def start_late() -> None:
        time.sleep(1.5)
        started.append(create_server(f"127.0.0.1:{port}", service)[0])

    threading.Thread(target=start_late).start()
    try:
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=2, unavailable_wait_s=20) as client:
            assert client.status().state == "running"
    finally:
        for server in started:
            server.stop(0)


def test_client_gives_up_after_the_bounded_wait():
    with CoordinatorClient(f"127.0.0.1:{_free_port()}", timeout_s=0.5, unavailable_wait_s=1) as c:
        start = time.monotonic()
        with pytest.raises(CoordinatorUnavailable, match="unreachable for"):
            c.status()
        assert time.monotonic() - start < 10


def test_metrics_wake_a_waiter_as_soon_as_its_count_is_reached():
    """`record` notifies only while someone waits (it runs for every call on
    the server's loop); a waiter must still hear the record it waits for
    at once, not at its timeout."""
    metrics = RpcMetrics()

    def record_while_waited_for() -> None:
        while metrics._waiters == 0:  # white-box: until the waiter is waiting
            time.sleep(0.001)
        metrics.record("Heartbeat", "OK", 0.001)

    recorder = threading.Thread(target=record_while_waited_for)
    recorder.start()
    start = time.monotonic()
    assert metrics.wait_for("Heartbeat", "OK", 1, timeout_s=60) == 1
    assert time.monotonic() - start < 30  # woken, not timed out
    recorder.join()


def test_an_internal_error_tells_the_caller_a_reference_not_its_details(caplog):
    # A bug's exception text may name paths, buckets or token files; a
    # caller (maybe holding only an observer token) used to get it verbatim.
    from autolfads.coordinator.wire.status_codes import to_status

    bug = PermissionError("[Errno 13] /etc/autolfads/tokens/operator.token")
    code, said, kind = to_status(bug)
    assert code == grpc.StatusCode.INTERNAL and kind == ""
    assert "internal error (reference " in said and "operator.token" not in said
    reference = said.split("reference ", 1)[1].split(";", 1)[0]
    assert f"internal error (reference {reference})" in caplog.text
    assert "operator.token" in caplog.text  # the server's log has it


def test_a_port_above_65535_is_refused_not_wrapped(service):
    # gRPC binds port 99999 as 34463 (modulo 65536): a coordinator or Katib
    # suggestion service would serve where nobody looks for it.
    with pytest.raises(CoordinatorError, match=r"cannot listen on 127.0.0.1:99999: port 99999"):
        create_server("127.0.0.1:99999", service)


@pytest.mark.parametrize(
    ("field", "largest"),
    [("max_generations", 2**32 - 1), ("generation_epochs", 10_000), ("burn_in_epochs", 10_000)],
)
def test_epoch_and_generation_counts_are_bounded_by_the_protocol(local_store, field, largest):
    # Generations travel as uint32: 2**32 used to pass the config and then
    # fail every lease and status reply with an internal error. A segment's
    # epochs are bounded by what a report may carry (one record per epoch):
    # 10,001 used to train a whole segment and then have its report refused.
    from autolfads.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"pbt\.{field}: .*{largest} \(got {largest + 1}\)"):
        tiny_config(**{field: largest + 1})
    cfg = tiny_config(**{field: largest})
    service = CoordinatorService.open_search(cfg, local_store, "search/data/x.h5", "ab" * 32)
    server, port = create_server("127.0.0.1:0", service)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=5) as client:
            (grant,) = client.request_work("w0", 1).leases
            assert grant.epochs == cfg.pbt.burn_in_epochs
            assert client.status().max_generations == cfg.pbt.max_generations
    finally:
        server.stop(0)
