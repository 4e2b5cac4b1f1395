"""Typed client of the coordinator: what the trainer, the CLI and users' scripts use.

    with CoordinatorClient("10.0.0.5:50051") as client:
        status = client.status()
        print(status.generation, status.best)

Every call has a deadline. Every RPC of the protocol is idempotent
(RequestWork through its request_id), so every call is retried on
UNAVAILABLE, on a CANCELLED that this client did not cause (gRPC drops
calls a server has not accepted yet when too many wait, or have waited too
long) and on a refusal the server marks Overloaded (too many calls in
flight; a request over the size bound is not retried): quickly by the
channel's retry policy, then by a slower loop with backoff until `unavailable_wait_s` has passed in total, which rides out a
coordinator restart. After that `CoordinatorUnavailable` is raised. Other
failures come back as the domain exceptions of `coordinator.errors`.

Security (`ClientSecurity`): the bearer token goes with every call as
`authorization` metadata; TLS is used when `security.tls` is set; plaintext
to a non-loopback target needs `allow_plaintext`. Refusals (UNAUTHENTICATED,
PERMISSION_DENIED) and failed TLS handshakes are never retried: they raise
`Unauthenticated`, `PermissionDenied` or `TlsError` at once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autolfads.coordinator.search.errors import (
    CoordinatorError,
    CoordinatorUnavailable,
    Overloaded,
    TlsError,
)
from autolfads.coordinator.search.messages import (
    HeartbeatReply,
    ReportAck,
    SegmentReport,
    StatusView,
    WorkReply,
)
from autolfads.coordinator.security import limits
from autolfads.coordinator.security.auth import bearer_metadata
from autolfads.coordinator.security.exposure import ClientSecurity
from autolfads.coordinator.security.limits import MAX_REPLY_BYTES
from autolfads.coordinator.wire import convert
from autolfads.coordinator.wire.server import SERVICE_NAME
from autolfads.coordinator.wire.status_codes import error_kind, from_rpc_error
from autolfads.errors import ConfigError
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
# A held RequestWork (long poll) looks at its `cancel` event this often.
CANCEL_CHECK_S = 0.2
DEFAULT_UNAVAILABLE_WAIT_S = 300.0
# Pings while a call is open; the server allows one per MIN_CLIENT_PING_MS.
DEFAULT_KEEPALIVE_S = 30.0
_RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,  # never our own: a cancelled long poll returns None
)


def _why_unavailable(err: grpc.RpcError) -> str:
    """How a transient failure reads: whether the coordinator answered."""
    kind = error_kind(err)
    if kind == Overloaded.__name__:
        return "busy (it refused every try)"
    if kind:  # it answered, marked: its storage failed the change
        return "could not save its state"
    return "unreachable"


def _transient(err: grpc.RpcError) -> bool:
    """Worth asking again: the coordinator is unreachable, or said it is
    busy (RESOURCE_EXHAUSTED marked Overloaded). An unmarked
    RESOURCE_EXHAUSTED is a message over the size bound: permanent."""
    code = err.code()
    if code in _RETRYABLE:
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and error_kind(err) == Overloaded.__name__


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
                # RESOURCE_EXHAUSTED: the server's concurrent-call cap (a burst;
                # its refusal sets how long to wait, gRPC's server pushback);
                # CANCELLED: a call dropped before the server accepted it.
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"],
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
    ("grpc.max_receive_message_length", MAX_REPLY_BYTES),
)
# Substrings of grpc's details for a failed TLS handshake: not worth retrying.
_TLS_FAILURES = (
    "handshake failed",
    # This client's own TLS material is unusable (a garbled CA, a key not its
    # certificate's): every connection fails this way before any handshake.
    "failed to create security handshaker",
    "ssl_error",
    "certificate_verify_failed",
    "tsi_",
    "verification check failed",
)


def _check_seconds(name: str, value: float, low: float, fix: str, strict: bool = False) -> None:
    """A client setting in seconds, finite and above (or at) `low`: else one line."""
    ok = isinstance(value, int | float) and math.isfinite(value)
    if not (ok and (value > low if strict else value >= low)):
        bound = f"{'>' if strict else '>='} {low:g}"
        raise ConfigError(f"CoordinatorClient {name}={value!r}: must be a number {bound} ({fix})")


class CoordinatorClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        unavailable_wait_s: float = DEFAULT_UNAVAILABLE_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
        security: ClientSecurity | None = None,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
    ) -> None:
        """`keepalive_s`: while a call is open, ping the coordinator this
        often; one unanswered for as long again ends the call (UNAVAILABLE),
        so a watcher or a held request notices a coordinator that went
        silent (at least the server's `MIN_CLIENT_PING_MS`)."""
        _check_seconds(
            "timeout_s", timeout_s, 0.0, "a deadline in seconds, such as 30", strict=True
        )
        _check_seconds("unavailable_wait_s", unavailable_wait_s, 0.0, "0 to never wait")
        # A client that pings more often than the server allows is sent
        # GOAWAY ("too_many_pings") and every call on it fails.
        floor_s = limits.MIN_CLIENT_PING_MS / 1000
        _check_seconds(
            "keepalive_s",
            keepalive_s,
            floor_s,
            f"the coordinator allows a ping every {floor_s:g} s at most",
        )
        port = target.rpartition(":")[2]
        if port.isdigit() and not 1 <= int(port) <= 65535:
            # gRPC would dial the port modulo 65536 (99999 -> 34463).
            raise ConfigError(f"{target}: port {port} is outside 1-65535")
        security = security or ClientSecurity()
        security.check(target)
        self.target = target
        self.timeout_s = timeout_s
        self.unavailable_wait_s = unavailable_wait_s
        self._closed = False
        self._sleep = sleep
        self._metadata = bearer_metadata(security.token) if security.token else None
        self._tls = security.tls is not None
        ping_ms = round(keepalive_s * 1000)
        options = CHANNEL_OPTIONS + (
            ("grpc.keepalive_time_ms", ping_ms),
            ("grpc.keepalive_timeout_ms", ping_ms),
            ("grpc.http2.ping_timeout_ms", ping_ms),  # what recent gRPC times a ping by
            # Keep pinging a stream that carries no data (a quiet WatchStatus);
            # by default a second ping would wait 5 minutes for data.
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_time_between_pings_ms", ping_ms),
        )
        if security.tls is not None:
            self._channel = grpc.secure_channel(
                target,
                security.tls.credentials(),
                options=options + security.tls.channel_options(),
            )
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True  # calls it cancels are not retried
        self._channel.close()

    # ------------------------------------------------------------ protocol

    def request_work(
        self,
        worker_id: str,
        max_leases: int = 1,
        *,
        wait_s: float = 0.0,
        cancel: threading.Event | None = None,
        request_id: str | None = None,
    ) -> WorkReply:
        """Leases (action "train"), "wait" (see retry_after_s) or "done".

        `request_id` names the request across calls: a caller that asks
        again after this call failed (a longer outage) passes the same id,
        so that leases granted to a lost answer come back instead of
        staying with a worker that never heard of them. Default: a new id.

        `wait_s` > 0 is a long poll: with nothing to do now, the coordinator
        may hold the call that long and answer as soon as there is work (the
        deadline grows by `wait_s`; a coordinator that predates long polls
        answers WAIT at once). Setting `cancel` ends the wait early; the
        request is then asked again without waiting, so that a lease granted
        meanwhile comes back to the caller instead of being lost.
        """
        # One id for all retries of this request: the server replays its answer.
        request = pb.RequestWorkRequest(
            worker_id=worker_id,
            max_leases=max_leases,
            request_id=request_id or uuid.uuid4().hex,
            wait_s=wait_s,
        )
        if wait_s > 0 and math.isfinite(wait_s):  # others: the server names the problem
            timeout_s = self.timeout_s + wait_s
            held = self._retrying(lambda: self._held_call(request, timeout_s, cancel), cancel)
            if held is not None:
                return convert.work_from_proto(held)
            request.wait_s = 0.0
        return convert.work_from_proto(self._call(self._stub.RequestWork, request, cancel))

    def heartbeat(
        self,
        lease_id: str,
        worker_id: str,
        epochs_done: int = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> HeartbeatReply:
        """Setting `cancel` ends the retries through an outage (a stopping
        worker must not wait it out); so for `report`."""
        request = pb.HeartbeatRequest(
            lease_id=lease_id, worker_id=worker_id, epochs_done=epochs_done
        )
        return convert.heartbeat_from_proto(self._call(self._stub.Heartbeat, request, cancel))

    def report(self, report: SegmentReport, *, cancel: threading.Event | None = None) -> ReportAck:
        return convert.ack_from_proto(
            self._call(self._stub.ReportResult, convert.report_to_proto(report), cancel)
        )

    def status(self) -> StatusView:
        return convert.status_from_proto(self._call(self._stub.GetStatus, pb.GetStatusRequest()))

    def watch(self, timeout_s: float | None = None) -> Generator[StatusView, None, None]:
        """The current status, then one after every change, until the search
        ends (or `timeout_s` passes: a long deadline, since streams are long).
        A coordinator restart is ridden out as in every call (for
        `unavailable_wait_s` from the failure; a status already given is not
        given again). Closing the generator cancels the stream."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        last = -1
        failed_at: float | None = None
        delay = 0.2
        while True:
            left = None if end is None else max(end - time.monotonic(), 0.0)
            try:
                stream = self._stub.WatchStatus(
                    pb.WatchStatusRequest(), timeout=left, metadata=self._metadata
                )
            except ValueError:  # closed while it waited to watch again
                if not self._closed:
                    raise
                raise self._closed_error() from None
            try:
                for message in stream:
                    status = convert.status_from_proto(message)
                    if status.revision != last:
                        # News: the coordinator is back (a repeat of the last
                        # status, which a stopping one still sends, is not).
                        failed_at, delay = None, 0.2
                        last = status.revision
                        yield status
                return
            except grpc.RpcError as err:
                now = time.monotonic()
                failed_at = now if failed_at is None else failed_at
                out_of_time = end is not None and now >= end
                given_up = now - failed_at >= self.unavailable_wait_s
                # A refused stream (all watcher slots taken) is not retried:
                # the watchers holding them are long-lived.
                busy = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                if (
                    self._closed
                    or self._tls_failure(err)
                    or not _transient(err)
                    or busy
                    or out_of_time
                    or given_up
                ):
                    raise self._failure(err) from None
                log.info(
                    "watch of %s interrupted (%s); watching again", self.target, err.code().name
                )
            finally:
                stream.cancel()
            self._sleep(min(delay, max(self.unavailable_wait_s - (now - failed_at), 0.0)))
            delay = min(delay * 2, 5.0)

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
            raise self._failure(err) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ------------------------------------------------------------ plumbing

    def _call(
        self, method: Callable[..., T], request: Any, cancel: threading.Event | None = None
    ) -> T:
        return self._retrying(
            lambda: method(request, timeout=self.timeout_s, metadata=self._metadata), cancel
        )

    def _held_call(
        self, request: pb.RequestWorkRequest, timeout_s: float, cancel: threading.Event | None
    ) -> pb.RequestWorkResponse | None:
        """A long-poll RequestWork; None if `cancel` was set before its answer."""
        call = self._stub.RequestWork.future(request, timeout=timeout_s, metadata=self._metadata)
        if cancel is None:
            return call.result()
        answered = threading.Event()
        call.add_done_callback(lambda _: answered.set())
        while not answered.wait(CANCEL_CHECK_S):
            if cancel.is_set() and call.cancel():
                return None
        return call.result()

    def _retrying(self, send: Callable[[], T], cancel: threading.Event | None = None) -> T:
        """`send()`, retried while the coordinator is unreachable, for at
        most `unavailable_wait_s` from the first failure (a long poll's
        hold before it is not an outage, and the request must be sent again
        at least once); setting `cancel` ends the retries (a stopping worker
        must not wait out an outage)."""
        start: float | None = None
        delay = 0.2
        while True:
            try:
                return send()
            except ValueError:  # gRPC's word for a call on a closed channel
                if not self._closed:
                    raise
                raise self._closed_error() from None
            except grpc.RpcError as err:
                start = time.monotonic() if start is None else start
                waited = time.monotonic() - start
                if self._tls_failure(err):
                    raise self._failure(err) from None
                if self._closed:
                    raise from_rpc_error(err, self.target) from None
                stopping = cancel is not None and cancel.is_set()
                transient = _transient(err)
                if not transient or waited >= self.unavailable_wait_s or stopping:
                    failure = from_rpc_error(err, self.target)
                    if transient:
                        raise CoordinatorUnavailable(
                            f"coordinator {self.target} {_why_unavailable(err)} for "
                            f"{waited:.0f} s: {failure}{self._plaintext_hint(err)}"
                        ) from None
                    raise failure from None
                log.info(
                    "coordinator %s unavailable (%s); retrying in %.1f s",
                    self.target,
                    err.code().name,
                    delay,
                )
                pause = min(delay, max(self.unavailable_wait_s - waited, 0.0))
                if cancel is not None:
                    cancel.wait(pause)
                else:
                    self._sleep(pause)
                delay = min(delay * 2, 5.0)

    def _closed_error(self) -> CoordinatorError:
        """What a call gets that `close` ended between its tries (from
        another thread), or that was made after it."""
        return CoordinatorError(f"coordinator {self.target}: this client was closed")

    def _plaintext_hint(self, err: grpc.RpcError) -> str:
        """A TLS server hangs up on a plaintext client: say so."""
        details = (err.details() or "").lower() if hasattr(err, "details") else ""
        if self._tls or "socket closed" not in details:
            return ""
        return " (if the coordinator serves TLS, give --tls-ca or --tls-dir)"

    def _tls_failure(self, err: grpc.RpcError) -> bool:
        details = (err.details() or "").lower() if hasattr(err, "details") else ""
        return err.code() == grpc.StatusCode.UNAVAILABLE and any(
            marker in details for marker in _TLS_FAILURES
        )

    def _failure(self, err: grpc.RpcError) -> Exception:
        """The domain exception for `err`; a failed handshake as one clear TlsError."""
        if not self._tls_failure(err):
            return from_rpc_error(err, self.target)
        details = err.details() or ""
        if "certificate_verify_failed" in details.lower():
            why = "its certificate is not signed by a CA this client trusts (give --tls-ca)"
        elif "hostname verification" in details.lower():
            why = "its certificate does not name this address (give --tls-server-name NAME)"
        elif "wrong_version_number" in details.lower() or "packet_length" in details.lower():
            why = "it does not speak TLS (drop the TLS options, or enable TLS on it)"
        elif "failed to create security handshaker" in details.lower():
            why = (
                "this client's CA, certificate or key cannot be used "
                "(check --tls-ca, --tls-client-cert and --tls-client-key)"
            )
        else:
            why = details.splitlines()[0][-200:]
        return TlsError(f"coordinator {self.target}: TLS handshake failed: {why}")
