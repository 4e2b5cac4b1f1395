"""Lease ids: 128 random bits from the OS, as 32 hex digits.

`uuid.uuid4().hex` made half of a lease grant's time: a `UUID` object per id,
and a system call for 16 bytes. A system call on the event loop's thread also
lets any other thread that wants the GIL take it (a commit thread writing),
and the loop then waits for it back. So the bytes are read for 256 ids at a
time. Same source (`os.urandom`), same format; only grants (under the service
lock) draw from it.
"""

from __future__ import annotations

import os

_ID_BYTES = 16
_BATCH = 256
_forks = 0  # forks survived by this process, counted in the child


def _forked() -> None:
    global _forks
    _forks += 1


# A forked child must not hand out ids its parent also holds (no check per id:
# os.getpid() is a system call).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class RandomIds:
    """32 lowercase hex digits per id, read from `os.urandom` in batches.
    Not thread-safe: the caller serialises (the service lock)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0
        self._forks = _forks

    def next(self) -> str:
        if self._at >= len(self._buffer) or self._forks != _forks:
            self._buffer = os.urandom(_ID_BYTES * _BATCH)
            self._at = 0
            self._forks = _forks
        start = self._at
        self._at = start + _ID_BYTES
        return self._buffer[start : self._at].hex()
