"""`autolfads run --ray` end to end on a real local Ray cluster.

One cluster (head on 127.0.0.1, 2 CPUs) is started for the module; tests
that need a second node add one at 127.0.0.2 (another machine as Ray sees
it) and remove it. The searches must reach exactly the best member and
metrics of `autolfads run` (the session's `local_run`), also when a trainer
actor is killed with SIGKILL, another's node is removed and the driver is
killed mid-segment (`--resume` then watches the detached search to its end),
and after Ctrl-C plus `--resume`. Those
faults land at a known point: the trainers' generation-1 checkpoint uploads
are held in an S3 proxy until the fault is in place (nothing races).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from coordinator_helpers import saved_state
from run_helpers import (
    RUN,
    Workspace,
    autolfads,
    make_workspace,
    one_line_error,
    run_args,
    until,
)
from s3_proxy import Hold, ScriptedS3Proxy

# Keep Ray on loopback and offline: no usage reports, and 127.0.0.1 is not
# rewritten to the machine's outside address. Ray reads these when imported.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
os.environ.update(RAY_ENV)
ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow
LEASE_TIMEOUT = "8"


# Ray's own start-up failures seen here: its GCS server never writes its
# port (no log line at all), or its raylet never registers (no raylet log at
# all). Neither is ours, and a fresh head has come up every time.
RAY_START_FAILURES = ("gcs_server_port", "timed out during startup")


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 2, "include_dashboard": False, "node_ip_address": "127.0.0.1"}
    try:
        c = Cluster(initialize_head=True, connect=True, head_node_args=head)
    except Exception as err:  # Ray raises a bare Exception for the raylet's
        if not any(failure in str(err) for failure in RAY_START_FAILURES):
            raise
        # One fresh head is tried; a second failure fails the tests. The
        # failed head's processes go first (they would poll for ever).
        session = Path("/tmp/ray/session_latest").resolve().name
        warnings.warn(
            f"Ray's head did not come up ({ray_processes()}); trying a fresh head",
            stacklevel=1,
        )
        ray.shutdown()
        for pid in children_of_session(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        c = Cluster(initialize_head=True, connect=True, head_node_args=head)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _children() -> Iterator[tuple[Path, list[str]]]:
    """(/proc/PID, stat fields after the command) of this process's children."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid():
                yield stat.parent, fields
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile


def ray_processes() -> str:
    """What became of this process's GCS server and raylet children: state
    and wait channel if alive, exit status if a zombie (for the warning)."""
    found = []
    for proc, fields in _children():
        try:
            name = (proc / "comm").read_text().strip()
            if name not in ("gcs_server", "raylet"):
                continue
            if fields[0] == "Z":
                found.append(f"{name} pid {proc.name} exited, status {int(fields[-1]):#x}")
            else:
                wchan = (proc / "wchan").read_text()
                found.append(f"{name} pid {proc.name} state {fields[0]}, in {wchan or '-'}")
        except (OSError, ValueError, IndexError):
            continue
    return "; ".join(found) or "no gcs_server or raylet child"


def children_of_session(session: str) -> list[int]:
    """This process's children started for Ray session `session`."""
    pids = []
    for proc, _ in _children():
        try:
            if session.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def second_node(cluster) -> Iterator[object]:
    """A node of 1 CPU at 127.0.0.2: another machine, to Ray."""
    node = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2")
    cluster.wait_for_nodes()
    yield node
    if node in cluster.worker_nodes:
        cluster.remove_node(node)


def same_best(metrics: dict, local_run: tuple[Workspace, dict]) -> None:
    expected = local_run[1]["metrics"]
    assert metrics["member"] == expected["member"]
    assert metrics["valid_heldout_recon_smth"] == expected["valid_heldout_recon_smth"]
    assert metrics["co_bps"] == expected["co_bps"]


def ray_args(ws: Workspace, cluster, *extra: str) -> list[str]:
    return run_args(ws, "--ray", cluster.address, "--lease-timeout", LEASE_TIMEOUT, *extra)


def coordinator():
    return ray.get_actor(f"coordinator-{RUN}", namespace="autolfads")


