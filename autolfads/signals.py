"""Stopping on SIGTERM / SIGINT without a deadlock.

A signal handler runs on the main thread between two steps of whatever
that thread was doing. `threading.Event.set` takes the lock that
`Event.wait` holds for a few steps before it blocks and again after it
wakes, so a handler that sets the Event the main thread is waiting on can,
rarely, wait for its own thread forever: the process then never stops.

`StopEvent` is set by a plain assignment and a token put in a
`queue.SimpleQueue` (its `put` is reentrant, documented safe in signal
handlers), and waited on through that queue: no step of `wait` holds
anything `set` needs. It is a `threading.Event`, so it goes wherever one
is expected (the worker's stop, the client's `cancel`).
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Iterable
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopEvent(threading.Event):
    """An Event that a signal handler may set (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._raised = False
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()

    def is_set(self) -> bool:
        return self._raised

    def set(self) -> None:
        self._raised = True
        self._tokens.put(None)

    def clear(self) -> None:
        self._raised = False
        while True:
            try:
                self._tokens.get_nowait()
            except queue.Empty:
                return

    def wait(self, timeout: float | None = None) -> bool:
        if self._raised:
            return True
        try:
            self._tokens.get(timeout=timeout)
        except queue.Empty:
            return self._raised
        self._tokens.put(None)  # the next waiter wakes too
        return True


def stop_on_signals(
    stop: StopEvent, signals: Iterable[signal.Signals] = STOP_SIGNALS
) -> dict[int, Any]:
    """Let `signals` set `stop`; the handlers they had before (to give to
    `restore_signals`). Only the main thread may install handlers: from
    any other, nothing changes and the answer is empty."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for sig in signals:
        previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    return previous


def interrupt_on_sigterm() -> dict[int, Any]:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt on the main thread, so a
    command that already stops cleanly on Ctrl-C does the same when `kill`,
    `timeout`, systemd or a batch scheduler stops it; the previous handlers
    (for `restore_signals`). Nothing changes off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            previous[sig] = signal.signal(sig, interrupt)
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
