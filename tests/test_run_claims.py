"""One coordinator per run: the claim a coordinator holds in the store.

Two coordinators of one run write journal entries under the same sequence
numbers; `--force` on a run being served deletes its state under it. The
claim refuses the second comer, in one line, on every backend: an flock on
a local store, a renewed record on S3 (moto over HTTP here) and in memory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from run_helpers import stage_tiny_search, until

from autolfads.storage import LocalStore, RunLayout, StorageError, WrapperStore
from autolfads.storage.claims import Claimant, ClaimLost, RunClaimed, claim_run
from autolfads.storage.memory import MemoryStore

RUN = "claimed-run"


@pytest.fixture(params=["memory", "s3"])
def record_store(request):
    """A store whose claims are records (not flocks)."""
    if request.param == "memory":
        return MemoryStore()
    return request.getfixturevalue("make_s3_store")()


def on(host: str, command: str = "autolfads coordinator") -> Claimant:
    # Claimants of other hosts: their liveness shows only in their beats.
    return Claimant(command, host=host, pid=4242)


def claim(store, who: Claimant, **kw):
    kw.setdefault("renew_every_s", 0.05)
    kw.setdefault("lapse_after_s", 60.0)
    kw.setdefault("settle_s", 0.0)
    return claim_run(store, RUN, command=who.command, claimant=who, **kw)


def foreign_record(store, who: Claimant, lapse_after_s: float) -> None:
    doc = {**asdict(who), "beat": 0, "lapse_after_s": lapse_after_s}
    store.put_bytes(RunLayout(RUN).owner(), json.dumps(doc).encode())


# ------------------------------------------------------------------ records


def test_a_live_owner_refuses_a_second_comer_until_it_releases(record_store):
    first = claim(record_store, on("pod-a"))
    # The second comer sees the first's beats, so it is refused (not after
    # the whole lapse: it stops watching at the first beat).
    with pytest.raises(
        RunClaimed, match=r"served by autolfads coordinator \(host pod-a, pid 4242\)"
    ):
        claim(record_store, on("pod-b", "autolfads run"))
    assert first.held()
    first.release()
    assert not first.held()  # its fenced store writes nothing more
    assert not record_store.exists(RunLayout(RUN).owner())
    second = claim(record_store, on("pod-b", "autolfads run"))
    assert second.held()
    second.release()


def test_an_owner_that_stopped_renewing_is_taken_over_after_its_lapse(record_store, caplog):
    foreign_record(record_store, on("pod-a"), lapse_after_s=0.3)
    with caplog.at_level(logging.WARNING, logger="autolfads.storage.claims"):
        taken = claim(record_store, on("pod-b"))
    assert "has not renewed its claim for 0 s; taking the run over" in caplog.text
    assert taken.held()
    taken.release()


def test_a_claim_left_by_a_dead_process_of_this_machine_is_taken_at_once(record_store, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = Claimant.this_process("autolfads run")
    dead = replace(me, pid=gone.pid, owner="dead", started="1")  # its start time
    foreign_record(record_store, dead, 30.0)
    with caplog.at_level(logging.INFO, logger="autolfads.storage.claims"):
        taken = claim(record_store, me)
    assert "which no longer runs" in caplog.text
    taken.release()


def test_a_host_name_alone_does_not_prove_the_holder_gone(record_store, caplog):
    # Containers share host names (hostNetwork, `localhost`) but not pids:
    # a record naming this host and a free pid, without the kernel's and
    # the process's identity, is waited out like any other.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    foreign_record(record_store, Claimant("autolfads run", pid=gone.pid), 0.3)
    with caplog.at_level(logging.INFO, logger="autolfads.storage.claims"):
        taken = claim(record_store, on("pod-b"))
    assert "which no longer runs" not in caplog.text
    assert "has not renewed its claim" in caplog.text
    taken.release()


def test_a_second_claim_of_the_same_process_is_refused(record_store):
    first = claim(record_store, Claimant.this_process("autolfads coordinator"))
    with pytest.raises(RunClaimed, match=f"pid {os.getpid()}"):
        claim(record_store, Claimant.this_process("autolfads run"))
    first.release()


class GatedOwnerWrites(WrapperStore):
    """Writes of the claim record fail (`fail`) or wait for `gate`."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def _put_bytes(self, key, data, sha256, content_type, metadata):
        if key == RunLayout(RUN).owner():
            if self.fail:
                raise StorageError("owner.json: unreachable")
            if not self.gate.is_set():
                self.waiting.set()
                self.gate.wait()
        return super()._put_bytes(key, data, sha256, content_type, metadata)


