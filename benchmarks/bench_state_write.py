"""Coordinator state writes: does their cost grow with finished generations?

Drives a real `CoordinatorService` in-process (no gRPC, no training: reports
carry a fake metric and checkpoint checksum) through many generations of a
large population on an in-memory store. At chosen generations, half-way
through, it points the service's store at a real local directory (ext4,
every write fsynced) for a number of single reports and times, interleaved:

- **journal** (this version): one report's journal entry, as the service
  writes it (put time and bytes, from a timing wrapper around the store);
- **state.json** (the previous version): encoding the whole state with
  `SearchState.to_json` (record texts cached, as before) and writing it;
- **snapshot**: rendering and writing one snapshot of the live state (every
  64 entries, off the callers' path);
- **take**: taking each of those reports' batch for its write (the journal
  entry's diff and encoding, under the service lock; `take_us`), which
  should not grow with the population either.

It also times, in memory, the two parts of each generation's closing
report that hold the service lock (`close_under_the_lock_ms`, sync mode),
and at the end the encoding of one segment record
(`segment_record_encode_us`): as the journal encodes a changed record
(`encoded()` after a field assignment) against the Python walk every
record took before (`tracked.dumps`).

    python benchmarks/bench_state_write.py --population 1024 --generations 40 --at 1 40
    python benchmarks/bench_state_write.py --mode async --generations 4 --at 99  (in-memory only)

Results go in benchmarks/README.md, section "Coordinator capacity".
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
from bench_coordinator import bench_config

from autolfads.config import RunConfig
from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.messages import SegmentReport
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.search.tracked import dumps
from autolfads.storage import LocalStore, MemoryStore, Store, WrapperStore
from autolfads.storage.base import ObjectInfo

RUN = "bench"
FAKE_SHA = "ab" * 32


class TimedStore(WrapperStore):
    """Forwards to a store that can be swapped, timing every put."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.puts: list[tuple[str, float, int]] = []  # key, seconds, bytes

    def _put_bytes(
        self, key: str, data: bytes, sha256: str, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        start = time.perf_counter()
        info = self.inner._put_bytes(key, data, sha256, content_type, metadata)
        self.puts.append((key, time.perf_counter() - start, len(data)))
        return info


def config(population: int, generations: int, mode: Literal["sync", "async"] = "sync") -> RunConfig:
    return bench_config(population, generations, mode)


def fake_report(grant, worker: str) -> SegmentReport:
    rank = int(grant.member[1:])
    metric = 1.0 / (1 + grant.generation) + rank * 1e-4
    return SegmentReport(
        lease_id=grant.lease_id, worker_id=worker, member=grant.member,
        generation=grant.generation, outcome="succeeded", hparams=dict(grant.hparams),
        epochs=((0, {"valid_recon_smth": metric}),), fitness=metric,
        checkpoint_key=grant.checkpoint_key, checkpoint_sha256=FAKE_SHA, checkpoint_size=1,
    )  # fmt: skip


def report(service: CoordinatorService, grant, worker: str) -> None:
    service.report(fake_report(grant, worker))


class CloseTimer:
    """Times the report that closes each generation, in its two parts that
    hold the service lock: the change itself (`report_staged`; on the gRPC
    server, on the event loop) and taking its batch for the write (rendering
    the generation record, the member histories and the journal entry; on a
    commit thread). While either runs, the server's loop cannot answer."""

    def __init__(self, service: CoordinatorService) -> None:
        self.service = service
        self.takes: list[float] = []
        self.closes: dict[int, dict[str, float]] = {}
        commit = service._commit
        take = commit._take

        def timed_take():
            start = time.perf_counter()
            batch = take()
            self.takes.append(time.perf_counter() - start)
            return batch

        commit._take = timed_take  # type: ignore[method-assign]

    def report(self, grant, worker: str) -> None:
        generation = self.service._state.generation
        start = time.perf_counter()
        _, ticket = self.service.report_staged(fake_report(grant, worker))
        staged = time.perf_counter() - start
        self.takes.clear()
        self.service.flush()
        if self.service._state.generation != generation:  # this report closed it
            self.closes[generation] = {
                "change_ms": round(staged * 1e3, 1),
                "batch_ms": round(self.takes[0] * 1e3, 1),
            }


def measure(
    service: CoordinatorService, store: TimedStore, disk: Path, samples: int, closes: CloseTimer
) -> dict:
    """`samples` single reports on the local disk, each followed by the
    previous version's whole-state write of the same state (interleaved)."""
    memory = store.inner
    local = LocalStore(disk)
    store.inner = local
    before_s, before_bytes = [], 0
    grants = service.request_work("probe", samples).leases
    store.puts.clear()
    closes.takes.clear()
    for grant in grants:
        report(service, grant, "probe")
        start = time.perf_counter()
        text = service._state.to_json().encode()  # what the previous commit encoded
        local.put_bytes(f"{RUN}/coordinator/state.json", text, content_type="application/json")
        before_s.append(time.perf_counter() - start)
        before_bytes = len(text)
    entries = [(s, n) for k, s, n in store.puts if "/coordinator/journal/" in k]
    takes = list(closes.takes)
    image = service._commit.image
    snap_start = time.perf_counter()
    key, data = service._commit.writer.snapshot(image)
    local.put_bytes(key, data, content_type="application/json")
    snapshot_s = time.perf_counter() - snap_start
    store.inner = memory
    return {
        "journal_entry_ms": ms(s for s, _ in entries),
        "journal_entry_bytes": int(np.median([n for _, n in entries])),
        "state_json_ms": ms(before_s),
        "state_json_bytes": before_bytes,
        "snapshot_ms": round(snapshot_s * 1e3, 1),
        "snapshot_bytes": len(data),
        "take_us": {
            "p50": round(float(np.median(takes)) * 1e6, 1),
            "max": round(max(takes) * 1e6, 1),
        },
        "archived_through": image.archived_through,
    }


def encode_us(service: CoordinatorService, rounds: int = 20) -> dict:
    """Microseconds per segment record, the fastest of `rounds` passes over
    the live segments (the least disturbed by other work on the machine):
    `encoded()` right after a field assignment (which drops the record's
    remembered text, as any change does) against the walk (`dumps`)."""
    segments = list(service._state.segments.values())

    def per_record(encode) -> float:
        passes = []
        for _ in range(rounds):
            start = time.perf_counter()
            for segment in segments:
                encode(segment)
            passes.append((time.perf_counter() - start) / len(segments))
        return round(min(passes) * 1e6, 2)

    def changed(segment) -> str:
        segment.attempts = segment.attempts  # a field assignment: the text is stale
        return segment.encoded()

    return {"encoded_after_a_change": per_record(changed), "walk": per_record(dumps)}


def ms(seconds) -> dict:
    values = np.asarray(list(seconds)) * 1e3
    return {"p50": round(float(np.median(values)), 2), "max": round(float(values.max()), 2)}


def run(args: argparse.Namespace, root: Path) -> dict:
    store = TimedStore(MemoryStore())
    cfg = config(args.population, args.generations, args.mode)
    service = CoordinatorService.open_search(
        cfg, store, f"{RUN}/data/{FAKE_SHA}.h5", FAKE_SHA, clock=ManualClock()
    )
    results: dict = {}
    wall: dict[int, float] = defaultdict(float)
    closes = CloseTimer(service)
    while not service.terminal:
        generation = service._state.generation
        start = time.perf_counter()
        reply = service.request_work("w0", 16)
        if reply.action != "train":
            break
        for grant in reply.leases:
            closes.report(grant, "w0")
        wall[generation] += time.perf_counter() - start
        half = sum(1 for s in service._state.segments.values() if s.phase == "reported")
        if generation in args.at and generation not in results and half >= args.population // 2:
            results[generation] = measure(
                service, store, root / f"g{generation}", args.samples, closes
            )
            print(generation, json.dumps(results[generation]), flush=True)
    per_generation = {g: round(s, 2) for g, s in wall.items()}
    return {
        "generations": results,
        "in_memory_s_per_generation": per_generation,
        "close_under_the_lock_ms": closes.closes,
        "segment_record_encode_us": encode_us(service),
    }


def settle() -> None:
    """Tune the garbage collector as `autolfads coordinator` does before it
    loads a state (`settle_collector`): without it, the times below include
    collections the server does not make (full ones of 50-200 ms).
    Versions before that change (on PYTHONPATH) run with Python's defaults."""
    try:
        from autolfads.coordinator.wire.collector import settle_collector
    except ImportError:
        return
    settle_collector()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=1024)
    p.add_argument("--generations", type=int, default=41)
    p.add_argument("--at", type=int, nargs="+", default=[1, 40], help="generations to time")
    p.add_argument("--samples", type=int, default=16, help="reports timed per generation")
    p.add_argument("--mode", choices=["sync", "async"], default="sync")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    settle()
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        result = {
            "load_average": os.getloadavg(),
            "population": args.population,
            **run(args, Path(tmp)),
        }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
