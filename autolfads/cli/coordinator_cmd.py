"""`autolfads coordinator`: serve one PBT search over gRPC until it ends.

Exit codes: 0 when the search finished or was cancelled; 143 when stopped by
SIGTERM before that (the state is persisted: run the same command to resume);
1 when the search failed (e.g. every member diverged).

Security: give each role a token (files below or AUTOLFADS_*_TOKEN) and a
certificate (--tls-cert/--tls-key or --tls-dir). Without tokens or without TLS
only a loopback --listen address is served, unless --insecure-no-auth /
--allow-plaintext say otherwise. See docs/protocol.md, "Authentication and TLS".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autolfads.cli.grpc_security import add_server_flags, server_security

DEFAULT_LISTEN = "127.0.0.1:50051"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "coordinator",
        help="serve a PBT search (gRPC) for trainer workers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--storage", required=True, help="store URL, e.g. s3://bucket/runs or file:///dir"
    )
    p.add_argument("--run", required=True, help="run name (the config's name:)")
    p.add_argument(
        "--config", type=Path, help="config YAML (default: <run>/config.yaml in storage)"
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN}; 0.0.0.0:50051 in containers)",
    )
    p.add_argument(
        "--lease-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a lease without heartbeats for this long is re-queued (default 300)",
    )
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    p.add_argument(
        "--relays",
        type=int,
        default=0,
        metavar="N",
        help="serve gRPC from N processes that relay calls to this one, on the same port, "
        "so that a large fleet's calls use more cores (default 0: one process)",
    )
    p.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        help="also serve the gRPC health service alone here, in plaintext and without "
        "tokens, for Kubernetes' gRPC probes (which cannot use TLS); it tells only whether "
        "the coordinator is serving",
    )
    add_server_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autolfads.config import load_config
    from autolfads.coordinator.search.service import CoordinatorService
    from autolfads.coordinator.search.staging import load_run
    from autolfads.coordinator.security.limits import MAX_RELAYS
    from autolfads.coordinator.wire.collector import settle_collector
    from autolfads.coordinator.wire.server import serve
    from autolfads.errors import ConfigError
    from autolfads.storage import open_store
    from autolfads.storage.claims import claim_run

    if args.lease_timeout <= 0:
        raise ConfigError(f"--lease-timeout {args.lease_timeout} must be > 0 seconds")
    if not 0 <= args.relays <= MAX_RELAYS:
        raise ConfigError(
            f"--relays {args.relays} must be between 0 and {MAX_RELAYS} "
            "(about one per core beyond the first)"
        )
    # Security first: a refused --listen fails before storage is touched
    # (the server's own check then warns of what is allowed but risky).
    security = server_security(args)
    security.check(args.listen, warn=False)
    store = open_store(args.storage, create_bucket=False)  # the run exists
    given = load_config(args.config) if args.config is not None else None
    cfg, data_key, data_sha = load_run(store, args.run, given)
    # Before the state is read: a second coordinator of the run stops here.
    with claim_run(store, args.run, command="autolfads coordinator") as claim:
        # Here, not earlier: a command refused above changes nothing in the
        # calling process; and the search state loaded below is not frozen.
        settle_collector()
        service = CoordinatorService.open_search(
            cfg, claim.fence(store), data_key, data_sha, lease_timeout_s=args.lease_timeout
        )
        return serve(
            service,
            args.listen,
            port_file=args.port_file,
            security=security,
            relays=args.relays,
            health_addr=args.health_listen,
            claim=claim,
        )