def test_an_owner_that_cannot_renew_stops_writing_before_its_lapse(record_store):
    store = GatedOwnerWrites(record_store)
    owner = claim(store, on("pod-a"), lapse_after_s=0.5)
    fenced = owner.fence(store)
    fenced.put_bytes(f"{RUN}/coordinator/journal/000000000001.json", b"{}")
    store.fail = True
    until(lambda: not owner.held(), "the fence")
    assert owner.lost_reason == "not renewed for 0 s"
    with pytest.raises(StorageError, match="not written, since the claim on run"):
        fenced.put_bytes(f"{RUN}/coordinator/journal/000000000002.json", b"{}")
    with pytest.raises(StorageError, match="not written"):
        fenced.delete(f"{RUN}/coordinator/journal/000000000001.json")
    assert record_store.exists(f"{RUN}/coordinator/journal/000000000001.json")
    owner.release()


def test_a_renewal_that_lands_after_the_lapse_does_not_revive_the_claim(record_store):
    store = GatedOwnerWrites(record_store)
    owner = claim(store, on("pod-a"), lapse_after_s=0.5)
    store.gate.clear()  # the next renewal hangs
    store.waiting.wait(timeout=60)
    newcomer = claim(record_store, on("pod-b"), lapse_after_s=0.5)  # waits out the lapse
    assert not owner.held()
    store.gate.set()  # the hung renewal lands over the newcomer's record
    assert owner._thread is not None
    until(lambda: not owner._thread.is_alive(), "the old owner's renewals to stop")
    assert not owner.held()
    owner.release()
    newcomer.release()


def test_an_owner_taken_over_knows_it_and_leaves_the_new_record(record_store):
    first = claim(record_store, on("pod-a"))
    newcomer = on("pod-b")
    foreign_record(record_store, newcomer, lapse_after_s=60.0)
    until(lambda: not first.held(), "the owner to see its claim taken")
    assert "claimed by autolfads coordinator (host pod-b" in first.lost_reason
    first.release()
    left = json.loads(record_store.get_bytes(RunLayout(RUN).owner()))
    assert left["owner"] == newcomer.owner


def test_a_damaged_record_is_not_an_owner(record_store, caplog):
    record_store.put_bytes(RunLayout(RUN).owner(), b"{not json")
    with caplog.at_level(logging.WARNING, logger="autolfads.storage.claims"):
        taken = claim(record_store, on("pod-b"))
    assert "malformed claim record" in caplog.text
    taken.release()