def start_driver(ws: Workspace, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`autolfads <args>` in `ws`, running while the test goes on."""
    return subprocess.Popen(
        [sys.executable, "-m", "autolfads", *args],
        cwd=ws.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def listing(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def test_ray_search_reaches_the_best_of_autolfads_run(
    cluster, local_run: tuple[Workspace, dict], tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path)
    proc = autolfads(ws, *ray_args(ws, cluster, "--workers", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((ws.runs / RUN / "best" / "metrics.json").read_text())
    same_best(metrics, local_run)
    assert str(ws.runs / RUN / "best" / "report" / "index.html") in proc.stdout
    assert "generation 3/3" in proc.stderr
    # The actors are gone: the next run of that name could start at once.
    with pytest.raises(ValueError):
        coordinator()


class HeldSearch:
    """`autolfads run --ray` on S3 behind a proxy that holds the trainers'
    generation-1 checkpoint uploads until `release()`."""

    def __init__(
        self,
        ws: Workspace,
        cluster,
        s3_server,
        bucket: str,
        *extra: str,
        generation: int = 1,
        hold: type[Hold] = Hold,
    ) -> None:
        self.hold = hold("PUT", rf"/members/m\d+/gen-{generation:04d}/")
        self.proxy = ScriptedS3Proxy(s3_server.endpoint_url, self.hold).start()
        self.url = f"s3://{bucket}/test?endpoint={self.proxy.endpoint_url}"
        # Read back past the proxy, which is gone by then.
        self.direct_url = f"s3://{bucket}/test?endpoint={s3_server.endpoint_url}"
        self.s3_server = s3_server
        self.cluster = cluster
        args = ray_args(ws, cluster, "--storage", self.url, "--no-report", *extra)
        # As from a terminal: Ctrl-C reaches the run even when these tests were
        # started where SIGINT is ignored (a background job of a script).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.proc = start_driver(ws, args, s3_server.env)
        finally:
            signal.signal(signal.SIGINT, previous)

    def trainers(self) -> dict[int, tuple[int, str]]:
        """slot -> (pid, node IP) of each trainer actor, once the search is held."""
        self.hold.wait_held()
        assert self.proc.poll() is None
        found = ray.get(coordinator().trainers.remote())
        return {slot: (pid, ip) for slot, pid, ip in found}

    def finish(self, resume: Workspace | None = None) -> dict:
        """Release the hold; the search's best, as the driver (or, after the
        driver was lost, `--resume` in `resume`) finalized it."""
        self.hold.release()
        try:
            if resume is None:
                _, err = self.proc.communicate(timeout=240)
                code = self.proc.returncode
            else:
                args = ray_args(resume, self.cluster, "--storage", self.url, "--resume")
                done = autolfads(resume, *args, "--no-report", env=self.s3_server.env)
                code, err = done.returncode, done.stderr
        finally:
            self.proxy.stop()
        assert code == 0, err[-3000:]
        from autolfads.storage import open_store

        store = open_store(self.direct_url, env=self.s3_server.env)
        # The driver ended the coordinator actor only once its shutdown was
        # over: the run's claim was released (no record to wait out).
        assert not store.exists(f"{RUN}/coordinator/owner.json")
        return json.loads(store.get_bytes(f"{RUN}/best/metrics.json"))

    def interrupt(self) -> str:
        """Ctrl-C while held; the held uploads then fail. The driver's stderr."""
        self.hold.wait_held()
        self.proc.send_signal(signal.SIGINT)
        self.hold.release("503:SlowDown")
        try:
            _, err = self.proc.communicate(timeout=240)
        finally:
            self.proxy.stop()
        assert self.proc.returncode == 130, err[-3000:]
        return err


def test_trainer_killed_node_lost_and_driver_lost_mid_segment_same_best(
    cluster, second_node, local_run: tuple[Workspace, dict], tmp_path: Path, s3_server, s3_bucket
) -> None:
    # One search, all three faults (a lease timeout is paid once for all):
    # 3 trainers of 1 CPU on 2 + 1 CPUs, so one of them is on the second node.
    ws = make_workspace(tmp_path)
    search = HeldSearch(ws, cluster, s3_server, s3_bucket, "--workers", "3")
    trainers = search.trainers()
    assert sorted(ip for _, ip in trainers.values()) == ["127.0.0.1", "127.0.0.1", "127.0.0.2"]
    (lost,) = [slot for slot, (_, ip) in trainers.items() if ip == "127.0.0.2"]
    killed = min(slot for slot, (_, ip) in trainers.items() if ip == "127.0.0.1")
    os.kill(trainers[killed][0], signal.SIGKILL)
    cluster.remove_node(second_node)
    # Room for Ray to restart the lost trainer elsewhere.
    third = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.3")
    try:
        # Ray has restarted both (new processes) while the search is held.
        after = search.trainers()
        assert after[killed][0] != trainers[killed][0]
        assert after[lost][0] != trainers[lost][0]
        assert sorted(ip for _, ip in after.values()) == ["127.0.0.1", "127.0.0.1", "127.0.0.3"]
        # The driver is lost too (a laptop asleep): the detached search goes on,
        # and `--resume` watches it again to its end.
        search.proc.kill()
        search.proc.communicate()
        assert ray.get(coordinator().view.remote()).status == "running"
        metrics = search.finish(resume=ws)
    finally:
        cluster.remove_node(third)
    same_best(metrics, local_run)


