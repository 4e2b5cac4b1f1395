"""Coordinator capacity: how many simulated workers one coordinator serves.

Starts a real coordinator process (`autolfads coordinator`, local-directory
storage in a temp dir, a large population, 1-epoch segments) on loopback, and
drives it with thousands of simulated workers (asyncio tasks on grpc.aio
channels) that run the real protocol: RequestWork -> Heartbeat xH ->
ReportResult with a fake metric, no training; RequestWork as a long poll
held up to `--wait-s` like the trainer's (0: poll on WAIT hints, as before
long polls). Records throughput and p50/p99 latency per RPC (a held
RequestWork's latency without the time the coordinator held it for work:
that is the wait for a generation to open, not service time); when each
generation's first lease and the first DONE reached a worker; the
coordinator process's CPU time per answered RPC (all of it: gRPC,
interceptors, logic, state writes); and the bytes of its persisted state. `--pythonpath DIR` runs
another version of the coordinator (an export of an older commit laid out
as the `autolfads` package) against the same load, for interleaved
before/after runs. `--timeline` serves the coordinator through
`timeline_coordinator.py` instead, and reports how long each call waited
before its handler ran (and the load generator's own loop lag).
`--floor` serves the same load from `floor_coordinator.py` instead: the
protocol with no storage and no PBT, i.e. what the gRPC runtime and the
load generator alone cost on this machine. `--store-dir DIR` makes the
run's temp folder, and so the coordinator's store, in DIR (e.g. /dev/shm);
each result names the store's file system (`store_filesystem`).

    python benchmarks/bench_coordinator.py --population 1024 --workers 2000 --generations 2

Results go in benchmarks/README.md, section "Coordinator capacity".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import grpc
import numpy as np
import timeline_coordinator as timeline

from autolfads.config import DataConfig, PbtConfig, RunConfig, TrainingConfig
from autolfads.coordinator.search.staging import stage_run
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc
from autolfads.storage import LocalStore, RunLayout
from autolfads.trainer.data.lfads_h5 import write_lfads_h5
from autolfads.trainer.data.synth import make_synthetic

RUN = "bench"
FAKE_SHA = "ab" * 32


@dataclass
class Recorder:
    """Latency samples (seconds) and failures per RPC method."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    started: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # When each failed call was sent (monotonic), by "method:code"
    failed_at: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    replies: Counter[str] = field(default_factory=Counter)
    # --timeline: (key, method, monotonic send time, latency) of tagged calls
    sent: list[tuple[str, str, float, float]] | None = None
    lags: list[float] = field(default_factory=list)  # the generator's loop lag (s)
    held: list[float] = field(default_factory=list)  # RequestWork held for work (s)
    # When each generation's first lease, and the first DONE, were heard
    # (monotonic): the generations' boundaries as the fleet saw them.
    opened: dict[int, float] = field(default_factory=dict)
    first_done: float | None = None
    # When each worker heard DONE, and when the last ReportResult was sent
    # (monotonic): how long the fleet took to hear that the search ended,
    # whatever a held call's `held_s` counts.
    done_at: list[float] = field(default_factory=list)
    last_report_sent: float = 0.0
    connections: int = 0  # open to the coordinator once every channel was ready

    @property
    def errors(self) -> dict[str, int]:
        return {key: len(sent) for key, sent in self.failed_at.items()}

    async def call(self, method: str, rpc, request, timeout_s: float, key: str = ""):
        tagged = bool(key) and self.sent is not None
        metadata = ((timeline.KEY, key),) if tagged else None
        start, sent_at = time.perf_counter(), time.monotonic()
        if method == "ReportResult":
            self.last_report_sent = max(self.last_report_sent, sent_at)
        reply = None
        try:
            reply = await rpc(request, timeout=timeout_s, metadata=metadata)
            return reply
        except grpc.aio.AioRpcError as err:
            self.failed_at[f"{method}:{err.code().name}"].append(sent_at)
            return None
        finally:
            held = getattr(reply, "held_s", 0.0)
            if held:
                self.held.append(held)
            latency = time.perf_counter() - start - held
            self.latency[method].append(latency)
            self.started[method].append(sent_at)  # monotonic, like the marks
            if tagged:
                self.sent.append((key, method, sent_at, latency))  # type: ignore[union-attr]