def test_a_coordinator_whose_claim_is_lost_stops_at_once_without_writing():
    from coordinator_helpers import tiny_config

    from autolfads.coordinator.search.service import CoordinatorService
    from autolfads.coordinator.wire.server import serve

    store = MemoryStore()
    cfg = tiny_config()  # run "search"
    owner = claim_run(
        store, cfg.name, command="autolfads coordinator", claimant=on("pod-a"),
        renew_every_s=0.05, lapse_after_s=60.0, settle_s=0.0,
    )  # fmt: skip
    service = CoordinatorService.open_search(cfg, owner.fence(store), "search/data.h5", "ab" * 32)
    service.request_work("w1", 1, "r1")  # a change to write
    newcomer = Claimant("autolfads coordinator", host="pod-b")
    doc = {**asdict(newcomer), "beat": 0, "lapse_after_s": 60.0}
    store.put_bytes(RunLayout(cfg.name).owner(), json.dumps(doc).encode())
    until(lambda: not owner.held(), "the owner to see its claim taken")
    before = sorted((i.key, i.sha256) for i in store.list(f"{cfg.name}/"))
    with pytest.raises(ClaimLost, match="stopped serving, since its claim was lost"):
        serve(service, "127.0.0.1:0", claim=owner, tick_s=0.05)
    # No drain, no end-of-run write: what storage holds is the newcomer's.
    assert sorted((i.key, i.sha256) for i in store.list(f"{cfg.name}/")) == before
    owner.release()
    assert json.loads(store.get_bytes(RunLayout(cfg.name).owner()))["owner"] == newcomer.owner


# ------------------------------------------------------------------ local


def test_a_local_run_is_claimed_by_one_process_at_a_time(tmp_path):
    store = LocalStore(tmp_path / "runs")
    first = claim_run(store, RUN, command="autolfads run")
    with pytest.raises(RunClaimed, match=rf"autolfads run \(host .+, pid {os.getpid()}\)"):
        claim_run(store, RUN, command="autolfads run")
    claim_run(store, "another-run", command="autolfads run").release()  # per run
    first.release()
    assert not first.held()
    claim_run(store, RUN, command="autolfads run").release()
    # Nothing of the claim shows among the store's objects.
    assert list(store.list("")) == []


def test_a_local_claim_ends_with_its_process_even_on_kill_9(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from autolfads.storage import LocalStore\n"
         "from autolfads.storage.claims import claim_run\n"
         f"claim_run(LocalStore(sys.argv[1]), {RUN!r}, command='autolfads coordinator')\n"
         "print('held', flush=True)\n"
         "time.sleep(600)\n",
         str(tmp_path / "runs")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        store = LocalStore(tmp_path / "runs")
        with pytest.raises(RunClaimed, match=f"pid {holder.pid}"):
            claim_run(store, RUN, command="autolfads run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    claim_run(store, RUN, command="autolfads run").release()


# ------------------------------------------------------------------ commands


def start_coordinator(port_file: Path, store_url: str, run: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "autolfads", "coordinator", "--storage", store_url, "--run", run,
         "--listen", "127.0.0.1:0", "--port-file", str(port_file)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    until(lambda: port_file.exists() or proc.poll() is not None, "the coordinator")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autolfads", *args],
        cwd=cwd, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def assert_one_line_refusal(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_a_second_coordinator_and_a_force_run_are_refused_while_one_serves(tmp_path):
    run = "served"
    store = stage_tiny_search(tmp_path, run)
    config = tmp_path / "cfg.yaml"  # staged from it: same data
    first = start_coordinator(tmp_path / "port-1", store.url, run)
    try:
        before = sorted((i.key, i.sha256) for i in store.list(f"{run}/"))
        second = run_cli("coordinator", "--storage", store.url, "--run", run, cwd=tmp_path)
        assert_one_line_refusal(
            second, f"run '{run}' is being served by autolfads coordinator", f"pid {first.pid}"
        )
        forced = run_cli(
            "run", str(config), "--storage", store.url, "--force", "--threads", "1",
            "--progress", "quiet", "--no-report", cwd=tmp_path,
        )  # fmt: skip
        assert_one_line_refusal(forced, "is being served by autolfads coordinator")
        # Nothing was deleted, staged or written by the refused commands.
        assert sorted((i.key, i.sha256) for i in store.list(f"{run}/")) == before
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert first.returncode == 143
    # Once it has stopped, the run can be served again at once.
    again = start_coordinator(tmp_path / "port-2", store.url, run)
    again.send_signal(signal.SIGTERM)
    again.wait(timeout=60)
