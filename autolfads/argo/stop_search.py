"""The Workflow's `stop-search` step: every trainer task failed, so end the search.

    python -m autolfads.argo.stop_search --coordinator HOST:PORT [--wait S] [client flags]

The Argo DAG runs this step only once every trainer task has failed (after
its retries): nobody is left to train, yet the coordinator would serve the
search until the workflow's deadline. The step cancels the search with the
operator token (the coordinator then ends `cancelled` and exits), and exits
1 with one line saying why, so that the step (and with it the workflow) ends
Failed and `finalize` never runs on the unfinished search. Its container
uses terminationMessagePolicy FallbackToLogsOnError, so that line becomes
the step's message in `argo get` and `autolfads argo submit --wait`.

Exit codes: 1 when the search was stopped (or had already failed or been
cancelled); 0 when it had in fact finished (the last trainers failed after
it ended; `finalize` runs); 2 when the coordinator could not be told (it
stayed unreachable for --wait seconds, or refused the token).

Only the base dependencies are needed (the coordinator image runs it), not
the 'argo' extra.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from autolfads.cli.grpc_security import add_client_flags, client_security
from autolfads.errors import AutolfadsError, ConfigError

EXIT_STOPPED = 1
# Long enough to ride out a restarting coordinator (its retry backoff caps at 2 minutes).
DEFAULT_WAIT_S = 900.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m autolfads.argo.stop_search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    p.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long to keep trying an unreachable coordinator (default {DEFAULT_WAIT_S:.0f})",
    )
    add_client_flags(p)
    return p


REASON = "every trainer task of the workflow failed (after its retries)"


def stop(args: argparse.Namespace) -> int:
    from autolfads.coordinator.wire.client import CoordinatorClient

    if not args.wait >= 0:
        raise ConfigError(f"--wait {args.wait}: must be 0 or more seconds")
    security = client_security(args, "operate")
    try:
        with CoordinatorClient(
            args.coordinator,
            timeout_s=30.0,
            unavailable_wait_s=args.wait,
            security=security,
        ) as client:
            state = client.cancel(REASON)
    except AutolfadsError as err:
        raise AutolfadsError(
            f"{REASON}, and the coordinator could not be told to stop the search: {err}"
        ) from None
    if state == "finished":
        print(f"{REASON}, but the search had already finished; nothing to stop")
        return 0
    print(
        f"autolfads: error: {REASON}; the search is now {state}; see the trainer pods' logs "
        "(label autolfads.io/role=trainer) for the cause",
        file=sys.stderr,
    )
    return EXIT_STOPPED


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return stop(args)
    except AutolfadsError as err:
        print(f"autolfads: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
