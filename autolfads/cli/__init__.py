"""The `autolfads` command: one front door with subcommands.

Each subcommand lives in its own module under `autolfads.cli` and exposes
`register(subparsers)`, which adds its parser and sets `func` (a callable
taking the parsed namespace and returning an exit code). Modules import heavy
dependencies (torch, matplotlib, kubernetes) inside `func`, so that
`autolfads --help` and the coordinator commands work without them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from autolfads import __version__
from autolfads.errors import AutolfadsError
from autolfads.extras import extra_for_module, install_hint, require_extras

# Order here is the order in `autolfads --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "autolfads.cli.run_cmd",
    "autolfads.cli.train_cmd",
    "autolfads.cli.data_cmd",
    "autolfads.cli.baseline_cmd",
    "autolfads.cli.status_cmd",
    "autolfads.cli.cancel_cmd",
    "autolfads.cli.report_cmd",
    "autolfads.cli.finalize_cmd",
    "autolfads.cli.apply_cmd",
    "autolfads.cli.stage_cmd",
    "autolfads.cli.coordinator_cmd",
    "autolfads.cli.trainer_cmd",
    "autolfads.cli.argo_cmd",
    "autolfads.cli.katib_cmd",
)


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _default_log_level() -> str:
    # An environment variable, unlike the flag, reaches child processes too:
    # the trainer workers of `autolfads run` and the pods of a workflow.
    level = os.environ.get("AUTOLFADS_LOG_LEVEL", "").strip().upper()
    return level if level in LOG_LEVELS else "WARNING"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autolfads",
        description="AutoLFADS: LFADS tuned by population-based training.",
    )
    parser.add_argument("--version", action="version", version=f"autolfads {__version__}")
    parser.add_argument(
        "--log-level",
        default=_default_log_level(),
        choices=LOG_LEVELS,
        help="logging verbosity on stderr (default: $AUTOLFADS_LOG_LEVEL, else WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        require_extras(getattr(args, "extras_command", ""), *getattr(args, "extras", ()))
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler below
        return code
    except AutolfadsError as err:
        print(f"autolfads: error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        # A command that imports an extra it did not declare: still one line.
        extra = extra_for_module(err.name)
        if extra is None:
            raise
        print(
            f"autolfads: error: this needs the '{extra}' extra ({err.name} not installed): "
            f"{install_hint(extra)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("autolfads: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout went to a reader that stopped early (`| head`): not an error of
        # ours; silence the interpreter's flush of the dead pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
