"""Stores that wrap another: `WrapperStore` forwards, `FaultyStore` injects faults.

Coordinator and worker tests inject storage faults through this public seam
(zarr's WrapperStore/LatencyStore idea) instead of overriding a backend's
private methods: wrap any store, then say which operation on which keys
fails, or is slow, and how often.

    store = FaultyStore(LocalStore(tmp))
    store.inject("put", r"/coordinator/state\\.json$", fail="disk full")  # next write fails
    store.inject("put", r"state\\.json$", delay_s=0.02, times=None)       # every write is slow
    store.count("put", r"state\\.json$")                                  # writes so far
    gate = threading.Event()
    store.inject("put", r"/journal/", hold=gate)  # the next write waits for gate.set()
    store.inject("change", r"/coordinator/", fail="crash", after=5, times=None)
                                        # a "crash": every put or delete from the 6th on fails
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from autolfads.storage.base import ObjectInfo, Store
from autolfads.storage.errors import StorageError


class WrapperStore(Store):
    """Forwards every operation to `inner`; keys are validated once, here."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities

    def location(self, key: str | None = None) -> str:
        return self.inner.location(key)

    # The primitives of a store in this package, called with keys already
    # validated by this wrapper's public methods.
    def _put_bytes(
        self, key: str, data: bytes, sha256: str, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        return self.inner._put_bytes(key, data, sha256, content_type, metadata)

    def _put_file(
        self, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        return self.inner._put_file(key, path, content_type, metadata)

    def _get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        return self.inner._get_bytes(key)

    def _download(self, key: str, tmp: Path) -> tuple[ObjectInfo, str]:
        return self.inner._download(key, tmp)

    def _stat(self, key: str) -> ObjectInfo:
        return self.inner._stat(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner._list(prefix)

    def _delete(self, key: str) -> None:
        self.inner._delete(key)

    def _presigned_url(self, key: str, expires_s: int) -> str:
        return self.inner._presigned_url(key, expires_s)


# The operations a fault can target; "put" covers put_bytes/put_file/put_json,
# "get" covers get_bytes/get_file/get_json; "change" covers put and delete.
OPERATIONS = ("put", "get", "stat", "list", "delete", "change")
_CHANGES = ("put", "delete")


@dataclass
class Fault:
    """One injected fault: `op` on keys matching `pattern` fails with
    `error_type(fail)` and/or waits first (`delay_s`, or until `hold` is
    set), `times` times (None: always), once `after` matching calls have
    gone through untouched. `hits` counts the calls hit so far, from the
    moment each starts waiting."""

    op: str
    pattern: re.Pattern[str]
    fail: str | None
    error_type: type[StorageError]
    delay_s: float
    times: int | None
    after: int = 0
    hold: threading.Event | None = None
    hits: int = 0
    passed: int = 0

    def applies(self, op: str, key: str) -> bool:
        """Whether this call is hit (counts the call; lock held)."""
        same = op == self.op or (self.op == "change" and op in _CHANGES)
        if not same or not self.pattern.search(key):
            return False
        if self.passed < self.after:
            self.passed += 1
            return False
        return self.times is None or self.hits < self.times


class FaultyStore(WrapperStore):
    """A wrapper whose operations can be made to fail or be slow, on purpose."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self._faults: list[Fault] = []
        self._calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def inject(
        self,
        op: str,
        pattern: str = "",
        *,
        fail: str | None = None,
        error_type: type[StorageError] = StorageError,
        delay_s: float = 0.0,
        times: int | None = 1,
        after: int = 0,
        hold: threading.Event | None = None,
    ) -> Fault:
        """Add a fault; `pattern` is a regular expression searched in the key;
        the first `after` matching calls go through. `hold`: a hit call
        waits until the event is set (a test decides when it goes on,
        instead of racing a delay)."""
        if op not in OPERATIONS:
            raise ValueError(f"op {op!r} must be one of {OPERATIONS}")
        if fail is None and delay_s <= 0 and hold is None:
            raise ValueError("a fault needs fail=..., delay_s > 0 or hold=...")
        if after < 0:
            raise ValueError(f"after {after} must be >= 0")
        fault = Fault(op, re.compile(pattern), fail, error_type, delay_s, times, after, hold)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, op: str, pattern: str = "") -> int:
        """How many `op` calls on keys matching `pattern` reached this store."""
        return len(self.calls(op, pattern))

    def calls(self, op: str, pattern: str = "") -> list[str]:
        """The keys of the `op` calls on keys matching `pattern`, in order."""
        compiled = re.compile(pattern)
        ops = _CHANGES if op == "change" else (op,)
        with self._lock:
            return [key for o, key in self._calls if o in ops and compiled.search(key)]

    def _enter(self, op: str, key: str) -> None:
        with self._lock:
            self._calls.append((op, key))
            due = [f for f in self._faults if f.applies(op, key)]
            for fault in due:
                fault.hits += 1
        for fault in due:
            if fault.delay_s > 0:
                time.sleep(fault.delay_s)
            if fault.hold is not None:
                fault.hold.wait()
            if fault.fail is not None:
                raise fault.error_type(f"{self.location(key)}: {fault.fail} (injected)")

    def _put_bytes(
        self, key: str, data: bytes, sha256: str, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        self._enter("put", key)
        return super()._put_bytes(key, data, sha256, content_type, metadata)

    def _put_file(
        self, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        self._enter("put", key)
        return super()._put_file(key, path, content_type, metadata)

    def _get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        self._enter("get", key)
        return super()._get_bytes(key)

    def _download(self, key: str, tmp: Path) -> tuple[ObjectInfo, str]:
        self._enter("get", key)
        return super()._download(key, tmp)

    def _stat(self, key: str) -> ObjectInfo:
        self._enter("stat", key)
        return super()._stat(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._enter("list", prefix)
        return super()._list(prefix)

    def _delete(self, key: str) -> None:
        self._enter("delete", key)
        super()._delete(key)
