"""The floor under any Python gRPC coordinator on this machine, and the
coordinator's own paths against it.

1. Server CPU per call of an *empty* unary handler (no interceptors, no
   logic, no state): a bare `grpc.server` in a child process (the
   coordinator's Heartbeat method answering an empty reply), for each
   thread-pool size (the sync server hands every call to a pool thread, and
   more threads cost more GIL hand-offs per call); with `--aio`, also an
   empty `grpc.aio` server (one event loop).
2. The same for the real coordinator (`create_server`, interceptors
   included; a 256-member search, every member leased): Heartbeat, a WAIT
   reply to RequestWork, GetStatus.
3. In-process, one caller, a `--population` search on local storage (every
   write fsynced, one change per write): CPU and wall time per lease grant
   and per report, i.e. a change and its journal write.

Servers are driven from this process with grpc.aio clients (32 channels,
`--concurrency` calls in flight); a server's CPU time is read from /proc.
Compare with `bench_coordinator.py`'s "server CPU ms per RPC".

    python benchmarks/bench_grpc_floor.py [--calls 10000] [--threads 1 4 8 16 32] [--aio] [--population 1024]

Results go in benchmarks/README.md, section "Coordinator capacity".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path

import grpc
from bench_coordinator import bench_config, cpu_seconds, open_channels
from bench_state_write import FAKE_SHA, RUN, report

from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

Call = tuple[str, object]  # (method name, request)
LEASED = 256  # members of the coordinator served in part 2, all leased


class EmptyCoordinator(pb_grpc.CoordinatorServicer):
    def Heartbeat(self, request: pb.HeartbeatRequest, context: object) -> pb.HeartbeatResponse:
        return pb.HeartbeatResponse()


class AsyncEmptyCoordinator(pb_grpc.CoordinatorServicer):
    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: object
    ) -> pb.HeartbeatResponse:
        return pb.HeartbeatResponse()


async def serve_aio() -> None:
    """An empty `grpc.aio` server (one event loop, no thread pool) until stdin closes."""
    server = grpc.aio.server()
    pb_grpc.add_CoordinatorServicer_to_server(AsyncEmptyCoordinator(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


def open_service(population: int, root: Path):  # -> CoordinatorService
    from autolfads.coordinator.search.service import CoordinatorService
    from autolfads.storage import LocalStore

    cfg = bench_config(population, generations=3)
    store = LocalStore(root)
    data_key = f"{RUN}/data/{FAKE_SHA}.h5"
    return CoordinatorService.open_search(cfg, store, data_key, FAKE_SHA, lease_timeout_s=600)


def serve(threads: int) -> None:
    """Child process: serve until stdin closes; print the bound port first.
    `threads` 0: the real coordinator, -1: an empty asyncio server, else an
    empty server with that pool."""
    if threads < 0:
        asyncio.run(serve_aio())
        return
    if threads == 0:
        from autolfads.coordinator.wire.server import create_server

        service = open_service(LEASED, Path(tempfile.mkdtemp(prefix="bench-rpc-")))
        server, port = create_server("127.0.0.1:0", service)
    else:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
        pb_grpc.add_CoordinatorServicer_to_server(EmptyCoordinator(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


async def drive(port: int, calls: Sequence[Call], concurrency: int) -> None:
    channels = open_channels(port, 32)
    stubs = [pb_grpc.CoordinatorStub(c) for c in channels]
    left = list(calls)

    async def client(i: int) -> None:
        stub = stubs[i % len(stubs)]
        while left:
            method, request = left.pop()
            await getattr(stub, method)(request, timeout=60)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    for c in channels:
        await c.close()


def server_cost(
    threads: int,
    batches: dict[str, Sequence[Call] | Callable[[int], Sequence[Call]]],
    concurrency: int,
) -> dict:
    """{name: (server CPU ms per call, calls per second)} for each batch of
    calls, against one child server (`serve(threads)`)."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    results = {}
    try:
        port = int(child.stdout.readline())
        for name, calls in batches.items():
            if callable(calls):  # needs the server (leases to heartbeat)
                calls = calls(port)
            asyncio.run(drive(port, calls[:200], 50))  # connections up, code paths warm
            before, start = cpu_seconds(child.pid), time.monotonic()
            asyncio.run(drive(port, calls, concurrency))
            wall = time.monotonic() - start
            used = cpu_seconds(child.pid) - before
            results[name] = (1e3 * used / len(calls), len(calls) / wall)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    return results


