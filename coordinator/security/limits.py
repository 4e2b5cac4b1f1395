"""Resource bounds of the coordinator's gRPC server, and the interceptor that
enforces the per-call ones.

A misbehaving or hostile client must not exhaust the coordinator's memory or
threads. The bounds, and where each is enforced:

    request size        4 MiB        grpc.max_receive_message_length (server)
    calls in flight     4096         `RequestGuard` (marked Overloaded: retry later)
                                     (+256 for refusals under way and the
                                     bidirectional streams below:
                                     grpc.aio.server(maximum_concurrent_rpcs=...))
    reflection streams  128          `RequestGuard` (open without a token; marked
                                     Overloaded)
    health Watch        64           `RequestGuard` (open without a token; marked
                                     Overloaded); 8 on the --health-listen port
                                     (`server.HealthPort`), of its 16 calls
    held RequestWork    3072         `HeldCalls` (beyond: answered WAIT at once)
    calls not accepted  4096 a       grpc.server.max_pending_requests (past it
                        method       gRPC core drops calls at random, all at 8192)
    WatchStatus streams 16           `RequestGuard` (each waits on an executor thread)
    undecodable bytes   refused      `RequestGuard` -> INVALID_ARGUMENT
    report payload      see validation.py (epochs, metric names, strings)
    leases per worker   16 active    CoordinatorService.max_leases_per_request
    relay processes     64           `autolfads coordinator --relays`
    population          1024         RunConfig (pbt.population)

Everything over a bound is refused with RESOURCE_EXHAUSTED or
INVALID_ARGUMENT (CANCELLED for calls gRPC's core drops) before the service
looks at the request, so it changes nothing. Refusals that mean "busy, ask
again later" (too many calls or streams at once) carry the `Overloaded`
error kind in their trailing metadata, which clients retry; a request over
the size bound is refused by gRPC's core without it, and retrying it would
not help.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from autolfads.coordinator.search.errors import Overloaded
from autolfads.coordinator.security.interceptors import Behaviour, WrapCache, rewrap

# The trailing-metadata key that names the domain error of a failed call
# (`wire.status_codes` maps it back on the client).
ERROR_KIND_KEY = "autolfads-error"

MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Beyond this many calls in flight (running, waiting for a write or held for
# work) `RequestGuard` refuses new ones as Overloaded; clients retry them.
DEFAULT_MAX_CONCURRENT_RPCS = 4096
# gRPC's own cap sits this far above ours, for the calls the bound on calls
# does not count (reflection's bidirectional streams, and calls that the
# guard or the authentication is refusing): its refusal carries no error
# kind, so it must not be the one a worker's call meets.
UNGUARDED_CALLS = 256
# Bidirectional streams (server reflection, open without a token) at once:
# well inside UNGUARDED_CALLS, so that idle streams cannot take gRPC's cap
# and with it every worker's call.
MAX_BIDI_STREAMS = UNGUARDED_CALLS // 2
# The health service's Watch streams at once (open without a token, like
# reflection; probes and load balancers use Check): counted with the calls,
# so without a bound of their own idle ones could fill that bound and every
# worker's call would be refused as Overloaded.
MAX_HEALTH_WATCHES = 64
# The refused client's channel waits this long (jittered) before its own
# retry (gRPC's server pushback), so a burst does not come straight back.
PUSHBACK_MS = (200, 800)
# RequestWork calls held for work (long polls) at once; the rest of the
# concurrent-call limit stays free for heartbeats, reports and status.
DEFAULT_MAX_HELD_CALLS = 3072
# Calls of one method that gRPC's core holds until the server accepts them
# (grpc.aio accepts one call per method per turn of its loop). Past the soft
# limit core fails new calls with CANCELLED at random, more of them as the
# queue grows, and all of them at the hard limit. Core's defaults, 1000 and
# 3000, made a fleet of 2,000 trainers that asks for work at the same instant
# lose 80-150 of those calls; a fleet sends about one call per trainer at a
# time, so the limits are sized to the concurrent-call bound.
MAX_PENDING_CALLS = 4096
MAX_PENDING_CALLS_HARD = 8192
# WatchStatus streams open at once: each waits for the next change on a
# thread of the event loop's default executor.
DEFAULT_MAX_STREAMS = 16
# Relay front processes (`--relays`): more than cores only share the same cores.
MAX_RELAYS = 64
# Calls in flight on the plaintext health-only port (`--health-listen`):
# probes come a few per period; anything beyond is refused there.
HEALTH_CALLS = 16
# Health Watch streams at once on that port: the other calls stay free for
# the probes' Checks.
HEALTH_PORT_WATCHES = HEALTH_CALLS // 2
# Replies (a status with 1024 members and their lineage) may exceed 4 MiB.
MAX_REPLY_BYTES = 64 * 1024 * 1024
# Keepalive. While a call is open (a held RequestWork, a WatchStatus stream)
# each side pings the other: a peer whose machine died or was cut off sends
# no reset, and without pings a watcher would wait forever, and a dead one
# would keep a stream slot until the kernel gave up on the connection
# (hours). Clients ping every 30 s by default (`CoordinatorClient`); the
# server must allow that or it closes the connection ("too_many_pings").
KEEPALIVE_SERVER_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
MIN_CLIENT_PING_MS = 5_000


def server_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_send_message_length", MAX_REPLY_BYTES),
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS_HARD),
        ("grpc.keepalive_time_ms", KEEPALIVE_SERVER_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS),
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


HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _method(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def overloaded_metadata() -> tuple[tuple[str, str], ...]:
    """Trailing metadata of a "busy, retry later" refusal: its error kind,
    and how long the client's channel should wait before retrying."""
    pushback = random.randint(*PUSHBACK_MS)  # load spreading, not search state
    return ((ERROR_KIND_KEY, Overloaded.__name__), ("grpc-retry-pushback-ms", str(pushback)))


