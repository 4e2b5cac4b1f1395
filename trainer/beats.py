"""Heartbeats from a helper thread, for leases whose worker is busy with
storage rather than training: a segment loading its data and start
checkpoint, or waiting to be published and uploading.

A slow store is not a silent worker. Without these beats, a download or an
upload longer than the lease timeout expired the lease, the member was
trained again elsewhere, and three such expiries ended it as failed.

A stuck store is, though: each beat stops after `limit_s` (a hung NFS write
must not keep a lease, and with it a synchronous generation, forever), and
the lease then expires as it always did. A beat is one attempt (no riding
out an outage: its interval is the retry), so one unreachable coordinator
delays the other beats by one call at most, and so does `close`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Beat:
    """`call()` every `interval_s` seconds for at most `limit_s`; `call`
    returns False when the lease needs no more beats (the coordinator no
    longer holds it for us). `what` names the lease in the log."""

    call: Callable[[], bool]
    interval_s: float
    limit_s: float
    what: str

    def __post_init__(self) -> None:
        for name in ("interval_s", "limit_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Beat.{name} must be a positive number of seconds, not {value}")


@dataclass
class _Scheduled:
    beat: Beat
    due: float  # monotonic
    end: float  # monotonic: no beat after this


class Beats:
    """Beats, each called on its own interval (the first one interval after
    it is added) from one helper thread, started with the first beat."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._scheduled: dict[object, _Scheduled] = {}  # token -> its schedule
        self._closed = False
        self._thread: threading.Thread | None = None
        self._calling: object | None = None  # the token whose beat is under way

    def add(self, beat: Beat) -> object:
        token = object()
        now = time.monotonic()
        with self._cond:
            self._scheduled[token] = _Scheduled(beat, now + beat.interval_s, now + beat.limit_s)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="autolfads-beats", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return token

    def discard(self, token: object) -> None:
        """No more calls of that beat; returns once a call of it under way has
        ended (no heartbeat lands after the report that follows)."""
        with self._cond:
            self._scheduled.pop(token, None)
            while self._calling is token:
                self._cond.wait()

    @contextlib.contextmanager
    def during(self, beats: Iterable[Beat]) -> Iterator[None]:
        """`beats` are called while the block runs."""
        tokens = [self.add(beat) for beat in beats]
        try:
            yield
        finally:
            for token in tokens:
                self.discard(token)

    def close(self) -> None:
        """Stop, once a call under way (one attempt) has ended."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                self._drop_expired(now)
                due = [t for t, s in self._scheduled.items() if s.due <= now]
                if not due:
                    soonest = min((s.due for s in self._scheduled.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
                    continue
            for token in due:  # each outside the lock: a beat is an RPC
                beat = self._next(token)
                if beat is None:
                    continue
                try:
                    keep = self._call(beat)
                finally:
                    with self._cond:
                        self._calling = None
                        self._cond.notify_all()
                if not keep:
                    self.discard(token)

    def _drop_expired(self, now: float) -> None:
        for token, s in list(self._scheduled.items()):
            if s.end <= now:
                del self._scheduled[token]
                log.warning(
                    "%s: storage has kept this worker waiting for %.0f s; no more "
                    "heartbeats for it, so its lease may expire",
                    s.beat.what,
                    s.beat.limit_s,
                )

    def _next(self, token: object) -> Beat | None:
        """The beat to call now and its next time; None if it was discarded
        (or all were closed) since it fell due."""
        with self._cond:
            scheduled = self._scheduled.get(token)
            if self._closed or scheduled is None:
                return None
            scheduled.due = time.monotonic() + scheduled.beat.interval_s
            self._calling = token
            return scheduled.beat

    @staticmethod
    def _call(beat: Beat) -> bool:
        try:
            return beat.call()
        except Exception as err:
            # The coordinator unreachable, say: the next beat tries again,
            # and the worker's own calls (the report) ride it out.
            log.debug("%s: heartbeat from the helper thread failed: %s", beat.what, err)
            return True