def heartbeats(port: int, count: int) -> list[Call]:
    """Lease every member (one worker each), then `count` heartbeats over them."""
    stub = pb_grpc.CoordinatorStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    leases = []
    for i in range(LEASED):
        request = pb.RequestWorkRequest(worker_id=f"w{i:04d}", max_leases=1, request_id=f"r{i}")
        leases += [(f"w{i:04d}", x.lease_id) for x in stub.RequestWork(request, timeout=60).leases]
    return [
        ("Heartbeat", pb.HeartbeatRequest(lease_id=lease, worker_id=worker, epochs_done=1))
        for worker, lease in (leases[k % len(leases)] for k in range(count))
    ]


def coordinator_paths(calls: int, concurrency: int) -> dict:
    waits = [
        ("RequestWork", pb.RequestWorkRequest(worker_id=f"idle{k % 500:04d}", max_leases=1))
        for k in range(calls)
    ]
    return server_cost(
        0,
        {
            "Heartbeat": lambda port: heartbeats(port, calls),
            "RequestWork answered WAIT": waits,
            "GetStatus": [("GetStatus", pb.GetStatusRequest())] * (calls // 5),
        },
        concurrency,
    )


def change_costs(population: int) -> dict:
    """In-process, one caller: (CPU ms, wall ms) per lease grant and per report."""
    service = open_service(population, Path(tempfile.mkdtemp(prefix="bench-rpc-")))
    out = {}
    cpu, wall = time.process_time(), time.monotonic()
    workers = [f"w{i:04d}" for i in range(population)]
    leases = [service.request_work(worker, 1).leases[0] for worker in workers]
    out["lease grant"] = per_call(cpu, wall, population)
    cpu, wall = time.process_time(), time.monotonic()
    for worker, lease in list(zip(workers, leases, strict=True))[:-1]:  # no generation closes
        report(service, lease, worker)
    out["report"] = per_call(cpu, wall, population - 1)
    return out


def per_call(cpu: float, wall: float, calls: int) -> tuple[float, float]:
    return (
        1e3 * (time.process_time() - cpu) / calls,
        1e3 * (time.monotonic() - wall) / calls,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200, help="calls in flight")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--population", type=int, default=1024, help="for part 3")
    ap.add_argument("--aio", action="store_true", help="also an empty grpc.aio server")
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    print(f"grpcio {grpc.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("\n| empty server, threads | server CPU ms per call | calls/s |\n|---|---|---|")
    empty = [("Heartbeat", pb.HeartbeatRequest())] * args.calls
    for threads in args.threads:
        (ms, rate) = server_cost(threads, {"empty": empty}, args.concurrency)["empty"]
        print(f"| {threads} | {ms:.3f} | {rate:,.0f} |")
    if args.aio:
        (ms, rate) = server_cost(-1, {"empty": empty}, args.concurrency)["empty"]
        print(f"| grpc.aio (no pool) | {ms:.3f} | {rate:,.0f} |")
    print("\n| coordinator, 256 members leased | server CPU ms per call | calls/s |\n|---|---|---|")
    for name, (ms, rate) in coordinator_paths(args.calls, args.concurrency).items():
        print(f"| {name} | {ms:.3f} | {rate:,.0f} |")
    print(f"\n| in-process, population {args.population} | CPU ms | wall ms |\n|---|---|---|")
    for name, (cpu, wall) in change_costs(args.population).items():
        print(f"| {name} | {cpu:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
