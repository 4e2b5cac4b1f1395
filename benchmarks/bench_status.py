"""GetStatus at scale: does a status view's cost grow with the generations?

Drives a real `CoordinatorService` in-process (no gRPC, no training: reports
carry a fake metric, as in bench_state_write.py) through many generations of
a large population on an in-memory store. Half-way through each chosen
generation it takes a few status views, each after one more change (as a
poll once a second sees it), and times:

- **view**: `service.status()`, what GetStatus does under the service lock;
- **proto**: turning the view into the `SearchStatus` message the way the
  servicer does, and serialising it (outside the lock, but with the GIL).

The fastest of `--samples` calls is printed, with the message's bytes.
Older versions (an export of their commit on PYTHONPATH) are timed the way
their servicer worked.

    python benchmarks/bench_status.py --population 1024 --generations 41 --at 1 10 40
    python benchmarks/bench_status.py --population 1024 --generations 3 --at 1 --changes 256

Results go in benchmarks/README.md, section "Coordinator capacity".
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench_coordinator import bench_config
from bench_state_write import FAKE_SHA, RUN, report

from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.wire import convert
from autolfads.storage import MemoryStore


def to_proto():
    """The servicer's conversion: with its member cache where it has one."""
    if hasattr(convert, "MemberProtos"):
        members = convert.MemberProtos()
        return lambda view: convert.status_to_proto(view, members)
    return convert.status_to_proto


def grant(service: CoordinatorService, count: int) -> list[tuple[str, object]]:
    """`count` members leased (changed) since the last view, 16 per worker:
    (worker, lease) pairs."""
    grants: list[tuple[str, object]] = []
    while len(grants) < count:
        worker = f"probe{len(grants) // 16}"
        got = service.request_work(worker, min(16, count - len(grants))).leases
        if not got:
            break
        grants += [(worker, lease) for lease in got]
    return grants


def measure(service: CoordinatorService, convert_view, samples: int, changes: int) -> dict:
    view_s, proto_s, size = [], [], 0
    for _ in range(samples):
        grants = grant(service, changes)  # a new revision, `changes` members changed
        start = time.perf_counter()
        view = service.status()
        view_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        size = len(convert_view(view).SerializeToString())
        proto_s.append(time.perf_counter() - start)
        for worker, lease in grants:
            report(service, lease, worker)
    return {
        "view_ms": round(min(view_s) * 1e3, 1),
        "proto_ms": round(min(proto_s) * 1e3, 1),
        "bytes": size,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=1024)
    p.add_argument("--generations", type=int, default=41)
    p.add_argument("--at", type=int, nargs="+", default=[1, 10, 40])
    p.add_argument("--samples", type=int, default=5)
    p.add_argument(
        "--changes",
        type=int,
        default=1,
        help="members that change between two views (a poll under load sees hundreds)",
    )
    args = p.parse_args()
    cfg = bench_config(args.population, args.generations + 1)
    service = CoordinatorService.open_search(
        cfg, MemoryStore(), f"{RUN}/data/{FAKE_SHA}.h5", FAKE_SHA, clock=ManualClock()
    )
    convert_view = to_proto()
    pending = set(args.at)
    results = {}
    while pending and not service.terminal:
        state = service._state  # read directly: a status view here would be timed work
        generation = state.generation
        for grant in service.request_work("w0", 16).leases:
            report(service, grant, "w0")
        reported = sum(s.phase == "reported" for s in state.segments.values())
        if generation in pending and reported >= args.population // 2:
            pending.discard(generation)
            results[generation] = measure(service, convert_view, args.samples, args.changes)
            print(generation, json.dumps(results[generation]), flush=True)
    print(json.dumps({"load_average": os.getloadavg(), "population": args.population,
                      "generations": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