def bench_config(
    population: int, generations: int, mode: Literal["sync", "async"] = "sync"
) -> RunConfig:
    # 1-epoch segments; the plateau rule never fires (patience > generations),
    # so the search runs exactly `generations` generations.
    return RunConfig(
        name=RUN,
        data=DataConfig(path="bench.h5"),
        training=TrainingConfig(l2_increase_epochs=0, kl_increase_epochs=0),
        pbt=PbtConfig(
            population=population,
            burn_in_epochs=1,
            generation_epochs=1,
            max_generations=generations,
            stop_patience_generations=max(generations + 1, 2),
            mode=mode,
        ),
    )


def start_coordinator(
    root: Path,
    cfg: RunConfig,
    log_path: Path,
    pythonpath: str | None = None,
    arrivals: Path | None = None,
    floor: bool = False,
    relays: int = 0,
) -> tuple[subprocess.Popen, int]:
    store = LocalStore(root / "store")
    data = root / "bench.h5"
    # A tiny real data file: staging computes the run's baseline scores from it.
    tiny = make_synthetic("lorenz", seed=0, n_conditions=4, n_trials_per_condition=5)
    write_lfads_h5(tiny, data)
    stage_run(store, cfg, data)
    port_file = root / "port"
    cmd = [
        sys.executable, "-m", "autolfads", "coordinator",
        "--storage", str(root / "store"), "--run", RUN,
        "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--lease-timeout", "600",
    ]  # fmt: skip
    if relays:
        cmd += ["--relays", str(relays)]
    if arrivals is not None:  # the same coordinator, noting when calls arrive
        script = Path(timeline.__file__).resolve()
        cmd = [sys.executable, str(script), str(root / "store"), RUN, str(port_file), str(arrivals)]
    if floor:  # not the coordinator: the least a Python gRPC server can do
        script = Path(__file__).with_name("floor_coordinator.py")
        cmd = [sys.executable, str(script), str(cfg.pbt.population), str(cfg.pbt.max_generations)]
        cmd.append(str(port_file))
    # `pythonpath`: run another version of the coordinator (e.g. an export of
    # an older commit laid out as the `autolfads` package) against this load.
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=log_path.open("w"), cwd=root, env=env
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text()[-2000:]
            raise SystemExit(f"coordinator did not start:\n{tail}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def fake_metric(member: str, generation: int, hparams: dict[str, float]) -> float:
    """Improves with generations and prefers lr_init near 1e-3 (deterministic)."""
    rng = random.Random(f"{member}/{generation}")
    return 1.0 / (1 + generation) + abs(np.log10(hparams["lr_init"] / 1e-3)) + rng.random() * 0.01


async def worker(
    worker_id: str,
    stub: pb_grpc.CoordinatorStub,
    rec: Recorder,
    args: argparse.Namespace,
    stop_at: float,
) -> None:
    while time.monotonic() < stop_at:
        request = pb.RequestWorkRequest(
            worker_id=worker_id, max_leases=1, request_id=uuid.uuid4().hex, wait_s=args.wait_s
        )
        timeout_s = args.rpc_timeout + args.wait_s
        key = "R" + request.request_id
        reply = await rec.call("RequestWork", stub.RequestWork, request, timeout_s, key)
        if reply is None:
            await asyncio.sleep(1.0)
            continue
        action = pb.RequestWorkResponse.Action.Name(reply.action)
        rec.replies[action] += 1
        if reply.action == pb.RequestWorkResponse.DONE:
            rec.first_done = rec.first_done or time.monotonic()
            rec.done_at.append(time.monotonic())
            return
        if reply.action == pb.RequestWorkResponse.WAIT:
            # Jitter, as a real fleet would have, so WAITs do not come in waves.
            await asyncio.sleep(reply.retry_after_s * random.uniform(0.5, 1.5))
            continue
        for lease in reply.leases:
            rec.opened.setdefault(lease.generation, time.monotonic())
            await train_segment(worker_id, stub, rec, args, lease)


async def train_segment(worker_id, stub, rec: Recorder, args, lease) -> None:
    for epoch in range(args.heartbeats):
        await asyncio.sleep(args.epoch_s * random.uniform(0.5, 1.5))
        beat = pb.HeartbeatRequest(
            lease_id=lease.lease_id, worker_id=worker_id, epochs_done=epoch + 1
        )
        key = f"H{lease.lease_id}/{epoch + 1}"
        reply = await rec.call("Heartbeat", stub.Heartbeat, beat, args.rpc_timeout, key)
        if reply is not None and reply.action == pb.HeartbeatResponse.STOP:
            return
    hparams = dict(lease.hparams)
    metric = fake_metric(lease.member, lease.generation, hparams)
    report = pb.ReportResultRequest(
        lease_id=lease.lease_id, worker_id=worker_id, member=lease.member,
        generation=lease.generation, outcome=pb.ReportResultRequest.SUCCEEDED,
        hparams=hparams, fitness=metric, checkpoint_key=lease.checkpoint_key,
        checkpoint_sha256=FAKE_SHA, checkpoint_size=1,
        epochs=[pb.EpochMetrics(epoch=0, values={"valid/recon_smth": metric})],
    )  # fmt: skip
    await rec.call(
        "ReportResult", stub.ReportResult, report, args.rpc_timeout, "P" + lease.lease_id
    )


async def watch_status(stub, rec: Recorder, stop_at: float) -> None:
    """Poll GetStatus once a second: what `autolfads status --watch` costs."""
    while time.monotonic() < stop_at:
        status = await rec.call("GetStatus", stub.GetStatus, pb.GetStatusRequest(), 60.0)
        if status is not None and status.state != pb.SEARCH_STATE_RUNNING:
            return
        await asyncio.sleep(1.0)


async def loop_lag(lags: list[float], done: list[asyncio.Task]) -> None:
    """How late the load generator's own loop wakes from a 10 ms sleep: if
    it lagged, latencies would include its queueing, not the server's."""
    while not all(t.done() for t in done):
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - start - 0.01)


