"""The gRPC servicer: proto -> domain -> `CoordinatorService` -> proto.

Thin on purpose: no PBT logic here. Every handler turns domain exceptions
into status codes via `wire_errors.to_status` (the one mapping) and aborts
the call with trailing metadata naming the error (`_abort`).

Handlers run on the server's event loop (`server.py`). A status, a
heartbeat, a WAIT or the in-memory part of a change takes 0.1-0.3 ms under
the service lock, so they run right there: under load, handing each call to
a pool thread and passing the GIL among the pool's threads cost more than
the calls. A change is answered once a journal entry covering it is
written, which the call awaits (`CommitBridge`) instead of holding a
thread. A RequestWork that asks to wait (`wait_s`, a long poll) and finds
nothing to do is held on the loop until there is (`HeldCalls`). A status
is answered once the changes it shows are written, like a change. Only calls
that may block for long (WatchStatus's wait for the next change,
CancelSearch's flush) run on the loop's executor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from autolfads.coordinator.search.errors import CoordinatorUnavailable
from autolfads.coordinator.search.messages import StatusView
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.wire import convert
from autolfads.coordinator.wire.commit_bridge import CommitBridge
from autolfads.coordinator.wire.held_calls import HeldCalls, hold_budget
from autolfads.coordinator.wire.status_codes import ERROR_KIND_KEY, to_status
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc
from autolfads.storage.errors import StorageError

log = logging.getLogger(__name__)

# WatchStatus re-checks the client and the search at least this often.
WATCH_POLL_S = 1.0
# A status waits for the write of what it shows; after this many lost
# writes in a row it fails (UNAVAILABLE) and the client asks again.
STATUS_WRITE_ATTEMPTS = 3


async def _abort(context: Any, err: Exception) -> NoReturn:
    code, message, kind = to_status(err)  # an internal error is logged there
    if kind:
        context.set_trailing_metadata(((ERROR_KIND_KEY, kind),))
    await context.abort(code, message)
    raise AssertionError("context.abort returned")


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(
        self,
        service: CoordinatorService,
        bridge: CommitBridge,
        held: HeldCalls,
        watch_poll_s: float = WATCH_POLL_S,
    ) -> None:
        self._service = service
        self._bridge = bridge
        self._held = held
        self._watch_poll_s = watch_poll_s
        self._members = convert.MemberProtos()

    async def RequestWork(
        self, request: pb.RequestWorkRequest, context: Any
    ) -> pb.RequestWorkResponse:
        try:
            budget = hold_budget(request.wait_s, context.time_remaining())
            start = time.monotonic()
            held_s = 0.0
            while True:
                reply, ticket = self._service.request_work_staged(
                    request.worker_id, request.max_leases, request.request_id
                )
                left = start + budget - time.monotonic()
                # Stopping (draining): hold nobody.
                if reply.action != "wait" or left <= 0 or self._held.full or self._service.draining:
                    break
                # No await between the check above and joining the waiters.
                since = time.monotonic()
                await self._held.hold(left, request.worker_id)
                held_s += time.monotonic() - since
            if ticket is not None:
                await self._bridge.written(ticket)
            if held_s:
                reply = dataclasses.replace(reply, held_s=held_s)
            return convert.work_to_proto(reply)
        except Exception as err:  # mapped to a status code; nothing escapes raw
            await _abort(context, err)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        try:
            reply = self._service.heartbeat(
                request.lease_id, request.worker_id, request.epochs_done
            )
            return convert.heartbeat_to_proto(reply)
        except Exception as err:
            await _abort(context, err)

    async def ReportResult(
        self, request: pb.ReportResultRequest, context: Any
    ) -> pb.ReportResultResponse:
        try:
            ack, ticket = self._service.report_staged(convert.report_from_proto(request))
            await self._bridge.written(ticket)
            return convert.ack_to_proto(ack)
        except Exception as err:
            await _abort(context, err)

    async def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.SearchStatus:
        try:
            return convert.status_to_proto(await self._written_status(), self._members)
        except Exception as err:
            await _abort(context, err)

    async def WatchStatus(
        self, request: pb.WatchStatusRequest, context: Any
    ) -> AsyncIterator[pb.SearchStatus]:
        loop = asyncio.get_running_loop()
        revision = -1
        while True:
            try:
                status = await self._written_status()
            except Exception as err:
                await _abort(context, err)
            if self._service.draining and not status.terminal:
                # Stopping, not ended: an error the watcher retries, never the
                # clean end it would take for the search's.
                await _abort(
                    context,
                    CoordinatorUnavailable("the coordinator is stopping; the search goes on"),
                )
            if status.revision != revision:
                revision = status.revision
                yield convert.status_to_proto(status, self._members)
            if status.terminal:
                return  # the stream ends with the search
            await loop.run_in_executor(
                None, self._service.wait_for_change, revision, self._watch_poll_s
            )

    async def _written_status(self) -> StatusView:
        """The status once every change it shows is written: a reader must
        not see a state (say, the search ended) that a crash would undo. A
        lost write rolled those changes back: view the state again (a few
        times; then the storage error goes to the caller, who retries)."""
        for attempt in range(STATUS_WRITE_ATTEMPTS):
            status, ticket = self._service.status_staged()
            try:
                await self._bridge.written(ticket)
            except StorageError:
                if attempt + 1 == STATUS_WRITE_ATTEMPTS:
                    raise
                continue
            return status
        raise AssertionError("unreachable")

    async def CancelSearch(
        self, request: pb.CancelSearchRequest, context: Any
    ) -> pb.CancelSearchResponse:
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(None, self._service.cancel, request.reason)
            return pb.CancelSearchResponse(state=convert.search_state_to_proto(state))  # type: ignore[arg-type]
        except Exception as err:
            await _abort(context, err)
