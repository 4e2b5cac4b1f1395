"""The gRPC servicer: proto -> domain -> `CoordinatorService` -> proto.

Thin on purpose: no PBT logic here. Every handler runs through `_handle`,
which turns domain exceptions into status codes via `wire_errors.to_status`
(the one mapping) and aborts the call with trailing metadata naming the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.wire import convert
from autolfads.coordinator.wire.status_codes import ERROR_KIND_KEY, to_status
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

# WatchStatus re-checks the client and the search at least this often.
WATCH_POLL_S = 1.0


def _handle(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    try:
        return call()
    except Exception as err:  # mapped to a status code; nothing escapes raw
        code, message, kind = to_status(err)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("internal error in the coordinator")
        if kind:
            context.set_trailing_metadata(((ERROR_KIND_KEY, kind),))
        context.abort(code, message)
        raise AssertionError("context.abort returned") from None


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, service: CoordinatorService, watch_poll_s: float = WATCH_POLL_S) -> None:
        self._service = service
        self._watch_poll_s = watch_poll_s
        self._members = convert.MemberProtos()

    def RequestWork(self, request: pb.RequestWorkRequest, context: Any) -> pb.RequestWorkResponse:
        return _handle(
            context,
            lambda: convert.work_to_proto(
                self._service.request_work(
                    request.worker_id, request.max_leases, request.request_id
                )
            ),
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        return _handle(
            context,
            lambda: convert.heartbeat_to_proto(
                self._service.heartbeat(request.lease_id, request.worker_id, request.epochs_done)
            ),
        )

    def ReportResult(
        self, request: pb.ReportResultRequest, context: Any
    ) -> pb.ReportResultResponse:
        return _handle(
            context,
            lambda: convert.ack_to_proto(self._service.report(convert.report_from_proto(request))),
        )

    def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.SearchStatus:
        return _handle(
            context, lambda: convert.status_to_proto(self._service.status(), self._members)
        )

    def WatchStatus(
        self, request: pb.WatchStatusRequest, context: Any
    ) -> Iterator[pb.SearchStatus]:
        revision = -1
        while context.is_active():
            status = _handle(context, self._service.status)
            if status.revision != revision:
                revision = status.revision
                yield convert.status_to_proto(status, self._members)
            if status.terminal or self._service.draining:
                return
            self._service.wait_for_change(revision, self._watch_poll_s)

    def CancelSearch(
        self, request: pb.CancelSearchRequest, context: Any
    ) -> pb.CancelSearchResponse:
        return _handle(
            context,
            lambda: pb.CancelSearchResponse(
                state=convert.search_state_to_proto(self._service.cancel(request.reason))  # type: ignore[arg-type]
            ),
        )