def test_ctrl_c_stops_the_actors_and_resume_reaches_the_same_best(
    cluster, local_run: tuple[Workspace, dict], tmp_path: Path, s3_server, s3_bucket, monkeypatch
) -> None:
    from autolfads.storage import open_store

    ws = make_workspace(tmp_path)
    logs = tmp_path / "logs"
    search = HeldSearch(
        ws, cluster, s3_server, s3_bucket, "--workers", "2", "--log-dir", str(logs), generation=0
    )
    search.hold.wait_held()
    # `autolfads status` reaches the coordinator actor with the observer token.
    address = ray.get(coordinator().address_of.remote())
    status = autolfads(ws, "status", address, "--token-file", str(logs / "observer.token"))
    assert status.returncode == 0, status.stderr
    assert RUN in status.stdout and "m003" in status.stdout
    err = search.interrupt()
    assert "--resume" in err and "--ray" in err
    store = open_store(search.direct_url, env=s3_server.env)
    saved = saved_state(store, RUN)
    assert saved.status == "running" and saved.generation == 0
    # The trainers were ended and their leases handed back; the actors are gone.
    assert not [x for x in saved.leases.values() if x.status == "active"]
    with pytest.raises(ValueError):
        coordinator()
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    args = ray_args(ws, cluster, "--workers", "2", "--resume", "--no-report")
    resumed = autolfads(ws, *args, "--storage", search.direct_url)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_best(json.loads(store.get_bytes(f"{RUN}/best/metrics.json")), local_run)
    # The storage secret reached the actors, but none of Ray's logs.
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
    assert (logs / "raylet.out").is_file()
    secret = s3_server.secret_key.encode()
    leaked = [f.name for f in logs.rglob("*") if f.is_file() and secret in f.read_bytes()]
    assert not leaked


def test_resume_ends_an_actor_stopped_by_a_driver_killed_meanwhile_and_reaches_the_same_best(
    cluster, local_run: tuple[Workspace, dict], tmp_path: Path, s3_server, s3_bucket, monkeypatch
) -> None:
    from autolfads.storage import open_store

    ws = make_workspace(tmp_path)
    search = HeldSearch(ws, cluster, s3_server, s3_bucket, "--workers", "2", generation=0)
    search.hold.wait_held()
    # The driver asks the actor to stop (Ctrl-C) and is killed before it can
    # end it: the actor stops the search and stays, never ended.
    search.proc.kill()
    search.proc.communicate()
    stopping = coordinator().stop.remote()
    search.hold.release("503:SlowDown")  # the held uploads fail, as after Ctrl-C
    try:
        assert ray.get(stopping, timeout=240) == "running"
    finally:
        search.proxy.stop()
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    args = ray_args(ws, cluster, "--workers", "2", "--resume", "--no-report")
    resumed = autolfads(ws, *args, "--storage", search.direct_url)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    store = open_store(search.direct_url, env=s3_server.env)
    same_best(json.loads(store.get_bytes(f"{RUN}/best/metrics.json")), local_run)


class CountedHold(Hold):
    """A Hold that counts the requests it has held."""

    def __init__(self, method: str, pattern: str) -> None:
        super().__init__(method, pattern)
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, n: int, method: str, path: str) -> str | None:
        if method == self.method and self.pattern.search(path):
            with self._lock:
                self.count += 1
        return super().__call__(n, method, path)


def trainer_pid(seen: set[int]) -> int:
    """The pid of trainer 0's incarnation now, one not in `seen`."""
    found: list[int] = []

    def new_pid() -> bool:
        found[:] = [pid for slot, pid, _ in ray.get(coordinator().trainers.remote()) if slot == 0]
        return bool(found) and found[0] not in seen

    until(new_pid, "trainer 0's next incarnation", timeout_s=240)
    return found[0]


