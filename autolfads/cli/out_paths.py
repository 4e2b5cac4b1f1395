"""Local output paths checked before a command does its work: a report or a
metrics file that cannot be written must fail in one line at once, not
after minutes of sampling (and not with a traceback)."""

from __future__ import annotations

from pathlib import Path

from autolfads.errors import ConfigError


def check_out_dir(path: Path, flag: str) -> None:
    """`path` is a folder, or one that can be made (its nearest existing
    parent is a folder)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a folder")
    _nearest_parent_is_a_folder(path, flag)


def check_out_file(path: Path, flag: str) -> None:
    """`path` names a file (not a folder) whose folder exists or can be made."""
    if path.is_dir() or str(path).endswith(("/", "\\")):
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    _nearest_parent_is_a_folder(path.parent, flag)


def _nearest_parent_is_a_folder(path: Path, flag: str) -> None:
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
            return