# Channels to one address with the same options share one TCP connection
# (gRPC's process-wide subchannel pool): without this option every
# simulated worker's call went down a single connection, whatever
# `--channels` said. A fleet's trainers are processes, one connection each.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def connections_to(port: int) -> int:
    """Established TCP connections to `port` on this machine, counted from
    their client ends (Linux /proc/net/tcp and tcp6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                count += remote_port == port and fields[3] == "01"  # ESTABLISHED
    return count


def open_channels(port: int, count: int) -> list[grpc.aio.Channel]:
    """`count` channels to the coordinator, each on a connection of its own."""
    return [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) for _ in range(count)
    ]


async def drive(port: int, args: argparse.Namespace) -> tuple[Recorder, float, list]:
    rec = Recorder(sent=[] if args.timeline else None)
    channels = open_channels(port, args.channels)
    # Connected before the clock starts, as a fleet's trainers are when
    # they first ask (and so that all of them can be counted).
    await asyncio.gather(*(c.channel_ready() for c in channels))
    rec.connections = connections_to(port)
    stubs = [pb_grpc.CoordinatorStub(c) for c in channels]
    start = time.monotonic()
    stop_at = start + args.time_limit
    tasks = [
        asyncio.create_task(worker(f"w{i:05d}", stubs[i % len(stubs)], rec, args, stop_at))
        for i in range(args.workers)
    ]
    # The watcher stops with the workers: a coordinator that has told every
    # worker DONE exits, maybe before the watcher's next poll saw the end.
    watcher = asyncio.create_task(watch_status(stubs[0], rec, stop_at))
    if args.timeline:
        tasks.append(asyncio.create_task(loop_lag(rec.lags, list(tasks))))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    marks: list = [(start, "start"), *sorted((t, g) for g, t in rec.opened.items())]
    if rec.first_done is not None:
        marks.append((rec.first_done, "end"))
    for c in channels:
        await c.close()
    return rec, elapsed, marks


# Every simulated worker sends its first RequestWork at the same instant (a
# harsher start than any real fleet's); calls started in this first window
# are also left out of a second p99, which shows the steady state.
START_BURST_S = 1.0


def summarise(rec: Recorder, elapsed: float) -> dict[str, dict[str, float]]:
    t0 = min(min(v) for v in rec.started.values())
    out = {}
    for method, samples in sorted(rec.latency.items()):
        ms = np.asarray(samples) * 1e3
        later = ms[np.asarray(rec.started[method]) - t0 >= START_BURST_S]
        out[method] = {
            "calls": len(samples),
            "per_s": len(samples) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
            "p99_after_start_ms": float(np.percentile(later, 99)) if len(later) else float("nan"),
        }
    return out


def done_heard(rec: Recorder) -> dict[str, float]:
    """p50, p99 and the last of the times from the last ReportResult sent
    to each DONE heard, in ms (empty if no worker heard DONE)."""
    if not rec.done_at or not rec.last_report_sent:
        return {}
    ms = (np.asarray(rec.done_at) - rec.last_report_sent) * 1e3
    return {
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
        "last": round(float(ms.max()), 1),
    }


def filesystem_of(path: Path, mounts: str | None = None) -> str:
    """The file system holding `path` (absolute, without links) as "TYPE at
    MOUNT_POINT": the deepest mount above it in /proc/self/mounts
    (`mounts`: that file's text); "unknown" without one. The store's file
    system changes the coordinator's CPU per
    RPC (benchmarks/README.md, part 10), so every result names it."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    target = str(path)
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # Spaces and tabs in mount points are octal escapes there.
        point = fields[1].encode().decode("unicode_escape")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return f"{kind} at {best}" if best else "unknown"


def state_size(root: Path) -> int:
    """Bytes of what a reader must load to rebuild the state (the whole
    coordinator/ folder: state.json, or the snapshot and journal)."""
    folder = root / "store" / RUN / "coordinator"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def state_writes(root: Path) -> int:
    """State writes so far: the journal's newest sequence number (each
    group commit writes one entry, numbered from 1 since the run began)."""
    layout = RunLayout(RUN)
    store = LocalStore(root / "store")
    seqs = [
        layout.parse_sequence_key(prefix, info.key) or 0
        for prefix in (layout.journal_prefix(), layout.snapshot_prefix())
        for info in store.list(prefix)
    ]
    return max(seqs, default=0)


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def thread_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds so far of each live thread of a process."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


class ThreadCpuSampler:
    """`thread_cpu` of a process read every `interval_s` on a thread of its
    own, keeping each thread's first and latest reading. A single reading
    after the load can miss the event loop thread: a coordinator whose
    search has ended may already have exited (a zombie lists its main
    thread only)."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.first = thread_cpu(pid)
        self.latest = dict(self.first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread-cpu", daemon=True)
        self._interval_s = interval_s

    def start(self) -> ThreadCpuSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        """One reading; a thread no longer listed keeps its last one."""
        with contextlib.suppress(OSError):  # the process is gone
            self.latest.update(thread_cpu(self.pid))

    def stop(self) -> float:
        """Stop sampling; the busiest thread's CPU seconds (`busiest_thread_s`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
        return busiest_thread_s(self.first, self.latest)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()


def busiest_thread_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds of the thread that used the most between two `thread_cpu`
    readings (of those alive at both: the server's event loop thread)."""
    return max((after[t] - before[t] for t in before.keys() & after.keys()), default=0.0)


def tree_cpu_times(pid: int) -> dict[int, tuple[float, float]]:
    """`cpu_times` of a process and of each process it started (with
    `--relays`, the coordinator's fronts), by pid."""
    times = {pid: cpu_times(pid)}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread ended
            continue
        for child in children:
            with contextlib.suppress(OSError):  # the child ended
                times.update(tree_cpu_times(int(child)))
    return times


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far."""
    return sum(cpu_times(pid))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=1024, help="members (config max 1024)")
    p.add_argument("--workers", type=int, default=2000, help="simulated workers")
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--mode", choices=["sync", "async"], default="sync")
    p.add_argument("--heartbeats", type=int, default=2, help="heartbeats (epochs) per segment")
    p.add_argument("--epoch-s", type=float, default=0.5, help="simulated seconds per epoch")
    p.add_argument(
        "--channels",
        type=int,
        default=32,
        help="gRPC connections (one channel each) the workers share",
    )
    p.add_argument("--rpc-timeout", type=float, default=60.0)
    p.add_argument(
        "--wait-s",
        type=float,
        default=20.0,
        help="RequestWork long-poll hold (the trainer's WORK_WAIT_S); 0 polls on WAIT hints",
    )
    p.add_argument("--time-limit", type=float, default=300.0, help="stop the load after this")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--pythonpath", help="PYTHONPATH of the coordinator process (another version)")
    p.add_argument(
        "--timeline",
        type=Path,
        help="also measure each call's wait before its handler; write the details here",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="serve the load from floor_coordinator.py (in memory, no PBT, no storage) instead",
    )
    p.add_argument("--calls", type=Path, help="also write every call's start and latency (s) here")
    p.add_argument(
        "--relays",
        type=int,
        default=0,
        help="run the coordinator with --relays N (gRPC in N front processes)",
    )
    p.add_argument(
        "--store-dir",
        type=Path,
        help="make the run's temp folder (the coordinator's local store) in this folder "
        "instead of the system's temp folder, e.g. /dev/shm",
    )
    args = p.parse_args()
    if args.relays and (args.floor or args.timeline):
        p.error("--relays runs `autolfads coordinator`: drop --floor and --timeline")
    if args.floor and (args.timeline or args.pythonpath or args.mode != "sync"):
        p.error(
            "--floor serves the sync protocol from this checkout only: "
            "drop --timeline, --pythonpath and --mode async, or --floor"
        )

    cfg = bench_config(args.population, args.generations, args.mode)
    if args.store_dir is not None and not args.store_dir.is_dir():
        p.error(f"--store-dir {args.store_dir}: not an existing folder")
    with tempfile.TemporaryDirectory(prefix="bench-coordinator-", dir=args.store_dir) as tmp:
        root = Path(tmp)
        arrivals = root / "arrivals.json" if args.timeline else None
        proc, port = start_coordinator(
            root, cfg, root / "coordinator.log", args.pythonpath, arrivals, args.floor, args.relays
        )
        try:
            start_times = tree_cpu_times(proc.pid)
            threads = ThreadCpuSampler(proc.pid).start()
            rec, elapsed, marks = asyncio.run(drive(port, args))
            end_times = tree_cpu_times(proc.pid)
            busiest_s = threads.stop()
            # Each process's share (the coordinator first), while the load ran.
            by_process = [
                (end_times[pid][0] - start_times[pid][0], end_times[pid][1] - start_times[pid][1])
                for pid in end_times
                if pid in start_times
            ]
            user_s = sum(user for user, _ in by_process)
            sys_s = sum(system for _, system in by_process)
            cpu_s = user_s + sys_s
            size = None if args.floor else state_size(root)  # the floor stores nothing
            writes = None if args.floor else state_writes(root)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log_tail = (root / "coordinator.log").read_text()[-2000:]
            if arrivals is not None:
                assert rec.sent is not None
                details = timeline.join(rec.sent, json.loads(arrivals.read_text()))
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": os.getloadavg(),
        "coordinator": "floor_coordinator.py" if args.floor else args.pythonpath or "this checkout",
        "relays": args.relays,
        "population": args.population,
        "workers": args.workers,
        "generations_target": args.generations,
        "client_connections": rec.connections,
        "mode": args.mode,
        "elapsed_s": elapsed,
        "generation_marks_s": [(round(t - marks[0][0], 2), g) for t, g in marks],
        "state_bytes": size,
        # Group commit: how many writes covered the run's changes.
        "state_writes": writes,
        "store_filesystem": filesystem_of(root.resolve()),
        "server_cpu_s": round(cpu_s, 2),
        # The coordinator's own process, then each relay front's (--relays).
        "server_cpu_by_process_s": [round(user + system, 2) for user, system in by_process],
        # System time: the kernel's share (file writes and fsyncs, sockets,
        # threads waking each other).
        "server_cpu_sys_s": round(sys_s, 2),
        # Of it, the busiest thread's in the coordinator's process: the event
        # loop that runs every call (the rest: state writes, histories,
        # gRPC's own threads; with --relays, gRPC's work is in the fronts).
        "server_cpu_loop_thread_s": round(busiest_s, 2),
        # All of the server's CPU (gRPC, interceptors, logic, state writes)
        # divided by the RPCs it answered while the load ran.
        "server_cpu_ms_per_rpc": round(
            1e3 * cpu_s / max(1, sum(map(len, rec.latency.values()))), 3
        ),
        "replies": dict(rec.replies),
        # From the search's last report sent to each worker hearing DONE:
        # its answer, the write that ends the search, and every DONE.
        "done_heard_ms": done_heard(rec),
        "held_calls": len(rec.held),
        "held_s_p50": round(float(np.percentile(rec.held, 50)), 3) if rec.held else 0.0,
        "errors": dict(rec.errors),
        # When the failed calls were sent: first and last, s from the start
        "errors_sent_s": {
            key: [round(min(ts) - marks[0][0], 2), round(max(ts) - marks[0][0], 2)]
            for key, ts in rec.failed_at.items()
        },
        "rpc": summarise(rec, elapsed),
    }
    if args.timeline:
        result["gc_pauses_ms"] = details["gc_pauses_ms"]
        result["before_handler_ms"] = details["before_handler_ms"]
        result["load_generator_loop_lag_p99_ms"] = round(
            float(np.percentile(rec.lags, 99)) * 1e3, 1
        )
        args.timeline.write_text(json.dumps(details, indent=1))
    if args.calls:
        t0 = marks[0][0]
        args.calls.write_text(
            json.dumps(
                {
                    "marks_s": result["generation_marks_s"],
                    "calls": {
                        method: [
                            [round(t - t0, 4), round(x, 4)]
                            for t, x in zip(rec.started[method], latencies, strict=True)
                        ]
                        for method, latencies in rec.latency.items()
                    },
                }
            )
        )
    print(json.dumps(result, indent=1))
    if rec.errors:
        print("coordinator log tail:\n" + log_tail, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
