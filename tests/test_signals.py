"""SIGTERM / SIGINT stop the coordinator, the trainer and the Katib service
through `StopEvent`: a handler may run between any two steps of the main
thread's `wait`, and must never wait for that thread (the process would
then never stop)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import pytest

from autolfads.signals import StopEvent, restore_signals, stop_on_signals


def test_a_signal_sets_the_stop_and_the_old_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopEvent()
    previous = stop_on_signals(stop)
    try:
        assert not stop.is_set() and not stop.wait(0)
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set() and stop.wait(0) and stop.wait(None)
    finally:
        restore_signals(previous)
    assert signal.getsignal(signal.SIGTERM) is before


def test_handlers_are_installed_from_the_main_thread_only() -> None:
    result: list[dict[int, Any]] = []
    thread = threading.Thread(target=lambda: result.append(stop_on_signals(StopEvent())))
    thread.start()
    thread.join()
    assert result == [{}]


def _wait_traced(stop: StopEvent, timeout: float, at_line: int) -> tuple[bool, int]:
    """`stop.wait(timeout)` with the installed SIGTERM handler run at its
    `at_line`-th line event (0: never), as a signal arriving there would
    be; the result and the number of line events."""
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    lines = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
            if lines == at_line:
                handler(signal.SIGTERM, frame)
        return trace

    sys.settrace(trace)
    try:
        woke = stop.wait(timeout)
    finally:
        sys.settrace(None)
    return woke, lines


@pytest.mark.timeout(60)
def test_a_handler_that_runs_at_any_step_of_wait_does_not_block() -> None:
    # A handler runs on the main thread between two steps of its Python
    # code, where a trace function is called too. At each line of `wait` in
    # turn, the handler runs there: it must return (a threading.Event's
    # `set` never does at the lines of `wait` that hold the Event's lock),
    # and the wait must end set, at once if the signal came before it blocked.
    stop = StopEvent()
    previous = stop_on_signals(stop, [signal.SIGTERM])
    try:
        woke, steps = _wait_traced(stop, 0, at_line=0)  # no signal: every line
        assert not woke and steps >= 3
        for line in range(1, steps + 1):
            stop = StopEvent()
            stop_on_signals(stop, [signal.SIGTERM])  # (the first `previous` comes back at the end)
            woke, _ = _wait_traced(stop, 0.5, at_line=line)
            assert woke, f"not set by a signal at line {line} of wait"
    finally:
        restore_signals(previous)


def test_set_wakes_every_waiter_and_clear_resets() -> None:
    stop = StopEvent()
    woke: list[bool] = []
    waiters = [threading.Thread(target=lambda: woke.append(stop.wait(30))) for _ in range(3)]
    for t in waiters:
        t.start()
    stop.set()
    for t in waiters:
        t.join()
    assert woke == [True, True, True]
    stop.clear()
    assert not stop.is_set() and not stop.wait(0.01)
