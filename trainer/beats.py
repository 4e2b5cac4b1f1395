"""Heartbeats from a helper thread, for leases whose worker is busy with
storage rather than training: a segment loading its data and start
checkpoint, or waiting to be published and uploading.

A slow store is not a silent worker. Without these beats, a download or an
upload longer than the lease timeout expired the lease, the member was
trained again elsewhere, and three such expiries ended it as failed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Beat:
    """`call()` every `interval_s` seconds; it returns False when the lease
    needs no more beats (the coordinator no longer holds it for us)."""

    call: Callable[[], bool]
    interval_s: float


class Beats:
    """Beats, each called on its own interval (the first one interval after
    it is added) from one helper thread, started with the first beat."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[object, tuple[Beat, float]] = {}  # token -> (beat, monotonic due time)
        self._closed = False
        self._thread: threading.Thread | None = None
        # Set by `close`: a beat riding out an outage gives up (pass it as
        # the client's `cancel`), so closing waits for one call at most.
        self.closing = threading.Event()

    def add(self, beat: Beat) -> object:
        token = object()
        with self._cond:
            self._due[token] = (beat, time.monotonic() + beat.interval_s)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="autolfads-beats", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return token

    def discard(self, token: object) -> None:
        with self._cond:
            self._due.pop(token, None)

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
        self.closing.set()
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = [(t, b) for t, (b, at) in self._due.items() if at <= now]
                if not due:
                    soonest = min((at for _, at in self._due.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
                    continue
                for token, beat in due:
                    self._due[token] = (beat, now + beat.interval_s)
            for token, beat in due:  # outside the lock: a beat is an RPC
                if not self._call(beat):
                    self.discard(token)

    @staticmethod
    def _call(beat: Beat) -> bool:
        try:
            return beat.call()
        except Exception as err:
            # An outage: the next beat tries again, and the worker's own
            # calls (the report, above all) ride it out on their own.
            log.debug("heartbeat from the helper thread failed: %s", err)
            return True
