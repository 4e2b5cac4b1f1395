"""`autolfads cancel HOST:PORT`: stop a running PBT search (operator token).

The coordinator revokes every lease (trainers get STOP, then DONE) and the
search ends `cancelled`; its state and checkpoints stay in storage. Needs the
operator token: --token-file, or AUTOLFADS_OPERATOR_TOKEN. Cancelling an
ended search changes nothing and prints its final state.
"""

from __future__ import annotations

import argparse

from autolfads.cli.grpc_security import add_client_flags, client_security


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cancel",
        help="cancel a running PBT search (needs the operator token)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("coordinator", metavar="HOST:PORT", help="coordinator address")
    p.add_argument("--reason", default="", help="recorded in the search's status and events")
    p.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for an unreachable coordinator"
    )
    add_client_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autolfads.coordinator.wire.client import CoordinatorClient
    from autolfads.errors import ConfigError

    if not args.wait >= 0:
        raise ConfigError(f"--wait {args.wait} must be >= 0 seconds")
    security = client_security(args, "operate")
    with CoordinatorClient(
        args.coordinator,
        timeout_s=max(args.wait, 1.0),
        unavailable_wait_s=args.wait,
        security=security,
    ) as client:
        state = client.cancel(args.reason)
    print(f"search at {args.coordinator}: {state}")
    return 0