def test_a_trainer_that_keeps_dying_ends_the_search_in_one_line(
    cluster, tmp_path: Path, s3_server, s3_bucket
) -> None:
    from autolfads.worker_pool import MAX_RESTARTS_PER_WORKER

    # Every incarnation of the only trainer is killed while its run() is at
    # its first checkpoint upload, held: none finishes a segment. A crash
    # loop, which Ray alone would restart for ever.
    ws = make_workspace(tmp_path)
    args = ("--workers", "1", "--progress", "quiet")
    search = HeldSearch(ws, cluster, s3_server, s3_bucket, *args, generation=0, hold=CountedHold)
    hold = search.hold
    assert isinstance(hold, CountedHold)
    try:
        seen: set[int] = set()
        for _ in range(1 + MAX_RESTARTS_PER_WORKER):
            held = hold.count
            until(lambda held=held: hold.count > held, "an upload of the next incarnation", 240)
            pid = trainer_pid(seen)
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)
        out, err = search.proc.communicate(timeout=120)
    finally:
        search.hold.release()
        search.proxy.stop()
        if search.proc.poll() is None:  # the old code's endless restarts
            search.proc.kill()
            search.proc.communicate()
        with contextlib.suppress(ValueError):
            ray.kill(coordinator(), no_restart=True)
    done = subprocess.CompletedProcess(search.proc.args, search.proc.returncode, out, err)
    one_line_error(done, "every trainer actor failed", "trainer 0", "died")
    assert done.returncode == 1


@pytest.fixture
def gpu_node(cluster) -> Iterator[object]:
    """A node of 1 CPU and 1 GPU that is not there: Ray takes its word for it."""
    node = cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield node
    cluster.remove_node(node)


def test_a_trainer_that_fails_at_each_start_ends_the_search_in_one_line(
    cluster, gpu_node, tmp_path: Path
) -> None:
    # Its node's GPU is not there: each run() raises at the start, and the
    # line says so (not a cut Ray traceback).
    ws = make_workspace(tmp_path)
    args = ("--workers", "1", "--device", "cuda", "--trainer-gpus", "1", "--progress", "quiet")
    proc = autolfads(ws, *ray_args(ws, cluster, *args))
    one_line_error(
        proc,
        "every trainer actor failed; last: trainer 0 ended: ConfigError: device 'cuda' requested",
    )
    assert proc.returncode == 1


