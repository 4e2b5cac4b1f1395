"""benchmarks/bench_handlers.py on a tiny search: the handler chain it times
is the server's (interceptors, servicer, service, a commit per change) and
each timed path gets the answer the server gives: CONTINUE, WAIT, a lease
for every held call woken at a generation's boundary, accepted reports.
The README's per-call figures rest on that (they are not measured here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_handlers.py"
PATHS = {
    "Heartbeat",
    "RequestWork answered WAIT",
    "held RequestWork woken and granted",
    "ReportResult (generation's last included)",
}


def test_every_path_is_timed_through_the_servers_chain(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--population", "4", "--calls", "40", "--repeats", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    timed = json.loads(proc.stdout)["cpu_us_per_call"]
    assert set(timed) == PATHS
    assert all(us > 0 for us in timed.values())
