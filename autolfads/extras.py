"""Optional extras: what each one provides, and one line when one is missing.

The base install (`pip install autolfads`) runs the coordinator and the
storage tools. Everything heavier is an extra, named in pyproject.toml's
`[project.optional-dependencies]`; `EXTRAS` below lists the import names each
extra must make importable, and tests/test_extras_install.py checks both against each
other and installs every extra alone in a fresh virtual environment.

Commands declare the extras they need (`require_extras`) and check them before
doing any work, so a missing extra is one line naming what to install, never a
traceback after an hour of training. `extra_for_module` maps an import that
failed anyway back to its extra, for the CLI's last-resort handler.
"""

from __future__ import annotations

import argparse
import importlib.util

from autolfads.errors import AutolfadsError

# extra -> the top-level modules its commands import (not its whole closure).
EXTRAS: dict[str, tuple[str, ...]] = {
    "trainer": ("torch",),
    "report": ("matplotlib",),
    "argo": ("kubernetes", "hera", "kubernetes_validate"),
    "nwb": ("pynwb",),
    "ray": ("ray",),
}


class MissingExtra(AutolfadsError):
    """An optional extra this command needs is not installed."""


def install_hint(extra: str) -> str:
    return f"pip install 'autolfads[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (empty: all there)."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or half-removed install
            found = False
        if not found:
            missing.append(module)
    return missing


def require_extras(command: str, *extras: str, alternative: str = "") -> None:
    """Raise MissingExtra naming the first extra of `extras` that is not installed.

    `alternative` is appended to the message, e.g. "or pass --no-report".
    """
    for extra in extras:
        missing = missing_modules(extra)
        if missing:
            raise MissingExtra(
                f"`{command}` needs the '{extra}' extra ({', '.join(missing)} not installed): "
                f"{install_hint(extra)}" + (f", {alternative}" if alternative else "")
            )


def extra_for_module(module: str | None) -> str | None:
    """The extra providing top-level `module` (e.g. 'matplotlib.pyplot'), if any."""
    if not module:
        return None
    top = module.split(".", 1)[0]
    for extra, modules in EXTRAS.items():
        if top in modules:
            return extra
    return None


def needs(parser: argparse.ArgumentParser, *extras: str) -> None:
    """Declare the extras `parser`'s command needs; the CLI checks them first."""
    unknown = set(extras) - EXTRAS.keys()
    assert not unknown, f"unknown extras {unknown}"
    parser.set_defaults(extras=extras, extras_command=parser.prog)
