"""Server interceptors: per-RPC logging and counters.

`create_server` takes any number of extra `grpc.ServerInterceptor`s, so the
bearer-token check of a later security issue plugs in without touching the
servicer.
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
        self.seconds: Counter[str] = Counter()

    def record(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.calls[(method, code)] += 1
            self.seconds[method] += seconds

    def count(self, method: str, code: str = "OK") -> int:
        with self._lock:
            return self.calls[(method, code)]


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class LoggingInterceptor(grpc.ServerInterceptor):
    """Logs each call's method, code and duration; feeds `RpcMetrics`."""

    def __init__(self, metrics: RpcMetrics | None = None) -> None:
        self.metrics = metrics or RpcMetrics()

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _short(handler_call_details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

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
