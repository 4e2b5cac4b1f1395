"""Where a call's time goes before its handler: `bench_coordinator.py --timeline`.

The load generator tags each call with `x-bench-call` metadata and notes
when it sent it; this script serves the same coordinator as `autolfads
coordinator` (the public `serve`) with one extra interceptor that notes
when each tagged call reaches the interceptors, i.e. once gRPC has
accepted it and just before the handler runs. Both sides read
`time.monotonic()`, the same clock for every process on a Linux machine,
so "arrival - sent" is the time a call waited in the client, on the wire
and in the server's gRPC before any of our code saw it. It also times every
garbage collection in the coordinator process (`gc.callbacks`): each one
stops the event loop, whichever thread runs it.

    python benchmarks/timeline_coordinator.py STORE_DIR RUN PORT_FILE ARRIVALS_JSON
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

KEY = "x-bench-call"


class ArrivalLog(grpc.aio.ServerInterceptor):
    """Notes (key, monotonic time) of every tagged call as it arrives."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []

    async def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        now = time.monotonic()
        for key, value in details.invocation_metadata or ():
            if key == KEY:
                self.arrivals.append((value, now))
        return await continuation(details)


class CollectionLog:
    """(generation, seconds) of every garbage collection while installed."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._note)

    def close(self) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._start))


def serve_with_arrivals(store_dir: str, run: str, port_file: str, out: str) -> int:
    from autolfads.coordinator.search.service import CoordinatorService
    from autolfads.coordinator.search.staging import load_run
    from autolfads.coordinator.wire.server import serve
    from autolfads.storage import LocalStore

    try:  # as `autolfads coordinator` does; an export of an older commit has none
        from autolfads.coordinator.wire.collector import settle_collector
    except ImportError:
        pass
    else:
        settle_collector()
    collections = CollectionLog()
    store = LocalStore(Path(store_dir))
    cfg, data_key, data_sha = load_run(store, run, None)
    service = CoordinatorService.open_search(cfg, store, data_key, data_sha, lease_timeout_s=600)
    log = ArrivalLog()
    code = serve(service, "127.0.0.1:0", port_file=Path(port_file), interceptors=[log])
    Path(out).write_text(json.dumps({"arrivals": log.arrivals, "gc": collections.pauses}))
    return code


def join(sent: list[tuple[str, str, float, float]], served: dict[str, Any]) -> dict:
    """Per method: how long calls waited before the handler, against their
    whole latency (ms); per 200 ms window of sending, each method's median
    wait, where some method waited over 100 ms; and the coordinator's
    garbage collections per generation (count, total and longest ms)."""
    arrived = dict(served["arrivals"])
    start = min(t for _, _, t, _ in sent)
    waits: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, list[float]] = defaultdict(list)
    windows: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, method, sent_at, latency in sent:
        if key not in arrived:
            continue  # refused or cancelled before it arrived
        wait = (arrived[key] - sent_at) * 1e3
        waits[method].append(wait)
        totals[method].append(latency * 1e3)
        windows[round((sent_at - start) // 0.2 * 0.2, 1)][method].append(wait)

    def pct(values: list[float]) -> dict[str, float]:
        return {p: round(float(np.percentile(values, q)), 1) for p, q in (("p50", 50), ("p99", 99))}

    pauses: dict[int, list[float]] = defaultdict(list)
    for generation, seconds in served["gc"]:
        pauses[generation].append(seconds * 1e3)
    return {
        "gc_pauses_ms": {
            f"generation {g}": {"count": len(v), "total": round(sum(v)), "max": round(max(v), 1)}
            for g, v in sorted(pauses.items())
        },
        "before_handler_ms": {m: pct(v) for m, v in sorted(waits.items())},
        "latency_ms": {m: pct(v) for m, v in sorted(totals.items())},
        "median_wait_by_window_ms": {
            t: {m: round(float(np.median(v)), 1) for m, v in sorted(by.items())}
            for t, by in sorted(windows.items())
            if max(max(v) for v in by.values()) > 100
        },
    }


if __name__ == "__main__":
    sys.exit(serve_with_arrivals(*sys.argv[1:5]))
