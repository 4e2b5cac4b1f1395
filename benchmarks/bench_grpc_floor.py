"""The floor under any Python gRPC coordinator on this machine: server CPU
per call of an *empty* unary handler (no interceptors, no logic, no state).

Starts a bare `grpc.server` in a child process (the coordinator's Heartbeat
method answering an empty reply), drives it from this process with grpc.aio
clients (32 channels, `--concurrency` calls in flight), and reads the child's
CPU time from /proc. Repeats for each thread-pool size: the sync server hands
every call to a pool thread, and more threads cost more GIL hand-offs per
call. Compare with `bench_coordinator.py`'s "server CPU ms per RPC".

    python benchmarks/bench_grpc_floor.py [--calls 10000] [--threads 1 4 8 32]

Results go in benchmarks/README.md, section "Coordinator capacity".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc


class EmptyCoordinator(pb_grpc.CoordinatorServicer):
    def Heartbeat(self, request: pb.HeartbeatRequest, context: object) -> pb.HeartbeatResponse:
        return pb.HeartbeatResponse()


def serve(threads: int) -> None:
    """Child process: serve until stdin closes; print the bound port first."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    pb_grpc.add_CoordinatorServicer_to_server(EmptyCoordinator(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(port: int, calls: int, concurrency: int) -> None:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(32)]
    stubs = [pb_grpc.CoordinatorStub(c) for c in channels]
    left = [calls]

    async def client(i: int) -> None:
        stub = stubs[i % len(stubs)]
        while left[0] > 0:
            left[0] -= 1
            await stub.Heartbeat(pb.HeartbeatRequest(), timeout=60)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    for c in channels:
        await c.close()


def measure(threads: int, calls: int, concurrency: int) -> tuple[float, float]:
    """(server CPU ms per call, calls per second) for one pool size."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        port = int(child.stdout.readline())
        asyncio.run(drive(port, 200, 50))  # connections up, code paths warm
        before, start = cpu_seconds(child.pid), time.monotonic()
        asyncio.run(drive(port, calls, concurrency))
        wall = time.monotonic() - start
        used = cpu_seconds(child.pid) - before
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    return 1e3 * used / calls, calls / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200, help="calls in flight")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    print(f"grpcio {grpc.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| server threads | server CPU ms per call | calls/s |\n|---|---|---|")
    for threads in args.threads:
        ms, rate = measure(threads, args.calls, args.concurrency)
        print(f"| {threads} | {ms:.3f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
