"""Typed client of the coordinator: what the trainer, the CLI and users' scripts use.

    with CoordinatorClient("10.0.0.5:50051") as client:
        status = client.status()
        print(status.generation, status.best)

Every call has a deadline. Every RPC of the protocol is idempotent
(RequestWork through its request_id), so every call is retried on
UNAVAILABLE: quickly by the channel's retry policy, then by a slower loop
with backoff until `unavailable_wait_s` has passed in total, which rides out
a coordinator restart. After that `CoordinatorUnavailable` is raised. Other
failures come back as the domain exceptions of `coordinator.errors`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autolfads.coordinator import convert
from autolfads.coordinator.errors import CoordinatorUnavailable
from autolfads.coordinator.messages import (
    HeartbeatReply,
    ReportAck,
    SegmentReport,
    StatusView,
    WorkReply,
)
from autolfads.coordinator.server import SERVICE_NAME
from autolfads.coordinator.wire_errors import from_rpc_error
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_UNAVAILABLE_WAIT_S = 300.0
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

# Fast, transparent retries inside one call (gRPC caps maxAttempts at 5).
SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": SERVICE_NAME}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    # Reconnect quickly once a restarted coordinator is back (default max 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


class CoordinatorClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        unavailable_wait_s: float = DEFAULT_UNAVAILABLE_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.unavailable_wait_s = unavailable_wait_s
        self._sleep = sleep
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # ------------------------------------------------------------ protocol

    def request_work(self, worker_id: str, max_leases: int = 1) -> WorkReply:
        """Leases (action "train"), "wait" (see retry_after_s) or "done"."""
        # One id for all retries of this request: the server replays its answer.
        request = pb.RequestWorkRequest(
            worker_id=worker_id, max_leases=max_leases, request_id=uuid.uuid4().hex
        )
        return convert.work_from_proto(self._call(self._stub.RequestWork, request))

    def heartbeat(self, lease_id: str, worker_id: str, epochs_done: int = 0) -> HeartbeatReply:
        request = pb.HeartbeatRequest(
            lease_id=lease_id, worker_id=worker_id, epochs_done=epochs_done
        )
        return convert.heartbeat_from_proto(self._call(self._stub.Heartbeat, request))

    def report(self, report: SegmentReport) -> ReportAck:
        return convert.ack_from_proto(
            self._call(self._stub.ReportResult, convert.report_to_proto(report))
        )

    def status(self) -> StatusView:
        return convert.status_from_proto(self._call(self._stub.GetStatus, pb.GetStatusRequest()))

    def watch(self, timeout_s: float | None = None) -> Iterator[StatusView]:
        """The current status, then one after every change, until the search
        ends (or `timeout_s` passes: a long deadline, since streams are long)."""
        stream = self._stub.WatchStatus(pb.WatchStatusRequest(), timeout=timeout_s)
        try:
            for message in stream:
                yield convert.status_from_proto(message)
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.target) from None
        finally:
            stream.cancel()

    def cancel(self, reason: str = "") -> str:
        """Cancel the search; returns its state afterwards (idempotent)."""
        reply = self._call(self._stub.CancelSearch, pb.CancelSearchRequest(reason=reason))
        return convert.search_state_from_proto(reply.state)

    def health(self, service: str = SERVICE_NAME) -> str:
        """'SERVING' or 'NOT_SERVING' (one try, no retry loop)."""
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.target) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ------------------------------------------------------------ plumbing

    def _call(self, method: Callable[..., T], request: Any) -> T:
        start = time.monotonic()
        delay = 0.2
        while True:
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                waited = time.monotonic() - start
                if err.code() not in _RETRYABLE or waited >= self.unavailable_wait_s:
                    failure = from_rpc_error(err, self.target)
                    if err.code() in _RETRYABLE:
                        raise CoordinatorUnavailable(
                            f"coordinator {self.target} unreachable for {waited:.0f} s: {failure}"
                        ) from None
                    raise failure from None
                log.info(
                    "coordinator %s unavailable (%s); retrying in %.1f s",
                    self.target,
                    err.code().name,
                    delay,
                )
                self._sleep(min(delay, max(self.unavailable_wait_s - waited, 0.0)))
                delay = min(delay * 2, 5.0)
