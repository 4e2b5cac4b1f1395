"""Advisory file locks shared by threads and processes of one machine.

`flock` locks belong to an open file description, so each acquisition opens
the lock file afresh: two threads of one process exclude each other just as
two processes do. Without fcntl (non-POSIX) the locks are no-ops and the
callers' atomic renames alone keep data whole.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class FileLock:
    """`with FileLock(path):` exclusive; `FileLock(path, shared=True)` shared."""

    def __init__(self, path: Path, *, shared: bool = False, make_folder: bool = False) -> None:
        self.path = path
        self.shared = shared
        # Exclusive (writer) locks may make their folder, on first use only.
        self.make_folder = make_folder
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        try:
            self._fd = self._open()
        except OSError:
            if not self.shared:
                raise
            # A read-only store: no writer can run, so readers need no lock.
            return self
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
            except BaseException:
                os.close(self._fd)
                self._fd = None
                raise
        return self

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT
        try:
            return os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            if not self.make_folder:
                raise
        # On a read-only store this fails, as the write would after it.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, flags, 0o644)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


class StripedLocks:
    """A fixed set of lock files in `folder`, picked by hashing a name.

    Bounded: 256 files however many keys a store holds."""

    STRIPES = 256

    def __init__(self, folder: Path) -> None:
        # Made by the first writer (`exclusive`), so that reading a store
        # creates nothing. A reader that finds no lock file reads unlocked;
        # only a read overlapping the store's very first writes to that key
        # could pair new data with an old sidecar, and the checksum check
        # (which re-reads once on a mismatch) catches exactly that.
        self.folder = folder

    def path_for(self, name: str) -> Path:
        stripe = hashlib.sha256(name.encode("utf-8")).digest()[0] % self.STRIPES
        return self.folder / f"{stripe:02x}.lock"

    def exclusive(self, name: str) -> FileLock:
        return FileLock(self.path_for(name), make_folder=True)

    def shared(self, name: str) -> FileLock:
        return FileLock(self.path_for(name), shared=True)
