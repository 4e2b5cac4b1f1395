"""Our own Python per call: the coordinator's handler chain without gRPC.

Every call the server answers runs, on its one event loop, gRPC's per-call
machinery (the same for any Python server: `bench_grpc_floor.py` measures
it) and then ours: the interceptors (logging and counters, request limits),
the servicer, the service under its lock and the conversions to and from
protos. Under load the loop is the bottleneck, so ours is what this project
can cut. Through gRPC the difference drowns in the noise of the transport
(0.2-0.3 ms per call on this machine, varying by 20 % from run to run); here
the same chain is awaited directly, in a loop, and timed alone.

Set-up: a `--population` search in memory (`MemoryStore`), every member
leased to its own worker, the handlers wrapped by the interceptors exactly
as `create_server` chains them (no authentication), a stand-in for gRPC's
servicer context (code, deadline, abort). Timed, each the fastest of
`--repeats` passes of `--calls` calls, in CPU microseconds per call:

- Heartbeat;
- RequestWork answered WAIT at once (nothing queued, `wait_s` 0);
- a held RequestWork woken by a handed-back lease (`wait_s` 20), its
  grant, the wait for the grant's write, and the reply: one generation
  boundary's mass wake, call by call (`--population` of them woken at once);
- ReportResult of a segment (with its write; the store is in memory).

    python benchmarks/bench_handlers.py [--population 1024] [--calls 4000] [--repeats 5]

Results go in benchmarks/README.md, section "Coordinator capacity".
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from bench_coordinator import bench_config
from bench_state_write import FAKE_SHA, RUN, fake_report

from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.security.interceptors import LoggingInterceptor
from autolfads.coordinator.security.limits import DEFAULT_MAX_HELD_CALLS, RequestGuard
from autolfads.coordinator.wire import convert
from autolfads.coordinator.wire.commit_bridge import CommitBridge
from autolfads.coordinator.wire.held_calls import HeldCalls
from autolfads.coordinator.wire.servicer import CoordinatorServicer
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.storage import MemoryStore

SERVICE = "autolfads.pbt.v1.Coordinator"


class Aborted(Exception):
    """What `context.abort` raises here (grpc.aio raises its own)."""


class Context:
    """The parts of grpc.aio's servicer context that our chain uses."""

    def __init__(self, deadline_s: float = 60.0) -> None:
        self._code: grpc.StatusCode | None = None
        self._deadline = time.monotonic() + deadline_s

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def time_remaining(self) -> float:
        return self._deadline - time.monotonic()

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code = code
        raise Aborted(f"{code.name}: {details}")


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def chain(servicer: CoordinatorServicer, method: str) -> Callable[..., Awaitable[Any]]:
    """`method`'s behaviour as the server runs it: the servicer's handler
    wrapped by the interceptors, outermost first, as `create_server` does."""
    handler = grpc.unary_unary_rpc_method_handler(getattr(servicer, method))
    interceptors: list[grpc.aio.ServerInterceptor] = [
        LoggingInterceptor(),
        RequestGuard(max_streams=16),
    ]

    async def call(i: int, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if i == len(interceptors):
            return handler
        return await interceptors[i].intercept_service(lambda d: call(i + 1, d), details)

    wrapped = await call(0, Details(f"/{SERVICE}/{method}"))
    return wrapped.unary_unary


def cpu_us(start: float, calls: int) -> float:
    return (time.process_time() - start) / calls * 1e6


async def measure(population: int, calls: int, repeats: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    cfg = bench_config(population, generations=repeats + 1)
    service = CoordinatorService.open_search(
        cfg, MemoryStore(), f"{RUN}/data/{FAKE_SHA}.h5", FAKE_SHA
    )
    bridge = CommitBridge(service, loop)
    held = HeldCalls(service, loop, DEFAULT_MAX_HELD_CALLS)
    servicer = CoordinatorServicer(service, bridge, held)
    heartbeat = await chain(servicer, "Heartbeat")
    request_work = await chain(servicer, "RequestWork")
    report_result = await chain(servicer, "ReportResult")
    try:
        workers = [f"w{i:04d}" for i in range(population)]
        leases = [service.request_work(w, 1).leases[0] for w in workers]
        best: dict[str, float] = {}

        def keep(name: str, value: float) -> None:
            best[name] = min(best.get(name, float("inf")), value)

        for _ in range(repeats):
            beats = [
                pb.HeartbeatRequest(lease_id=x.lease_id, worker_id=w, epochs_done=1)
                for x, w in zip(leases, workers, strict=True)
            ]
            start = time.process_time()
            for i in range(calls):
                beat = await heartbeat(beats[i % population], Context())
            assert beat.action == pb.HeartbeatResponse.CONTINUE
            keep("Heartbeat", cpu_us(start, calls))

            ask = pb.RequestWorkRequest(worker_id="idle", max_leases=1)
            start = time.process_time()
            for _ in range(calls):
                reply = await request_work(ask, Context())
            assert reply.action == pb.RequestWorkResponse.WAIT
            keep("RequestWork answered WAIT", cpu_us(start, calls))

            # A generation boundary's mass wake: every member's lease is handed
            # back (an abandoned report each, which queues the member again) while
            # `population` calls are held; each is woken, granted, written, answered.
            waiting = [
                asyncio.ensure_future(
                    request_work(
                        pb.RequestWorkRequest(worker_id=f"v{i:04d}", max_leases=1, wait_s=20),
                        Context(),
                    )
                )
                for i in range(population)
            ]
            await asyncio.sleep(0)  # every call held
            assert len(held) == population
            fails = [
                dataclasses.replace(fake_report(x, w), outcome="abandoned")
                for x, w in zip(leases, workers, strict=True)
            ]
            for f in fails:
                service.report(f)  # queue again; not timed
            start = time.process_time()
            replies = await asyncio.gather(*waiting)
            keep("held RequestWork woken and granted", cpu_us(start, population))
            assert all(r.action == pb.RequestWorkResponse.TRAIN for r in replies)
            leases = [convert.lease_from_proto(r.leases[0]) for r in replies]
            workers = [f"v{i:04d}" for i in range(population)]

            reports = [
                convert.report_to_proto(fake_report(x, w))
                for x, w in zip(leases, workers, strict=True)
            ]
            start = time.process_time()
            acks = await asyncio.gather(*(report_result(r, Context()) for r in reports))
            keep("ReportResult (generation's last included)", cpu_us(start, population))
            assert all(a.accepted for a in acks)
            if service.terminal:
                break
            # The next generation: every member leased again.
            leases = [service.request_work(w, 1).leases[0] for w in workers]
        return {k: round(v, 1) for k, v in best.items()}
    finally:
        held.close()
        bridge.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=1024)
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    result = asyncio.run(measure(args.population, args.calls, args.repeats))
    print(json.dumps({"load_average": os.getloadavg(), "cpu_us_per_call": result}, indent=1))


if __name__ == "__main__":
    main()
