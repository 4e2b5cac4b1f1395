"""The least a Python gRPC coordinator can do for `bench_coordinator.py`'s
load: `bench_coordinator.py --floor` serves the same protocol from this
script instead of `autolfads coordinator`.

What it keeps: a `grpc.aio` server on one event loop with the
coordinator's server options (`limits.server_options`), the same proto
messages, and the protocol's shape for a synchronous search: each
generation's members are leased once; RequestWork with `wait_s` is held
on the loop until a lease can be granted or the search ends (`held_s`
set, as the coordinator does); Heartbeat answers CONTINUE; when every
member of a generation has reported, the next one opens; after the last
one every worker is told DONE. What it drops: storage (no journal, no
fsync: an answer never waits for a write), PBT (no exploit or explore,
fixed hyperparameters), validation, authentication and interceptors,
lease expiry, retries' replay and the status view (GetStatus answers the
state and the generation only).

So its latencies under the load are a floor for any coordinator on this
machine written on Python's gRPC: what the gRPC runtime, asyncio and the
load generator beside them cost, with next to nothing of ours.

    python benchmarks/floor_coordinator.py POPULATION GENERATIONS PORT_FILE
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from autolfads.coordinator.security.limits import server_options
from autolfads.coordinator.wire.held_calls import MAX_HOLD_S
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

HPARAMS = {"lr_init": 1e-3}  # what the load generator's fake metric reads


class FloorCoordinator(pb_grpc.CoordinatorServicer):
    """A synchronous search of `population` members and `generations`
    generations, in memory, on the server's event loop (module doc)."""

    def __init__(self, population: int, generations: int) -> None:
        self.members = [f"m{i:04d}" for i in range(population)]
        self.max_generations = generations
        self.generation = 0
        self.queue = list(self.members)
        self.reported: set[str] = set()
        self.leases: set[str] = set()
        self.finished = False
        # Held calls, oldest first (an ordered set: a timeout removes its own).
        self.held: dict[asyncio.Future[None], None] = {}

    def _grant(self) -> pb.RequestWorkResponse | None:
        if self.finished:
            return pb.RequestWorkResponse(
                action=pb.RequestWorkResponse.DONE, search_state=pb.SEARCH_STATE_FINISHED
            )
        if not self.queue:
            return None
        member = self.queue.pop()
        lease_id = uuid.uuid4().hex
        self.leases.add(lease_id)
        lease = pb.Lease(
            lease_id=lease_id, member=member, generation=self.generation, hparams=HPARAMS,
            epochs=1, checkpoint_key=f"ckpt/{member}/{self.generation}", heartbeat_interval_s=30.0,
        )  # fmt: skip
        return pb.RequestWorkResponse(action=pb.RequestWorkResponse.TRAIN, leases=[lease])

    def _wake(self, count: int) -> None:
        for future in list(self.held)[:count]:
            del self.held[future]
            if not future.done():  # done: its hold timed out or its call ended
                future.set_result(None)

    async def RequestWork(
        self, request: pb.RequestWorkRequest, context: Any
    ) -> pb.RequestWorkResponse:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        held_s = 0.0
        while True:
            reply = self._grant()
            left = start + min(request.wait_s, MAX_HOLD_S) - time.monotonic()
            if reply is not None or left <= 0:
                break
            future = loop.create_future()
            self.held[future] = None
            since = time.monotonic()
            try:
                await asyncio.wait_for(future, left)
            except asyncio.TimeoutError:
                pass
            finally:
                self.held.pop(future, None)
            held_s += time.monotonic() - since
        if reply is None:
            reply = pb.RequestWorkResponse(action=pb.RequestWorkResponse.WAIT, retry_after_s=1.0)
        reply.held_s = held_s
        return reply

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        if request.lease_id not in self.leases:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown lease")
        return pb.HeartbeatResponse(action=pb.HeartbeatResponse.CONTINUE)

    async def ReportResult(
        self, request: pb.ReportResultRequest, context: Any
    ) -> pb.ReportResultResponse:
        if request.lease_id not in self.leases:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown lease")
        self.leases.discard(request.lease_id)
        self.reported.add(request.member)
        if len(self.reported) == len(self.members):
            self.reported.clear()
            self.generation += 1
            if self.generation == self.max_generations:
                self.finished = True
                self._wake(len(self.held))
            else:
                self.queue = list(self.members)
                self._wake(len(self.members))
        return pb.ReportResultResponse(accepted=True)

    async def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.SearchStatus:
        state = pb.SEARCH_STATE_FINISHED if self.finished else pb.SEARCH_STATE_RUNNING
        return pb.SearchStatus(
            state=state, generation=self.generation, population=len(self.members)
        )


async def serve(population: int, generations: int, port_file: Path) -> None:
    server = grpc.aio.server(options=server_options())
    servicer = FloorCoordinator(population, generations)
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # Whole or absent: the benchmark reads the port as soon as the file exists.
    tmp = port_file.with_name(port_file.name + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    await server.wait_for_termination()  # SIGTERM from the benchmark


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
