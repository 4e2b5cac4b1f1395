"""The coordinator's gRPC server: servicer + health + reflection, and the
process main loop (lease expiry ticks, graceful SIGTERM, linger at the end).

    server, port = create_server("127.0.0.1:0", service)   # tests: port 0

Kubernetes probes use the standard `grpc.health.v1.Health` service (SERVING
for "" and the coordinator's full name; NOT_SERVING once shutting down);
`grpcurl` and friends discover the API through server reflection. Both stay
open; `health_addr` also serves the health service alone, in plaintext, on
a port of its own (Kubernetes' gRPC probes can neither speak TLS nor send
tokens, so with TLS on they need it). Every coordinator RPC needs a bearer
token once `security` holds tokens (`auth`), TLS is used when it holds a
certificate (`tls`), and the exposure rules of `security.ServerSecurity.check`
run before binding. With `relays=N` the gRPC servers run in N front processes on the same
port, relaying calls to this process, which keeps the search (`relay`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.security.auth import AuthInterceptor
from autolfads.coordinator.security.exposure import ServerSecurity
from autolfads.coordinator.security.interceptors import LoggingInterceptor, RpcMetrics
from autolfads.coordinator.security.limits import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_HELD_CALLS,
    DEFAULT_MAX_STREAMS,
    HEALTH_CALLS,
    HEALTH_PORT_WATCHES,
    UNGUARDED_CALLS,
    RequestGuard,
    server_options,
)
from autolfads.coordinator.wire.commit_bridge import CommitBridge
from autolfads.coordinator.wire.fronts import Fronts
from autolfads.coordinator.wire.held_calls import HeldCalls
from autolfads.coordinator.wire.relay import (
    DEFAULT_OWNER_SILENT_S,
    RelayOwner,
    security_config,
)
from autolfads.coordinator.wire.servicer import CoordinatorServicer
from autolfads.errors import ConfigError
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc
from autolfads.signals import StopEvent, restore_signals, stop_on_signals
from autolfads.storage.claims import ClaimLost, RunClaim
from autolfads.storage.errors import StorageError

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name[
    "Coordinator"
].full_name  # autolfads.pbt.v1.Coordinator
T = TypeVar("T")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: stopped before the search ended; resumable


class CoordinatorServer:
    """The coordinator's `grpc.aio` server and the event-loop thread it runs
    on, behind a blocking face (`stop(grace)` returns once stopped):
    `serve`'s main loop, the launcher and tests drive it from plain threads.

    Why an event loop: under load the thread-pool server spent most of its
    CPU handing each call between threads (gRPC's poller, the pool, the
    group commit's leader) and passing the GIL among them; here one thread
    runs every call's logic and writes go to the commit threads
    (`servicer`, `commit_bridge`).
    """

    def __init__(self, max_streams: int) -> None:
        self.loop = asyncio.new_event_loop()
        # WatchStatus waits and CancelSearch flushes run here.
        self.loop.set_default_executor(
            futures.ThreadPoolExecutor(max_streams + 4, thread_name_prefix="coordinator-wait")
        )
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="coordinator-loop", daemon=True
        )
        self._thread.start()
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.health_server: grpc.aio.Server | None = None  # `health_addr`'s
        self.health_port: int | None = None
        self.bridge: CommitBridge | None = None
        self.held: HeldCalls | None = None
        self.fronts: Fronts | None = None  # with relays: the gRPC servers' processes
        self._stop_lock = threading.Lock()
        self._stopped = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop; its result (call from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def graceful_stop(self, grace_s: float = 5.0) -> None:
        """NOT_SERVING first (probes and watchers notice), then let calls finish."""
        with self._stop_lock:
            if self.health is not None and not self._stopped:
                self.run(self.health.enter_graceful_shutdown())
        self.stop(grace_s)  # fronts go NOT_SERVING themselves

    def tend(self) -> None:
        """Start replacing any relay front that died, in the background (the
        main loop calls this every tick)."""
        if self.fronts is not None and not self._stopped:
            self.loop.call_soon_threadsafe(self.fronts.restart_soon)

    def stop(self, grace: float | None) -> None:
        """Stop taking calls, give running ones `grace` seconds, end the loop.
        Once and whole: a second (or concurrent) call returns when the first
        is done; call it from any thread but the loop's own."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                if self.server is not None:
                    self.run(self.server.stop(grace))
                if self.fronts is not None:
                    self.run(self.fronts.stop(grace or 0.0))
                if self.health_server is not None:
                    self.run(self.health_server.stop(0))
                self.run(self.loop.shutdown_default_executor())
            finally:  # whatever failed above, no thread is left behind
                if self.held is not None:
                    self.held.close()
                if self.bridge is not None:
                    self.bridge.close()
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join()
                self.loop.close()


def create_server(
    addr: str,
    service: CoordinatorService,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    metrics: RpcMetrics | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
    security: ServerSecurity | None = None,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    max_held_calls: int = DEFAULT_MAX_HELD_CALLS,
    relays: int = 0,
    owner_silent_s: float = DEFAULT_OWNER_SILENT_S,
    health_addr: str | None = None,
) -> tuple[CoordinatorServer, int]:
    """Build, bind and start the server; return it and the bound port.
    `health_addr`: also serve the health service alone there, in plaintext
    and without tokens (for probes; its port is `server.health_port`). It
    tells only whether the coordinator serves; answered on this process's
    loop, so a stuck loop fails the probe, relays or not.

    Interceptors, outermost first: logging, authentication (if `security`
    has tokens), request limits, then `interceptors`. Raises ConfigError if
    `security` forbids `addr`, CoordinatorError if it cannot be bound.

    `relays` > 0: the gRPC servers run in that many front processes that
    relay calls to this one (`relay`); each front has the bound on calls in
    flight, the streams' bound is shared among them; `metrics` and
    `interceptors` are not available there. A front answers health checks
    NOT_SERVING once this process has been silent for `owner_silent_s`.
    """
    if relays and addr.startswith(("unix:", "unix-abstract:")):
        raise ConfigError(
            f"--relays shares a TCP port among processes; listen on HOST:PORT, not {addr}"
        )
    security = security or ServerSecurity()
    security.check(addr)
    if relays < 0:
        raise ValueError(f"relays {relays} must be >= 0")
    if relays and (metrics is not None or interceptors):
        raise ValueError("metrics and extra interceptors live in the relay fronts' processes")
    if relays and not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--relays needs SO_REUSEPORT (Linux, macOS); serve without it here")
    # Each WatchStatus stream waits on a thread: with more fronts than the
    # bound on streams, each front still allows one.
    holder = CoordinatorServer(max(max_streams, relays))
    if relays:
        config = {
            **security_config(security),
            "max_streams": max(1, max_streams // relays),
            # Per front, not shared: held long polls (bounded in this
            # process, `max_held_calls`) must never fill one front's bound.
            "max_calls": max_concurrent_rpcs,
            "log_level": logging.getLogger("autolfads").getEffectiveLevel(),
            "owner_silent_s": owner_silent_s,
        }
        start = _start_relays(holder, addr, service, config, relays, max_held_calls)
    else:
        chain = interceptor_chain(security, metrics, max_streams, max_concurrent_rpcs)
        credentials = None if security.tls is None else security.tls.credentials()
        start = _start(
            holder,
            addr,
            service,
            [*chain, *interceptors],
            (max_concurrent_rpcs, max_held_calls),
            credentials,
        )
    try:
        port = holder.run(start)
        if health_addr is not None:
            holder.health_port = holder.run(_start_health(holder, health_addr))
    except BaseException:
        holder.stop(0)
        raise
    return holder, port


async def _start_health(holder: CoordinatorServer, addr: str) -> int:
    if holder.health is None:  # relays: the fronts have their own
        holder.health = await serving_health()
    server = grpc.aio.server(maximum_concurrent_rpcs=HEALTH_CALLS)
    holder.health_server = server
    health_pb2_grpc.add_HealthServicer_to_server(HealthPort(holder.health), server)
    port = add_port(server, addr)
    await server.start()
    return port


class HealthPort(health_pb2_grpc.HealthServicer):
    """The health service on `health_addr`: `servicer`'s answers, with fewer
    Watch streams than the port's calls. Anyone who reaches the port may
    watch; without this bound, idle watches took every call and the probes'
    Checks were refused."""

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self._health = servicer
        self._watches = 0  # on the loop only

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        return await self._health.Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        if self._watches >= HEALTH_PORT_WATCHES:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{HEALTH_PORT_WATCHES} health watches are open on this port already; use Check",
            )
        self._watches += 1
        try:
            await self._health.Watch(request, context)
        finally:
            self._watches -= 1


async def _start_relays(
    holder: CoordinatorServer,
    addr: str,
    service: CoordinatorService,
    config: dict[str, Any],
    relays: int,
    max_held_calls: int,
) -> int:
    owner = RelayOwner(_servicer(holder, service, max_held_calls))
    holder.fronts = Fronts(owner, config, relays)
    return await holder.fronts.start(addr)


def _servicer(
    holder: CoordinatorServer, service: CoordinatorService, max_held_calls: int
) -> CoordinatorServicer:
    """The servicer on this loop, with its commit bridge and held calls
    (kept on `holder`, which closes them when it stops)."""
    loop = asyncio.get_running_loop()
    holder.bridge = CommitBridge(service, loop)
    holder.held = HeldCalls(service, loop, max_held_calls)
    return CoordinatorServicer(service, holder.bridge, holder.held)


def interceptor_chain(
    security: ServerSecurity, metrics: RpcMetrics | None, max_streams: int, max_calls: int
) -> list[grpc.aio.ServerInterceptor]:
    """Logging, authentication (if `security` has tokens), request limits."""
    chain: list[grpc.aio.ServerInterceptor] = [LoggingInterceptor(metrics, served_methods())]
    if security.authenticated:
        chain.append(AuthInterceptor(security.tokens))
    chain.append(RequestGuard(max_streams=max_streams, max_calls=max_calls))
    return chain


def served_methods() -> frozenset[str]:
    """The path of every method the coordinator's server serves."""
    services = (
        pb.DESCRIPTOR.services_by_name["Coordinator"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    )
    return frozenset(f"/{s.full_name}/{m.name}" for s in services for m in s.methods)


async def serving_health() -> health.aio.HealthServicer:
    """The standard health service, SERVING for "" and the coordinator's name."""
    servicer = health.aio.HealthServicer()
    for name in ("", SERVICE_NAME):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


async def add_health_and_reflection(server: grpc.aio.Server) -> health.aio.HealthServicer:
    """`serving_health` and server reflection, on `server`."""
    servicer = await serving_health()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return servicer


async def _start(
    holder: CoordinatorServer,
    addr: str,
    service: CoordinatorService,
    interceptors: list[grpc.aio.ServerInterceptor],
    limits: tuple[int, int],
    credentials: grpc.ServerCredentials | None,
) -> int:
    max_concurrent_rpcs, max_held_calls = limits
    server = grpc.aio.server(
        interceptors=interceptors,
        options=server_options(),
        # A backstop for the calls the guard does not wrap (see UNGUARDED_CALLS).
        maximum_concurrent_rpcs=max_concurrent_rpcs + UNGUARDED_CALLS,
    )
    holder.server = server
    pb_grpc.add_CoordinatorServicer_to_server(_servicer(holder, service, max_held_calls), server)
    holder.health = await add_health_and_reflection(server)
    port = add_port(server, addr, credentials)
    await server.start()
    return port


def add_port(
    server: grpc.Server | grpc.aio.Server,
    addr: str,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind `addr` (TLS when `credentials` are given) and return the port;
    one line naming the address if it cannot be bound."""
    port_text = addr.rpartition(":")[2]
    if port_text.isdigit() and int(port_text) > 65535:
        # gRPC would bind the port modulo 65536 and serve on another one.
        raise CoordinatorError(f"cannot listen on {addr}: port {port_text} is above 65535")
    try:
        if credentials is not None:
            port = server.add_secure_port(addr, credentials)
        else:
            port = server.add_insecure_port(addr)
    except RuntimeError as err:
        raise CoordinatorError(f"cannot listen on {addr}: {err}") from None
    if port == 0:
        raise CoordinatorError(f"cannot listen on {addr}: address in use or invalid")
    return port


def bind_and_start(
    server: grpc.Server, addr: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    """A thread-pool server (Katib's suggestion service): bind, start, return the port."""
    port = add_port(server, addr, credentials)
    server.start()
    return port


def describe(security: ServerSecurity) -> str:
    """'mutual TLS, tokens for observer, worker, operator' (never the tokens)."""
    tls = security.tls
    transport = "plaintext" if tls is None else ("mutual TLS" if tls.mutual else "TLS")
    roles = security.tokens.roles
    auth = f"tokens for {', '.join(roles)}" if roles else "NO authentication"
    return f"{transport}, {auth}"


def serve(
    service: CoordinatorService,
    listen: str,
    *,
    port_file: Path | None = None,
    tick_s: float = 1.0,
    linger_s: float | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    security: ServerSecurity | None = None,
    relays: int = 0,
    health_addr: str | None = None,
    claim: RunClaim | None = None,
) -> int:
    """Run until the search ends (exit 0) or SIGTERM/SIGINT (143 unless ended).

    With a `claim` (`storage.claims`), a claim lost while serving stops the
    server at once, without another write, and raises `ClaimLost`.

    After the end the server lingers until every worker seen recently has been
    told DONE (at most `linger_s`, default one lease timeout), so trainers exit
    cleanly instead of waiting for a coordinator that is gone.
    """
    server, port = create_server(
        listen,
        service,
        interceptors=interceptors,
        security=security,
        relays=relays,
        health_addr=health_addr,
    )
    host = listen.rsplit(":", 1)[0]
    log.info(
        "coordinator for run %s listening on %s:%d (%s%s)",
        service.layout.run,
        host,
        port,
        describe(security or ServerSecurity()),
        f"; gRPC in {relays} relay processes" if relays else "",
    )
    if health_addr is not None:
        log.info("health checks alone, plaintext, on port %d", server.health_port)
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(port_file)
    stop = StopEvent()  # SIGTERM / SIGINT set it (from the main thread)
    previous = stop_on_signals(stop)
    try:
        while not stop.is_set() and not service.terminal:
            if claim is not None and not claim.held():
                raise ClaimLost(claim)  # a newcomer may be writing: no drain
            service.tick()
            server.tend()
            stop.wait(tick_s)
        service.drain()
        if service.terminal:
            _linger(service, stop, linger_s if linger_s is not None else service.lease_timeout_s)
    finally:
        server.graceful_stop()
        restore_signals(previous)
    # A call cut off at the end of the grace may have staged a change: written
    # now, while the run is still claimed (the caller's claim ends after this).
    try:
        service.flush()
    except StorageError as err:  # that change is lost; the state as last written holds
        log.warning("a last change was not saved: %s", err)
    status = service.exit_status
    log.info("coordinator stopped; search %s", status)
    if status in ("finished", "cancelled"):
        return EXIT_OK
    return EXIT_FAILED if status == "failed" else EXIT_INTERRUPTED


def _linger(service: CoordinatorService, stop: threading.Event, linger_s: float) -> None:
    window = service.lease_timeout_s
    end = time.monotonic() + linger_s
    while time.monotonic() < end and service.workers_not_told_done(window):
        if stop.wait(0.2):
            return
