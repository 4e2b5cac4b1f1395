"""Server interceptors: per-RPC logging and counters, plus `rewrap`, the one
helper every interceptor uses to wrap a method handler's behaviour.

`create_server` chains: logging (outermost, so it sees every refusal),
authentication (`auth.AuthInterceptor`), request limits
(`limits.RequestGuard`), then any extra interceptors, so security and
metrics never touch the servicer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc

log = logging.getLogger("autolfads.coordinator.rpc")


class RpcMetrics:
    """Calls per (method, status code) and total handler seconds per method."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.seconds: dict[str, float] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.calls[(method, code)] += 1
            self.seconds[method] = self.seconds.get(method, 0.0) + seconds

    def count(self, method: str, code: str = "OK") -> int:
        with self._lock:
            return self.calls[(method, code)]


def rewrap(
    handler: grpc.RpcMethodHandler,
    *,
    unary: Callable[[Callable], Callable] | None = None,
    stream: Callable[[Callable], Callable] | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """`handler` with its unary-unary behaviour wrapped by `unary(behaviour)` or its
    unary-stream one by `stream(behaviour)`; client-streaming handlers unchanged."""
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None and unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None and stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class WrapCache:
    """The wrapped handler of each method, made once: an interceptor sees the
    same inner handler object for a method on every call, so re-wrapping it
    (new closures and handler tuples, thousands of times a second under
    load) is work thrown away. A different inner handler (e.g. a refusal
    made per call) is wrapped afresh and replaces the entry."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any, wrap: Callable[[], Any]) -> Any:
        entry = self._entries.get(method)
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = wrap()
        if len(self._entries) < 1024:  # method paths are few; never grow unbounded
            self._entries[method] = (handler, wrapped)
        return wrapped


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class LoggingInterceptor(grpc.ServerInterceptor):
    """Logs each call's method, code and duration; feeds `RpcMetrics`."""

    def __init__(self, metrics: RpcMetrics | None = None) -> None:
        self.metrics = metrics or RpcMetrics()
        self._cache = WrapCache()

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        path = handler_call_details.method
        return self._cache.get(path, handler, lambda: self._wrap(_short(path), handler))

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return rewrap(
            handler,
            unary=lambda behaviour: self._wrap_unary(method, behaviour),
            stream=lambda behaviour: self._wrap_stream(method, behaviour),
        )

    def _done(self, method: str, context: grpc.ServicerContext, start: float, failed: bool) -> None:
        code = context.code() if hasattr(context, "code") else None
        name = code.name if code is not None else ("UNKNOWN" if failed else "OK")
        elapsed = time.perf_counter() - start
        self.metrics.record(method, name, elapsed)
        level = logging.DEBUG if name == "OK" else logging.INFO
        log.log(level, "%s %s %.1f ms", method, name, elapsed * 1e3)

    def _wrap_unary(self, method: str, behaviour: Callable) -> Callable:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start, failed = time.perf_counter(), True
            try:
                response = behaviour(request, context)
                failed = False
                return response
            finally:
                self._done(method, context, start, failed)

        return wrapped

    def _wrap_stream(self, method: str, behaviour: Callable) -> Callable:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start, failed = time.perf_counter(), True
            try:
                yield from behaviour(request, context)
                failed = False
            finally:
                self._done(method, context, start, failed)

        return wrapped
