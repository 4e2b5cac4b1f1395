"""`autolfads trainer`: a stateless PBT worker (lease, train, report, repeat).

Exit codes: 0 when the coordinator says the search is done; 143 after
SIGTERM (current leases handed back); 3 when the coordinator stayed
unreachable for the whole bounded wait; 2 when the coordinator refuses the
token (set AUTOLFADS_WORKER_TOKEN or --token-file) or the TLS handshake fails.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from pathlib import Path

from autolfads.cli.grpc_security import add_client_flags, client_security
from autolfads.extras import needs

STATE_POLL_S = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trainer",
        help="run a PBT trainer worker against a coordinator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--coordinator", metavar="HOST:PORT", help="coordinator address")
    target.add_argument(
        "--katib-trial",
        metavar="NAME",
        help="train the one segment of this Katib trial (${trialSpec.Name}), print "
        "fitness=<value> and exit (see deploy/katib/README.md)",
    )
    p.add_argument(
        "--storage", required=True, help="store URL, e.g. s3://bucket/runs or file:///dir"
    )
    p.add_argument(
        "--max-leases",
        type=int,
        default=1,
        metavar="N",
        help="members trained at once by this process (default 1)",
    )
    p.add_argument(
        "--cache-dir", type=Path, help="data cache (default $AUTOLFADS_CACHE_DIR or ~/.cache)"
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: usable CPUs, max 8)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--worker-id", help="name in the coordinator's status (default host-pid)")
    p.add_argument(
        "--run",
        help="run name: while the coordinator is unreachable, exit 0 if the run's stored "
        "state says the search has ended",
    )
    p.add_argument(
        "--unavailable-wait",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to keep retrying an unreachable coordinator (default 300)",
    )
    add_client_flags(p)
    p.set_defaults(func=run)
    needs(p, "trainer")


def run(args: argparse.Namespace) -> int:
    from autolfads.coordinator.wire.client import CoordinatorClient
    from autolfads.errors import ConfigError
    from autolfads.signals import StopEvent
    from autolfads.storage import default_cache_dir, open_store, validate_identifier
    from autolfads.trainer.worker import Worker, configure_torch, default_threads, install_sigterm

    if args.max_leases < 1:
        raise ConfigError(f"--max-leases {args.max_leases} must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    # NaN would never be reached by the time waited: retried forever.
    if not math.isfinite(args.unavailable_wait) or args.unavailable_wait < 0:
        raise ConfigError(
            f"--unavailable-wait {args.unavailable_wait} must be a finite number of seconds >= 0"
        )
    if args.katib_trial is not None:
        return _run_katib_trial(args)
    security = client_security(args, "work")
    stop = StopEvent()
    install_sigterm(stop)
    configure_torch(args.threads or default_threads())
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    store = open_store(args.storage, create_bucket=False)  # the run exists
    if args.run is not None:
        validate_identifier("run name", args.run)
    # Knowing the run, look at its stored state every STATE_POLL_S while the
    # coordinator is away; the total wait stays --unavailable-wait.
    per_call_wait = min(args.unavailable_wait, STATE_POLL_S) if args.run else args.unavailable_wait
    with CoordinatorClient(
        args.coordinator, unavailable_wait_s=per_call_wait, security=security
    ) as client:
        worker = Worker(
            client,
            store,
            worker_id,
            cache_dir=args.cache_dir or default_cache_dir(),
            max_leases=args.max_leases,
            device=args.device,
            stop=stop,
            run=args.run,
            unavailable_wait_s=args.unavailable_wait,
        )
        return worker.run()


def _run_katib_trial(args: argparse.Namespace) -> int:
    from autolfads.errors import ConfigError
    from autolfads.katib.names import parse_trial_name
    from autolfads.katib.trial import run_trial
    from autolfads.signals import StopEvent
    from autolfads.storage import default_cache_dir, open_store
    from autolfads.trainer.worker import configure_torch, default_threads, install_sigterm

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    if args.max_leases != 1 or args.run is not None:
        raise ConfigError("--katib-trial trains one segment: drop --max-leases and --run")
    parse_trial_name(args.katib_trial)  # a bad name fails before storage is touched
    stop = StopEvent()
    install_sigterm(stop)
    configure_torch(args.threads or default_threads())
    return run_trial(
        open_store(args.storage, create_bucket=False),
        args.katib_trial,
        cache_dir=args.cache_dir or default_cache_dir(),
        device=args.device,
        stop=stop,
        worker_id=args.worker_id or args.katib_trial,
    )
