"""What `autolfads run --ray` adds over `autolfads run` on this machine.

Runs the tiny example search (4 members x 3 generations = 12 segments) with
2 trainers both ways, on local storage: once as `autolfads run`, once on a
local Ray cluster (head on 127.0.0.1, started here and not counted). Prints
the wall time of each, the driver's time to join the cluster, the time until
the coordinator actor serves, and the difference per segment.

    python benchmarks/bench_ray.py   (needs the 'ray' extra; ~2 minutes)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEGMENTS = 4 * 3
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def timed_run(root: Path, *extra: str) -> tuple[float, str]:
    (root / "cfg").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "tiny_search.yaml", root / "cfg" / "tiny.yaml")
    # The data is generated before the clock starts, the same for both.
    subprocess.run(
        [sys.executable, "-m", "autolfads", "stage", "cfg/tiny.yaml", "--storage", "staged"],
        cwd=root, env=ENV, check=True, capture_output=True,
    )  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "autolfads", "--log-level", "INFO", "run", "cfg/tiny.yaml",
         "--workers", "2", "--threads", "1", "--no-report", "--progress", "quiet", *extra],
        cwd=root, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return elapsed, proc.stderr


def main() -> None:
    os.environ.update(ENV)
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "node_ip_address": "127.0.0.1"},
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local_s, _ = timed_run(Path(tmp) / "local")
            ray_s, log = timed_run(Path(tmp) / "ray", "--ray", cluster.address)
    finally:
        cluster.shutdown()
    found = re.search(r"coordinator actor up in ([\d.]+) s", log)
    up = float(found.group(1)) if found else float("nan")
    print(f"autolfads run:          {local_s:6.1f} s")
    print(f"autolfads run --ray:    {ray_s:6.1f} s")
    print(f"coordinator actor up:   {up:6.1f} s")
    print(f"difference per segment: {(ray_s - local_s) / SEGMENTS:6.2f} s ({SEGMENTS} segments)")
    print(f"  without the start-up: {(ray_s - local_s - up) / SEGMENTS:6.2f} s")


if __name__ == "__main__":
    main()