def test_a_coordinator_actor_unavailable_for_a_moment_is_asked_again(
    cluster, tmp_path: Path
) -> None:
    # Ray's own fault injection, in the driver alone: the replies of its
    # first calls to the coordinator actor are lost on the way, which Ray
    # reports as ActorUnavailableError (the actor lives on).
    lost = {"num_failures": 4, "req_failure_prob": 0, "resp_failure_prob": 100}
    chaos = {"CoreWorkerService.grpc_client.PushTask": {**lost, "in_flight_failure_prob": 0}}
    ws = make_workspace(tmp_path)
    args = ray_args(ws, cluster, "--workers", "2", "--no-report")
    try:
        proc = autolfads(ws, *args, env={"RAY_testing_rpc_failure": json.dumps(chaos)})
    finally:  # the old code left the search running, detached
        with contextlib.suppress(ValueError):
            ray.kill(coordinator(), no_restart=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generation 3/3" in proc.stderr
    assert (ws.runs / RUN / "best" / "metrics.json").is_file()


def test_default_workers_count_the_trainers_each_node_holds(cluster, second_node) -> None:
    from autolfads.ray_cluster import TrainerResources
    from autolfads.ray_launch import default_workers

    # 2 + 1 CPUs: one trainer of 1.5 CPUs fits on the head and none on the
    # other node (a second, counted from the 3 CPUs together, never starts).
    assert default_workers(TrainerResources(cpus=1.5)) == 1
    assert default_workers(TrainerResources(cpus=1.0)) == 3
    assert default_workers(TrainerResources(cpus=0.2)) == 15


def test_resume_with_another_storage_than_the_running_search_is_one_line(
    cluster, tmp_path: Path, s3_server, s3_bucket
) -> None:
    # A search of that run name runs on the cluster, from another storage:
    # watching it would finalize this storage's run (maybe an old one).
    ws = make_workspace(tmp_path)
    search = HeldSearch(ws, cluster, s3_server, s3_bucket, "--workers", "1", generation=0)
    search.hold.wait_held()
    try:
        other = f"s3://{s3_bucket}/other?endpoint={s3_server.endpoint_url}"
        args = ray_args(ws, cluster, "--storage", other, "--resume", "--progress", "quiet")
        proc = autolfads(ws, *args, env=s3_server.env, timeout=120)
    finally:
        search.hold.release("503:SlowDown")
        with contextlib.suppress(ValueError):
            ray.get(coordinator().stop.remote(), timeout=240)
            ray.kill(coordinator(), no_restart=True)
        search.proc.kill()
        search.proc.communicate()
        search.proxy.stop()
    one_line_error(
        proc, f"is the search in s3://{s3_bucket}/test, not in --storage s3://{s3_bucket}/other"
    )
    assert proc.returncode == 2


# ---- bad input: one line, non-zero exit, nothing created ------------------------


class ClaimedBetween:
    """A proxy rule: once the driver has released its staging claim (the
    DELETE of the run's owner record), the owner-record requests that follow
    (the coordinator actor's claim) wait until `claimed` is set, so another
    coordinator claims the run in between."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.claimed = threading.Event()

    def __call__(self, n: int, method: str, path: str) -> str | None:
        if path.endswith("/coordinator/owner.json"):
            if method == "DELETE":
                self.released.set()
            elif self.released.is_set():
                self.claimed.wait(240)
        return None


def test_a_run_claimed_between_staging_and_the_actor_start_is_one_line(
    cluster, tmp_path: Path, s3_server, s3_bucket
) -> None:
    from autolfads.storage import open_store
    from autolfads.storage.claims import claim_run

    ws = make_workspace(tmp_path)
    rule = ClaimedBetween()
    proxy = ScriptedS3Proxy(s3_server.endpoint_url, rule).start()
    try:
        url = f"s3://{s3_bucket}/between?endpoint={proxy.endpoint_url}"
        args = ray_args(ws, cluster, "--storage", url, "--no-report")
        proc = start_driver(ws, args, s3_server.env)
        assert rule.released.wait(240), "the driver never released its staging claim"
        direct = f"s3://{s3_bucket}/between?endpoint={s3_server.endpoint_url}"
        store = open_store(direct, env=s3_server.env)
        until(lambda: not store.exists(f"{RUN}/coordinator/owner.json"), "the release")
        with claim_run(store, RUN, command="another coordinator", renew_every_s=0.5):
            rule.claimed.set()
            out, err = proc.communicate(timeout=240)
    finally:
        rule.claimed.set()
        proxy.stop()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    one_line_error(done, f"run {RUN!r} is being served by another coordinator")
    assert proc.returncode == 2


def test_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    before = listing(ws.root)
    proc = autolfads(ws, *run_args(ws, "--ray", f"127.0.0.1:{port}"), env=RAY_ENV)
    one_line_error(proc, f"127.0.0.1:{port}", "ray start --head")
    assert listing(ws.root) == before


def test_local_storage_on_a_cluster_of_several_machines_is_one_line(
    cluster, second_node, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path)
    before = listing(ws.root)
    proc = autolfads(ws, *ray_args(ws, cluster))
    one_line_error(proc, "127.0.0.2", "s3://")
    assert listing(ws.root) == before


def test_gpus_on_a_cluster_without_gpus_is_one_line(cluster, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    before = listing(ws.root)
    proc = autolfads(ws, *ray_args(ws, cluster, "--trainer-gpus", "0.5"))
    one_line_error(proc, "--trainer-gpus", "no GPUs")
    assert listing(ws.root) == before


def test_device_cuda_without_trainer_gpus_is_one_line(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    before = listing(ws.root)
    proc = autolfads(ws, *run_args(ws, "--ray", "auto", "--device", "cuda"))
    one_line_error(proc, "--device cuda", "--trainer-gpus")
    assert listing(ws.root) == before


def test_trainers_without_a_reserved_gpu_train_on_the_cpu() -> None:
    # Ray leaves an actor that reserved no GPU every GPU of its node visible:
    # `--device auto` (the default) would train there on GPUs Ray never gave it.
    from autolfads.launcher import LaunchOptions
    from autolfads.ray_cluster import TrainerResources
    from autolfads.ray_launch import RayOptions, trainer_spec

    opts = LaunchOptions(storage_url="s3://bucket/runs", workers=2, threads_per_worker=1)
    assert opts.device == "auto"
    cpu_only = RayOptions("auto", TrainerResources(cpus=1.0))
    assert trainer_spec(opts, cpu_only).device == "cpu"
    shared_gpu = RayOptions("auto", TrainerResources(cpus=1.0, gpus=0.5))
    assert trainer_spec(opts, shared_gpu).device == "auto"


def test_listen_with_ray_is_one_line(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    before = listing(ws.root)
    proc = autolfads(ws, *run_args(ws, "--ray", "auto", "--listen", "0.0.0.0:50051"))
    one_line_error(proc, "--listen", "--ray")
    assert listing(ws.root) == before
