"""Resource bounds of the coordinator's gRPC server, and the interceptor that
enforces the per-call ones.

A misbehaving or hostile client must not exhaust the coordinator's memory or
threads. The bounds, and where each is enforced:

    request size        4 MiB        grpc.max_receive_message_length (server)
    concurrent RPCs     4096         grpc.server(maximum_concurrent_rpcs=...)
    WatchStatus streams threads / 2  `RequestGuard` (each stream holds a thread)
    undecodable bytes   refused      `RequestGuard` -> INVALID_ARGUMENT
    report payload      see validation.py (epochs, metric names, strings)
    leases per worker   16 active    CoordinatorService.max_leases_per_request
    population          1024         RunConfig (pbt.population)

Everything over a bound is refused with RESOURCE_EXHAUSTED or
INVALID_ARGUMENT before the service looks at the request, so it changes
nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from autolfads.coordinator.security.interceptors import WrapCache, rewrap

MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Beyond this many calls in flight (running or queued for a thread) grpc
# refuses new ones with RESOURCE_EXHAUSTED; clients retry those briefly.
DEFAULT_MAX_CONCURRENT_RPCS = 4096
# Replies (a status with 1024 members and their lineage) may exceed 4 MiB.
MAX_REPLY_BYTES = 64 * 1024 * 1024


def server_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_send_message_length", MAX_REPLY_BYTES),
    ]


class _Undecodable:
    """Stands in for a request whose bytes are not the method's message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as err:  # any parse failure is the client's fault
            return _Undecodable(type(err).__name__)

    return parse


def _method(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class RequestGuard(grpc.ServerInterceptor):
    """Undecodable requests -> INVALID_ARGUMENT (not INTERNAL), and at most
    `max_streams` server-streaming calls at once (RESOURCE_EXHAUSTED beyond),
    so watchers can never take every thread from the workers."""

    def __init__(self, max_streams: int) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams {max_streams} must be >= 1")
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)
        self._cache = WrapCache()

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        path = handler_call_details.method
        return self._cache.get(path, handler, lambda: self._wrap(_method(path), handler))

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return rewrap(
            handler,
            unary=lambda behaviour: self._unary(method, behaviour),
            stream=lambda behaviour: self._stream(method, behaviour),
            request_deserializer=_tolerant(handler.request_deserializer),
        )

    @staticmethod
    def _check(method: str, request: Any, context: grpc.ServicerContext) -> None:
        if isinstance(request, _Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method}: the request bytes are not a valid message ({request.reason})",
            )

    def _unary(self, method: str, behaviour: Callable) -> Callable:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            self._check(method, request, context)
            return behaviour(request, context)

        return guarded

    def _stream(self, method: str, behaviour: Callable) -> Callable:
        def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._check(method, request, context)
            if not self._streams.acquire(blocking=False):
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{method}: {self.max_streams} streams are open already; "
                    "poll GetStatus instead or retry later",
                )
            try:
                yield from behaviour(request, context)
            finally:
                self._streams.release()

        return guarded
