"""The coordinator's gRPC server: servicer + health + reflection, and the
process main loop (lease expiry ticks, graceful SIGTERM, linger at the end).

    server, port = create_server("127.0.0.1:0", service)   # tests: port 0

Kubernetes probes use the standard `grpc.health.v1.Health` service (SERVING
for "" and the coordinator's full name; NOT_SERVING once shutting down);
`grpcurl` and friends discover the API through server reflection. Both stay
open; every coordinator RPC needs a bearer token once `security` holds
tokens (`auth`), TLS is used when it holds a certificate (`tls`), and the
exposure rules of `security.ServerSecurity.check` run before binding.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.security.auth import AuthInterceptor
from autolfads.coordinator.security.exposure import ServerSecurity
from autolfads.coordinator.security.interceptors import LoggingInterceptor, RpcMetrics
from autolfads.coordinator.security.limits import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    RequestGuard,
    server_options,
)
from autolfads.coordinator.wire.servicer import CoordinatorServicer
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name[
    "Coordinator"
].full_name  # autolfads.pbt.v1.Coordinator
# Streams (WatchStatus) hold a thread each; leave room for unary calls.
DEFAULT_MAX_WORKERS = 32
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: stopped before the search ended; resumable


def create_server(
    addr: str,
    service: CoordinatorService,
    *,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    health_servicer: health.HealthServicer | None = None,
    metrics: RpcMetrics | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    security: ServerSecurity | None = None,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
) -> tuple[grpc.Server, int]:
    """Build, bind and start the server; return it and the bound port.

    Interceptors, outermost first: logging, authentication (if `security`
    has tokens), request limits, then `interceptors`. Pass your own
    `health_servicer` to flip it to NOT_SERVING on shutdown (see
    `graceful_stop`). Raises ConfigError if `security` forbids `addr`.
    """
    security = security or ServerSecurity()
    security.check(addr)
    chain: list[grpc.ServerInterceptor] = [LoggingInterceptor(metrics)]
    if security.authenticated:
        chain.append(AuthInterceptor(security.tokens))
    # Streams hold a thread each: keep at least half the threads for unary calls.
    chain.append(RequestGuard(max_streams=max(1, max_workers // 2)))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="coordinator-rpc"),
        interceptors=[*chain, *interceptors],
        options=server_options(),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(service), server)
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    credentials = None if security.tls is None else security.tls.credentials()
    return server, bind_and_start(server, addr, credentials)


def bind_and_start(
    server: grpc.Server, addr: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Bind `addr` (TLS when `credentials` are given), start, return the port;
    one line naming the address if it cannot be bound."""
    try:
        if credentials is not None:
            port = server.add_secure_port(addr, credentials)
        else:
            port = server.add_insecure_port(addr)
    except RuntimeError as err:
        raise CoordinatorError(f"cannot listen on {addr}: {err}") from None
    if port == 0:
        raise CoordinatorError(f"cannot listen on {addr}: address in use or invalid")
    server.start()
    return port


def describe(security: ServerSecurity) -> str:
    """'mutual TLS, tokens for observer, worker, operator' (never the tokens)."""
    tls = security.tls
    transport = "plaintext" if tls is None else ("mutual TLS" if tls.mutual else "TLS")
    roles = security.tokens.roles
    auth = f"tokens for {', '.join(roles)}" if roles else "NO authentication"
    return f"{transport}, {auth}"


def graceful_stop(
    server: grpc.Server, health_servicer: health.HealthServicer, grace_s: float = 5.0
) -> None:
    """NOT_SERVING first (probes and clients notice), then let calls finish."""
    health_servicer.enter_graceful_shutdown()
    server.stop(grace_s).wait()


def serve(
    service: CoordinatorService,
    listen: str,
    *,
    port_file: Path | None = None,
    tick_s: float = 1.0,
    linger_s: float | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    security: ServerSecurity | None = None,
) -> int:
    """Run until the search ends (exit 0) or SIGTERM/SIGINT (143 unless ended).

    After the end the server lingers until every worker seen recently has been
    told DONE (at most `linger_s`, default one lease timeout), so trainers exit
    cleanly instead of waiting for a coordinator that is gone.
    """
    health_servicer = health.HealthServicer()
    server, port = create_server(
        listen,
        service,
        interceptors=interceptors,
        health_servicer=health_servicer,
        security=security,
    )
    host = listen.rsplit(":", 1)[0]
    log.info(
        "coordinator for run %s listening on %s:%d (%s)",
        service.layout.run,
        host,
        port,
        describe(security or ServerSecurity()),
    )
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(port_file)
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    try:
        while not stop.is_set() and not service.terminal:
            service.tick()
            stop.wait(tick_s)
        service.drain()
        if service.terminal:
            _linger(service, stop, linger_s if linger_s is not None else service.lease_timeout_s)
    finally:
        graceful_stop(server, health_servicer)
        _restore_signal_handlers(previous)
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


def _install_signal_handlers(stop: threading.Event) -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, object] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    return previous


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]
