"""Whole searches with real processes: `autolfads coordinator` + `autolfads
trainer` on a tiny LFADS model (CPU, one thread each).

One undisturbed search with 2 trainers (on the S3 test server) is the
reference; the same seed with 1 trainer, with a trainer killed -9 mid-lease
and with the coordinator killed -9 and restarted must all end with the same
best member, metric and generation logs.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from coordinator_helpers import saved_state
from run_helpers import write_tiny_config
from s3_proxy import Hold, ScriptedS3Proxy

from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.storage import RunLayout, open_store

pytestmark = pytest.mark.slow
RUN = "tiny"
LAYOUT = RunLayout(RUN)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("e2e"), RUN)


def cli(*args: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "autolfads", "--log-level", "INFO", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


class Search:
    """A staged run plus helpers to start its processes."""

    def __init__(self, tmp: Path, config: Path, storage: str, env: dict | None = None) -> None:
        self.tmp, self.storage, self.env = tmp, storage, env or {}
        assert cli("stage", str(config), "--storage", storage, env=self.env).wait(60) == 0
        self.port_file = tmp / "port"
        self.port = 0

    def coordinator(self, port: int = 0, lease_timeout: float = 30) -> subprocess.Popen:
        self.port_file.unlink(missing_ok=True)
        proc = cli(
            "coordinator",
            "--storage",
            self.storage,
            "--run",
            RUN,
            "--listen",
            f"127.0.0.1:{port}",
            "--port-file",
            str(self.port_file),
            "--lease-timeout",
            str(lease_timeout),
            env=self.env,
            log=self.tmp / "coordinator.log",
        )
        deadline = time.monotonic() + 30
        while not self.port_file.exists():
            assert proc.poll() is None, (self.tmp / "coordinator.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        return proc

    def trainer(self, name: str, *extra: str) -> subprocess.Popen:
        return cli(
            "trainer",
            "--coordinator",
            f"127.0.0.1:{self.port}",
            "--storage",
            self.storage,
            "--threads",
            "1",
            "--device",
            "cpu",
            "--cache-dir",
            str(self.tmp / "cache"),
            "--worker-id",
            name,
            "--unavailable-wait",
            "60",
            *extra,
            env=self.env,
            log=self.tmp / f"{name}.log",
        )

    def client(self) -> CoordinatorClient:
        return CoordinatorClient(f"127.0.0.1:{self.port}", timeout_s=5, unavailable_wait_s=5)

    def wait_for(self, predicate, timeout: float = 60):
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                status = client.status()
                if predicate(status):
                    return status
                time.sleep(0.02)
        raise AssertionError("condition not reached in time")

    def result(self) -> tuple:
        store = open_store(self.storage, create_bucket=False, env={**os.environ, **self.env})
        logs = [store.get_json(LAYOUT.generation(g)) for g in range(3)]
        state = saved_state(store, RUN)
        assert state.status == "finished"
        assert sorted(state.history) == ["m000", "m001", "m002", "m003"]
        assert all([h.generation for h in hs] == [0, 1, 2] for hs in state.history.values())
        decisions = [(d["ranking"], d["copies"], d["best_metric"]) for d in logs]
        assert state.best is not None
        return (state.best.member, state.best.metric, decisions), state


def finish(*procs: subprocess.Popen, timeout: float = 120) -> list[int]:
    return [p.wait(timeout) for p in procs]


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory, s3_server):
    """2 trainers (one holding 2 leases at once) on the S3 test server."""
    tmp = tmp_path_factory.mktemp("reference")
    bucket = "autolfads-e2e-reference"
    url = f"s3://{bucket}/runs?endpoint={s3_server.endpoint_url}"
    search = Search(tmp, config_path, url, env=s3_server.env)
    coordinator = search.coordinator()
    a, b = search.trainer("w1"), search.trainer("w2", "--max-leases", "2")
    assert finish(a, b, coordinator) == [0, 0, 0]
    return search.result()


def test_search_with_two_trainers_has_consistent_lineage(reference):
    (best_member, best_metric, decisions), state = reference
    assert math.isfinite(best_metric) and best_metric == min(state.best_history)
    chain = state.lineage(best_member, state.best.generation)
    assert [e.generation for e in chain] == list(range(state.best.generation, -1, -1))
    for newer, older in zip(chain, chain[1:], strict=False):
        copies = decisions[older.generation][1]
        assert copies.get(newer.member, newer.member) == older.member
    assert state.best.checkpoint == chain[0].checkpoint


def test_one_trainer_gives_the_same_result(reference, config_path, tmp_path):
    search = Search(tmp_path, config_path, f"file://{tmp_path / 'store'}")
    coordinator = search.coordinator()
    assert finish(search.trainer("solo"), coordinator) == [0, 0]
    assert search.result()[0] == reference[0]
    # Development on loopback without tokens: said once, not per check.
    log = (tmp_path / "coordinator.log").read_text()
    assert log.count("no tokens configured") == 1, log


@pytest.fixture
def proxy(s3_server):
    """A loopback proxy in front of the S3 test server; tests set its rule to
    a `Hold` to stop a search at a known point instead of racing it."""
    p = ScriptedS3Proxy(s3_server.endpoint_url).start()
    yield p
    if isinstance(p.rule, Hold):
        p.rule.release()
    p.stop()


def proxied_search(tmp: Path, config: Path, proxy, s3_server, bucket: str) -> Search:
    url = f"s3://{bucket}/runs?endpoint={proxy.endpoint_url}"
    return Search(tmp, config, url, env=s3_server.env)


# The data file of the run, which a trainer downloads before its first epoch.
DATA_GET = r"/runs/tiny/data/[0-9a-f]{64}\.h5$"


def test_trainer_killed_mid_lease(reference, config_path, tmp_path, proxy, s3_server, s3_bucket):
    search = proxied_search(tmp_path, config_path, proxy, s3_server, s3_bucket)
    coordinator = search.coordinator(lease_timeout=3)
    # The victim leases all 4 members of generation 0 in one request, then
    # blocks on its data download: it dies holding them, certainly unreported.
    proxy.rule = hold = Hold("GET", DATA_GET)
    victim = search.trainer("victim", "--max-leases", "4")
    hold.wait_held()
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    hold.release()
    survivors = [search.trainer("w1"), search.trainer("w2")]
    assert finish(*survivors, coordinator) == [0, 0, 0]
    result, state = search.result()
    assert result == reference[0]
    expired = [e for e in state.events if e["kind"] == "lease_expired"]
    # Every lease of the killed worker expired (a survivor's may too, on a
    # loaded machine: the search is still the same).
    assert len([e for e in expired if e["worker_id"] == "victim"]) == 4


def test_coordinator_killed_and_restarted(
    reference, config_path, tmp_path, proxy, s3_server, s3_bucket
):
    search = proxied_search(tmp_path, config_path, proxy, s3_server, s3_bucket)
    # Generation 1 cannot close while its checkpoint uploads are held, so the
    # coordinator certainly dies mid-search, with history behind it.
    proxy.rule = hold = Hold("PUT", r"/members/m\d+/gen-0001/")
    coordinator = search.coordinator(lease_timeout=10)
    trainers = [search.trainer("w1"), search.trainer("w2")]
    hold.wait_held()
    coordinator.send_signal(signal.SIGKILL)
    assert coordinator.wait(10) == -signal.SIGKILL
    hold.release()  # trainers publish, then retry their reports against a dead address
    restarted = search.coordinator(port=search.port, lease_timeout=10)
    assert finish(*trainers, restarted) == [0, 0, 0]
    result, state = search.result()
    assert result == reference[0]
    resumed = [e for e in state.events if e["kind"] == "coordinator_resumed"]
    assert [e["generation"] for e in resumed] == [1]


@pytest.mark.parametrize(
    "held",
    [("GET", DATA_GET), ("PUT", r"/members/m\d+/gen-0001/")],
    ids=["data download", "checkpoint upload"],
)
def test_storage_held_past_three_lease_timeouts_expires_no_lease(
    held, reference, config_path, tmp_path, proxy, s3_server, s3_bucket
):
    search = proxied_search(tmp_path, config_path, proxy, s3_server, s3_bucket)
    # One trainer holds all 4 members' leases while storage holds it up: the
    # data download before generation 0, or generation 1's uploads (the
    # first held, the other three waiting to be published behind it). A lease
    # not heartbeated meanwhile would expire; three expiries fail a member.
    proxy.rule = hold = Hold(*held)
    lease_timeout = 3.0
    coordinator = search.coordinator(lease_timeout=lease_timeout)
    trainer = search.trainer("w1", "--max-leases", "4")
    hold.wait_held()
    end = time.monotonic() + 4 * lease_timeout
    with search.client() as client:
        while time.monotonic() < end:  # the hold outlasts four lease timeouts
            status = client.status()
            assert status.state == "running"
            assert all(m.phase == "training" for m in status.members), status.members
            time.sleep(0.1)
    hold.release()
    assert finish(trainer, coordinator) == [0, 0]
    result, state = search.result()
    assert result == reference[0]
    assert [e for e in state.events if e["kind"] == "lease_expired"] == []


def test_sigterm_hands_leases_back_and_exit_codes(
    config_path, tmp_path, proxy, s3_server, s3_bucket
):
    search = proxied_search(tmp_path, config_path, proxy, s3_server, s3_bucket)
    coordinator = search.coordinator()
    coordinator.send_signal(signal.SIGTERM)  # search not finished: resumable exit
    assert coordinator.wait(30) == 143
    coordinator = search.coordinator(port=search.port)
    # SIGTERM reaches the trainer while it holds 4 leases and waits for its
    # data, before any epoch: it must hand all 4 back, never finish one.
    proxy.rule = hold = Hold("GET", DATA_GET)
    trainer = search.trainer("evicted", "--max-leases", "4")
    hold.wait_held()
    trainer.send_signal(signal.SIGTERM)
    hold.release()
    assert trainer.wait(30) == 143
    status = search.wait_for(lambda s: all(m.phase == "queued" for m in s.members), timeout=5)
    assert status.state == "running"
    with search.client() as client:
        assert client.cancel("test over") == "cancelled"
    assert coordinator.wait(30) == 0
    store = open_store(search.storage, create_bucket=False, env={**os.environ, **search.env})
    state = saved_state(store, RUN)
    abandoned = [e for e in state.events if e["kind"] == "lease_abandoned"]
    assert len(abandoned) == 4 and state.status == "cancelled"
    assert {e["worker_id"] for e in abandoned} == {"evicted"}
