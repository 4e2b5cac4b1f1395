"""Server interceptors: per-RPC logging and counters, plus `rewrap`, the one
helper every interceptor uses to wrap a method handler's behaviour.

`create_server` chains: logging (outermost, so it sees every refusal),
authentication (`auth.AuthInterceptor`), request limits
(`limits.RequestGuard`), then any extra interceptors, so security and
metrics never touch the servicer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc

log = logging.getLogger("autolfads.coordinator.rpc")

# The name under which calls to a path the server does not serve are logged
# and counted: a client makes such paths up, as many as it likes, and each
# name is a counter kept for good.
UNKNOWN_METHOD = "(unknown)"


class RpcMetrics:
    """Calls per (method, status code) and total handler seconds per method."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._waiters = 0  # `wait_for` callers: only they need a notify
        self.calls: Counter[tuple[str, str]] = Counter()
        self.seconds: dict[str, float] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.calls[(method, code)] += 1
            self.seconds[method] = self.seconds.get(method, 0.0) + seconds
            if self._waiters:
                self._lock.notify_all()

    def count(self, method: str, code: str = "OK") -> int:
        with self._lock:
            return self.calls[(method, code)]

    def wait_for(self, method: str, code: str, count: int, timeout_s: float) -> int:
        """The count of (`method`, `code`) once it reaches `count` (or after
        `timeout_s`). A refused call's status can reach its client before
        the call is counted here: gRPC sends an abort's status first."""
        with self._lock:
            self._waiters += 1
            try:
                self._lock.wait_for(lambda: self.calls[(method, code)] >= count, timeout_s)
            finally:
                self._waiters -= 1
            return self.calls[(method, code)]


# A behaviour: the coroutine function that serves one unary call.
Behaviour = Callable[[Any, Any], Awaitable[Any]]
# Wraps a unary behaviour in another (made once per method, see `WrapCache`).
# Unary calls are the hot path (thousands a second under load), so their
# wrapper is one plain coroutine: an `asynccontextmanager` around each call
# cost an async generator, its context manager and two more awaits per
# interceptor per call.
UnaryWrap = Callable[[Behaviour], Behaviour]
# A guard for server-streaming calls: called with (request, context), returns
# an async context manager that the stream runs inside (it may abort the
# call on entry).
Guard = Callable[[Any, Any], AbstractAsyncContextManager[None]]


def rewrap(
    handler: grpc.RpcMethodHandler,
    *,
    unary: UnaryWrap | None = None,
    stream: Guard | None = None,
    bidi: Guard | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """`handler` with its unary-unary behaviour replaced by `unary(behaviour)`,
    its unary-stream one run inside `stream(request, context)`, or its
    stream-stream one inside `bidi(requests, context)`; stream-unary
    handlers unchanged."""
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None and unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None and stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            guarded_stream(handler.unary_stream, stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None and bidi is not None:
        return grpc.stream_stream_rpc_method_handler(
            guarded_stream(handler.stream_stream, bidi),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def guarded_stream(behaviour: Callable, guard: Guard) -> Callable:
    """A server-streaming behaviour of the same kind as `behaviour`: the
    asyncio server takes async generators (ours) and coroutines that call
    `context.write` (the health service's Watch), and must not see one
    dressed as the other."""
    if inspect.isasyncgenfunction(behaviour):

        async def messages(request: Any, context: Any) -> AsyncIterator[Any]:
            async with guard(request, context):
                async for message in behaviour(request, context):
                    yield message

        return messages

    async def writes(request: Any, context: Any) -> None:
        async with guard(request, context):
            await behaviour(request, context)

    return writes


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


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    """Logs each call's method, code and duration; feeds `RpcMetrics`.
    `methods`: the paths the server serves; a call to any other path (which
    the authentication refuses) counts as `UNKNOWN_METHOD`. None: every path
    by its own name."""

    def __init__(
        self, metrics: RpcMetrics | None = None, methods: Collection[str] | None = None
    ) -> None:
        self.metrics = metrics or RpcMetrics()
        self._methods = None if methods is None else frozenset(methods)
        self._cache = WrapCache()

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        path = handler_call_details.method
        known = self._methods is None or path in self._methods
        name = _short(path) if known else UNKNOWN_METHOD
        return self._cache.get(path, handler, lambda: self._wrap(name, handler))

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def unary(behaviour: Behaviour) -> Behaviour:
            async def timed(request: Any, context: Any) -> Any:
                start, outcome = time.perf_counter(), "UNKNOWN"
                try:
                    reply = await behaviour(request, context)
                    outcome = "OK"
                    return reply
                except asyncio.CancelledError:  # the client cancelled, or its deadline passed
                    outcome = "CANCELLED"
                    raise
                finally:
                    self._done(method, context, outcome, start)

            return timed

        def guard(request: Any, context: Any) -> AbstractAsyncContextManager[None]:
            return self._timed(method, context)

        return rewrap(handler, unary=unary, stream=guard)

    def _done(self, method: str, context: Any, outcome: str, start: float) -> None:
        code = context.code()
        name = code.name if code is not None else outcome
        elapsed = time.perf_counter() - start
        self.metrics.record(method, name, elapsed)
        if name != "OK" or log.isEnabledFor(logging.DEBUG):
            level = logging.DEBUG if name == "OK" else logging.INFO
            log.log(level, "%s %s %.1f ms", method, name, elapsed * 1e3)

    @asynccontextmanager
    async def _timed(self, method: str, context: Any) -> AsyncIterator[None]:
        """The same record for a server-streaming call (once it ends)."""
        start, outcome = time.perf_counter(), "UNKNOWN"
        try:
            yield
            outcome = "OK"
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            outcome = "CANCELLED"
            raise
        finally:
            self._done(method, context, outcome, start)
