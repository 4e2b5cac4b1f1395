"""benchmarks/bench_coordinator.py on a tiny search: the load generator runs
the protocol to its end against the real coordinator and against
`floor_coordinator.py`, and both answer it the same way. The README's
comparison of the two rests on that (the figures themselves are not
measured here)."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real coordinator processes under load

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_coordinator.py"
POPULATION, WORKERS, GENERATIONS, HEARTBEATS = 3, 5, 2, 2


def run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, str(SCRIPT), "--population", str(POPULATION),
        "--workers", str(WORKERS), "--generations", str(GENERATIONS),
        "--heartbeats", str(HEARTBEATS), "--epoch-s", "0.02", "--channels", "2",
        "--time-limit", "120", "--json", str(out), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


VARIANTS = {"coordinator": [], "floor": ["--floor"], "relays": ["--relays", "2"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_load_runs_the_search_to_its_end(tmp_path: Path, variant: str) -> None:
    floor = variant == "floor"
    stores = tmp_path / "stores"
    stores.mkdir()
    result = run_bench(tmp_path, "--store-dir", str(stores), *VARIANTS[variant])
    assert result["coordinator"] == ("floor_coordinator.py" if floor else "this checkout")
    # The server's CPU counts every process of it: with relays, the fronts too.
    processes = 3 if variant == "relays" else 1
    assert len(result["server_cpu_by_process_s"]) == processes
    assert result["store_filesystem"] == _bench().filesystem_of(stores.resolve())
    assert list(stores.iterdir()) == []  # the run's temp folder was there, and is gone
    segments = POPULATION * GENERATIONS
    assert result["errors"] == {}
    # Every segment leased once and every worker told DONE once: long polls,
    # so no WAIT and no other RequestWork.
    assert result["replies"] == {"TRAIN": segments, "DONE": WORKERS}
    rpc = result["rpc"]
    assert rpc["RequestWork"]["calls"] == segments + WORKERS
    assert rpc["Heartbeat"]["calls"] == segments * HEARTBEATS
    assert rpc["ReportResult"]["calls"] == segments
    # Generation 0, generation 1, then the end, in that order.
    marks = [mark for _, mark in result["generation_marks_s"]]
    assert marks == ["start", 0, 1, "end"]
    # Every worker heard DONE after the last report was sent.
    heard = result["done_heard_ms"]
    assert 0 < heard["p50"] <= heard["p99"] <= heard["last"]
    assert result["server_cpu_s"] >= result["server_cpu_sys_s"] >= 0
    # `--channels 2` is two connections, not two channels on one.
    assert result["client_connections"] == 2
    # Group commit: a write covers one change or more (each segment's grant
    # and report, and the search's start), and the floor writes nothing.
    if floor:
        assert result["state_writes"] is None
    else:
        assert 0 < result["state_writes"] <= 2 * segments + 1


def _bench():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module("bench_coordinator")
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_each_result_names_the_file_system_its_store_was_on() -> None:
    mounts = (
        "/dev/vda / ext4 rw,relatime 0 0\n"
        "tmpfs /dev/shm tmpfs rw 0 0\n"
        "/dev/loop0 /mnt/my\\040disk ext4 rw 0 0\n"
        "tmpfs /dev/shmem tmpfs rw 0 0\n"
    )
    fs = _bench().filesystem_of
    assert fs(Path("/dev/shm/bench-x"), mounts) == "tmpfs at /dev/shm"
    assert fs(Path("/dev/shmx"), mounts) == "ext4 at /"  # a prefix of a name is not a parent
    assert fs(Path("/mnt/my disk/a"), mounts) == "ext4 at /mnt/my disk"
    assert fs(Path("/tmp"), "") == "unknown"


def test_a_store_folder_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    cmd = [sys.executable, str(SCRIPT), "--store-dir", str(missing)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"--store-dir {missing}: not an existing folder" in proc.stderr
    assert not missing.exists()


def test_the_timeline_sees_every_method_arrive(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "--timeline", str(tmp_path / "timeline.json"))
    assert result["errors"] == {}
    waits = result["before_handler_ms"]
    assert set(waits) >= {"RequestWork", "Heartbeat", "ReportResult"}
    assert all(0 <= w["p50"] <= w["p99"] for w in waits.values())
    assert isinstance(result["gc_pauses_ms"], dict)  # often empty in a search this small


def test_the_timeline_times_each_collection() -> None:
    path = REPO / "benchmarks" / "timeline_coordinator.py"
    spec = importlib.util.spec_from_file_location("timeline_coordinator", path)
    assert spec is not None and spec.loader is not None
    timeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timeline)
    log = timeline.CollectionLog()
    try:
        gc.collect()
    finally:
        log.close()
    assert any(generation == 2 and seconds > 0 for generation, seconds in log.pauses)
    gc.collect()  # after close: not noted
    assert len([g for g, _ in log.pauses if g == 2]) == 1


def test_the_loop_thread_is_the_busiest_one_alive_throughout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    bench = importlib.import_module("bench_coordinator")
    # Threads that started or ended between the readings are left out: their
    # CPU is in the process's total, but none of them is the loop.
    before = {1: 1.0, 2: 5.0, 3: 0.0}
    after = {1: 1.5, 2: 5.2, 4: 9.0}
    assert bench.busiest_thread_s(before, after) == pytest.approx(0.5)
    assert bench.busiest_thread_s({}, after) == 0.0
    # The live reading names this very thread, by its native id.
    seconds = bench.thread_cpu(os.getpid())
    assert threading.get_native_id() in seconds
    assert all(s >= 0 for s in seconds.values())


def test_the_thread_readings_outlive_a_server_that_exits_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A coordinator whose search has ended may exit before the load
    # generator's last call returns. Until it is waited for it is a zombie,
    # which lists its main thread only: a reading taken then lost the loop
    # thread (0.01 s reported once).
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    bench = importlib.import_module("bench_coordinator")
    busy = (  # a thread alive from the start that burns 0.3 s of CPU when told
        "import sys, threading, time\n"
        "def burn():\n"
        "    sys.stdin.readline()\n"
        "    while time.thread_time() < 0.3: pass\n"
        "    print('burnt', flush=True)\n"
        "    sys.stdin.readline()\n"
        "t = threading.Thread(target=burn); t.start()\n"
        "print('started', flush=True); t.join()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", busy], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    assert child.stdout.readline() == "started\n"
    sampler = bench.ThreadCpuSampler(child.pid, interval_s=3600)  # sampled by hand below
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "burnt\n"
    sampler.sample()
    child.stdin.close()  # the thread ends, then the process
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    assert bench.busiest_thread_s(sampler.first, bench.thread_cpu(child.pid)) < 0.25
    assert sampler.stop() >= 0.25
    child.wait()