class RequestGuard(grpc.aio.ServerInterceptor):
    """Undecodable requests -> INVALID_ARGUMENT (not INTERNAL); at most
    `max_calls` calls in flight and `max_streams` server-streaming calls at
    once (RESOURCE_EXHAUSTED beyond, marked Overloaded), so watchers cannot
    crowd out the workers (each waits on a thread of the loop's executor
    between updates); the health service's Watch aside from the streams'
    bound, with `MAX_HEALTH_WATCHES` of its own; at most `MAX_BIDI_STREAMS`
    bidirectional streams (reflection).
    The bound on calls is counted here rather than left to gRPC's
    `maximum_concurrent_rpcs`, whose refusal a client cannot tell from a
    request that is too large."""

    def __init__(self, max_streams: int, max_calls: int = DEFAULT_MAX_CONCURRENT_RPCS) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams {max_streams} must be >= 1")
        if max_calls < 1:
            raise ValueError(f"max_calls {max_calls} must be >= 1")
        self.max_streams = max_streams
        self.max_calls = max_calls
        # Only touched on the event loop's thread.
        self._open_streams = 0
        self._open_bidi = 0
        self._open_health_watches = 0
        self._calls = 0
        self._cache = WrapCache()

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path = handler_call_details.method
        if handler.request_streaming:  # reflection: bounded on its own, bytes as they are
            method = _method(path)
            return self._cache.get(
                path,
                handler,
                lambda: rewrap(handler, bidi=lambda _, context: self._bidi(method, context)),
            )
        return self._cache.get(path, handler, lambda: self._wrap(path, handler))

    def _wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = _method(path)

        def unary(behaviour: Behaviour) -> Behaviour:
            async def checked(request: Any, context: Any) -> Any:
                if isinstance(request, _Undecodable):  # (no coroutine for the others)
                    await self._check(method, request, context)
                if self._calls >= self.max_calls:
                    await self._refuse(method, context)
                self._calls += 1
                try:
                    return await behaviour(request, context)
                finally:
                    self._calls -= 1

            return checked

        # The health service's Watch waits on the loop, not on a thread: a
        # load balancer's or monitor's watches must not take the watchers'
        # slots (nor be refused for them).
        limited = not path.startswith(HEALTH_PREFIX)
        return rewrap(
            handler,
            unary=unary,
            stream=lambda request, context: self._stream(method, request, context, limited),
            request_deserializer=_tolerant(handler.request_deserializer),
        )

    @staticmethod
    async def _check(method: str, request: Any, context: Any) -> None:
        if isinstance(request, _Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method}: the request bytes are not a valid message ({request.reason})",
            )

    async def _refuse(self, method: str, context: Any) -> None:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{method}: the coordinator has {self.max_calls} calls in flight; retry shortly",
            trailing_metadata=overloaded_metadata(),
        )

    @asynccontextmanager
    async def _stream(
        self, method: str, request: Any, context: Any, limited: bool
    ) -> AsyncIterator[None]:
        await self._check(method, request, context)
        if self._calls >= self.max_calls:
            await self._refuse(method, context)
        if limited and self._open_streams >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{method}: {self.max_streams} streams are open already; "
                "poll GetStatus instead or retry later",
                trailing_metadata=overloaded_metadata(),
            )
        if not limited and self._open_health_watches >= MAX_HEALTH_WATCHES:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{method}: {MAX_HEALTH_WATCHES} health watches are open already; "
                "use Check or retry later",
                trailing_metadata=overloaded_metadata(),
            )
        self._calls += 1
        self._open_streams += limited
        self._open_health_watches += not limited
        try:
            yield
        finally:
            self._calls -= 1
            self._open_streams -= limited
            self._open_health_watches -= not limited

    @asynccontextmanager
    async def _bidi(self, method: str, context: Any) -> AsyncIterator[None]:
        if self._open_bidi >= MAX_BIDI_STREAMS:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{method}: {MAX_BIDI_STREAMS} such streams are open already; retry later",
                trailing_metadata=overloaded_metadata(),
            )
        self._open_bidi += 1
        try:
            yield
        finally:
            self._open_bidi -= 1
