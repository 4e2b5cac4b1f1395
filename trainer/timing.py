"""Where a trainer process spends its wall-clock seconds, in its log.

The worker's main thread is always in exactly one phase; `WorkerClock` adds
up the seconds of each and logs the running totals as one line

    timing {"pid": 123, "worker": "w1", "event": "segment", "t": ..., "process_start": ...,
            "start": 2.1, "data": 0.3, "build": 0.2, "ckpt_load": 0.1, "train": 41.2, ...}

after every round of leases and when the worker exits (`event` "exit").
The totals are cumulative, so the last line of a process tells its whole
story; `benchmarks/worker_breakdown.py` reads these lines from the trainers'
logs. `start` is the time from the process's creation (the kernel's record,
so the interpreter's start and the imports count) to the first lease request;
`t - process_start` minus the phases is time no phase claimed.

The lines go to the `autolfads.timing` logger at INFO: shown with
`--log-level INFO`, or at any log level when the environment sets
AUTOLFADS_TIMING_LOG=1, as `autolfads run` does for its trainers (their
output goes to log files; a trainer on a terminal keeps its one-line errors).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("autolfads.timing")
TIMING_ENV = "AUTOLFADS_TIMING_LOG"

# The phases of a trainer's main thread, in the order the breakdown prints them.
PHASES = (
    "start",  # process creation -> first lease request (interpreter, imports, set-up)
    "data",  # the run's config and data file (fetched once per dataset)
    "build",  # model, optimizer and data tensors: built, or reset to a lease's start
    "ckpt_load",  # start checkpoint fetched, verified and parsed
    "train",  # training epochs (train + validation pass)
    "ckpt_save",  # checkpoint serialised and stored, metrics.json stored
    "rpc",  # lease requests that got work, heartbeats, reports
    "wait",  # lease requests answered WAIT and the sleep after them
)
TIMING_PREFIX = "timing "


def process_start_time() -> float:
    """This process's creation time (epoch seconds), from /proc on Linux;
    the current time where that is unavailable."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # Field 22 (after the command name in parentheses): start time in
            # clock ticks after boot.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])  # seconds since boot, 10 ms steps
        return time.time() - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class WorkerClock:
    """Seconds per phase of this process's main thread (not thread-safe: one
    thread only)."""

    def __init__(self, worker_id: str) -> None:
        # Read here, not at import: `autolfads run` forks trainers from a
        # template that imported this module before their environment was set.
        if os.environ.get(TIMING_ENV) == "1":
            log.setLevel(logging.INFO)
        self.worker_id = worker_id
        self.process_start = process_start_time()
        self.totals = dict.fromkeys(PHASES, 0.0)

    def started(self) -> None:
        """The loop begins: everything since the process was created is `start`."""
        self.totals["start"] = time.time() - self.process_start
        self.emit("started")

    def add(self, name: str, since: float, held_s: float = 0.0) -> None:
        """Charge `name` with the seconds since `since` (a `time.perf_counter()`),
        less `held_s` of them, which go to "wait" (a long poll's hold)."""
        elapsed = time.perf_counter() - since
        held_s = min(max(held_s, 0.0), elapsed)
        self.totals[name] += elapsed - held_s
        self.totals["wait"] += held_s

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        assert name in self.totals, f"unknown phase {name!r}"
        since = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, since)

    def emit(self, event: str) -> None:
        doc = {
            "pid": os.getpid(),
            "worker": self.worker_id,
            "event": event,
            "t": round(time.time(), 4),
            "process_start": round(self.process_start, 4),
            **{k: round(v, 4) for k, v in self.totals.items()},
        }
        log.info("%s%s", TIMING_PREFIX, json.dumps(doc, sort_keys=True))
