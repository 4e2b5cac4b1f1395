"""Errors a user can act on.

Anything raised as `AutolfadsError` reaches the terminal as one line
(`autolfads: error: <message>`) with a non-zero exit, never as a traceback.
Subsystems subclass it so callers can catch what they can recover from.
"""

from __future__ import annotations


class AutolfadsError(Exception):
    """A problem the user can fix; the message names what and how."""

    exit_code: int = 2


class ConfigError(AutolfadsError):
    """A config file or value is invalid."""


class DataError(AutolfadsError):
    """A data file is missing, unreadable or inconsistent."""
