"""Coordinator restart: how long `load_state` takes to read a search back.

Builds a search's journal in-process (a real `CoordinatorService`, fake
reports, one change per write, no snapshot but the first: keep `--entries`
under 512, where one is due whatever the rule) on a local
directory, then times `recovery.load_state` through a store that adds a
fixed delay to every read, standing in for an object store's round trip
(each journal entry and archive is one GET).

    python benchmarks/bench_recovery.py [--population 256] [--entries 510] [--delay-ms 5]

Compare versions with `--pythonpath DIR` (an export of another commit).
Results go in benchmarks/README.md, section "Coordinator capacity".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(population: int, entries: int, delay_ms: float) -> dict:
    from bench_coordinator import bench_config
    from bench_state_write import FAKE_SHA, RUN, report

    from autolfads.coordinator.search.clock import ManualClock
    from autolfads.coordinator.search.recovery import load_state
    from autolfads.coordinator.search.service import CoordinatorService
    from autolfads.storage import FaultyStore, LocalStore

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        store = LocalStore(Path(tmp))
        cfg = bench_config(population, generations=3)
        service = CoordinatorService.open_search(
            cfg,
            store,
            f"{RUN}/data/{FAKE_SHA}.h5",
            FAKE_SHA,
            clock=ManualClock(),
            snapshot_every=10**6,  # the worst case: every entry since the first write
        )
        while service._commit.writes < entries:
            reply = service.request_work("w0", 1)
            if reply.action != "train":
                break
            report(service, reply.leases[0], "w0")
        slow = FaultyStore(store)
        slow.inject("get", "/coordinator/", delay_s=delay_ms / 1e3, times=None)
        start = time.perf_counter()
        recovered = load_state(slow, RUN)
        seconds = time.perf_counter() - start
        assert recovered is not None
        return {
            "entries_written": service._commit.writes,
            "objects_read": slow.count("get"),
            "load_state_s": round(seconds, 3),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=256)
    p.add_argument("--entries", type=int, default=510, help="journal writes before the restart")
    p.add_argument("--delay-ms", type=float, default=5.0, help="added to every read")
    p.add_argument("--pythonpath", help="run another version (an export of a commit)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pythonpath and not args.child:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([args.pythonpath, str(HERE)])}
        argv = [a for a in sys.argv[1:] if a != "--child"]
        subprocess.run([sys.executable, __file__, *argv, "--child"], env=env, check=True)
        return
    result = measure(args.population, args.entries, args.delay_ms)
    print(json.dumps({"code": args.pythonpath or "this checkout", **result}))


if __name__ == "__main__":
    main()
