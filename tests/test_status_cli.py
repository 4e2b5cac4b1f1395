"""`autolfads status`: from a live coordinator (gRPC) and from a stored run."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autolfads.cli import main
from autolfads.cli.status_cmd import is_coordinator_address, split_run_url
from autolfads.config import DataConfig, PbtConfig, RunConfig, TrainingConfig
from autolfads.coordinator.search.messages import SegmentReport
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import create_server
from autolfads.storage import LocalStore, RunLayout, open_store

RUN = "demo"
GEN0 = {"m000": 3.0, "m001": 1.0, "m002": math.nan, "m003": 2.0}


@dataclass
class Search:
    service: CoordinatorService
    client: CoordinatorClient
    address: str
    store: LocalStore
    run_dir: Path


@pytest.fixture
def search(tmp_path: Path) -> Iterator[Search]:
    cfg = RunConfig(
        name=RUN,
        data=DataConfig(path="unused.h5"),
        training=TrainingConfig(l2_increase_epochs=1, kl_increase_epochs=1),
        pbt=PbtConfig(population=4, burn_in_epochs=2, generation_epochs=1, max_generations=3),
    )
    store = LocalStore(tmp_path / "runs")
    layout = RunLayout(RUN)
    store.put_bytes(layout.config(), cfg.to_yaml().encode())
    service = CoordinatorService.open_search(cfg, store, layout.data("0" * 64), "0" * 64)
    server, port = create_server("127.0.0.1:0", service)
    address = f"127.0.0.1:{port}"
    client = CoordinatorClient(address, unavailable_wait_s=5)
    try:
        yield Search(service, client, address, store, tmp_path / "runs" / RUN)
    finally:
        client.close()
        server.stop(0)


def finish_generation(client: CoordinatorClient, metrics: dict[str, float]) -> None:
    """Act as a worker: lease every member's segment and report a metric."""
    reply = client.request_work("w1", max_leases=len(metrics))
    assert reply.action == "train" and len(reply.leases) == len(metrics)
    for g in reply.leases:
        client.report(
            SegmentReport(
                lease_id=g.lease_id,
                worker_id="w1",
                member=g.member,
                generation=g.generation,
                outcome="succeeded",
                hparams=g.hparams,
                fitness=metrics[g.member],
                checkpoint_key=g.checkpoint_key,
                checkpoint_sha256="a" * 64,
                checkpoint_size=10,
            )
        )


def status_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["status", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --------------------------------------------------------------- coordinator


def test_table_from_coordinator_shows_every_member_and_the_best(
    search: Search, capsys: pytest.CaptureFixture[str]
) -> None:
    finish_generation(search.client, GEN0)
    assert main(["status", search.address]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"run {RUN} ({search.address}): running, sync mode, generation 1/3" in lines[0]
    assert "best: m001 generation 0, smoothed valid NLL 1," in out
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "member"])
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    # Best first, the diverged member last and unranked.
    assert [r[1] for r in rows] == ["m001", "m003", "m000", "m002"]
    assert [r[0] for r in rows] == ["1", "2", "3", "-"]
    assert rows[3][4] == "diverged"
    state = search.service.snapshot()
    names = lines[header].split()[6:]
    assert "lr_init" in names and "kl_co_scale" in names
    for row in rows:
        segment = state.segments[row[1]]
        assert row[2] == "1" and row[3] == "queued"
        assert row[5] == segment.parent
        assert row[6:] == [format(segment.hparams[n], ".4g") for n in names]


def test_json_from_coordinator_matches_its_state(
    search: Search, capsys: pytest.CaptureFixture[str]
) -> None:
    finish_generation(search.client, GEN0)
    doc = status_json(capsys, search.address)
    state = search.service.snapshot()
    assert doc["best"]["member"] == "m001" and doc["best"]["metric"] == 1.0
    assert doc["best_history"] == [1.0]
    members = {m["member"]: m for m in doc["members"]}
    assert set(members) == set(GEN0)
    for name, m in members.items():
        assert m["hparams"] == state.segments[name].hparams
        assert m["parent"] == state.segments[name].parent
        assert m["metric"] == (None if math.isnan(GEN0[name]) else GEN0[name])
    # The diverged member always loses: it now starts from a finite member.
    assert members["m002"]["parent"] in {"m000", "m001", "m003"}


# ------------------------------------------------------------------- storage


def test_stored_run_reads_the_same_population_as_the_coordinator(
    search: Search, capsys: pytest.CaptureFixture[str]
) -> None:
    finish_generation(search.client, GEN0)
    live = status_json(capsys, search.address)
    stored = status_json(capsys, str(search.run_dir))
    for key in ("run", "state", "mode", "generation", "max_generations", "best", "members"):
        assert stored[key] == live[key], key
    record = json.loads((search.run_dir / "generations" / "gen-0000.json").read_text())
    [gen0] = stored["generations"]
    assert gen0["generation"] == 0 and gen0["best_member"] == "m001"
    assert gen0["copies"] == len(record["copies"]) >= 2


def test_stored_run_on_s3(search: Search, s3_store_url: str, capsys) -> None:
    finish_generation(search.client, GEN0)
    s3 = open_store(s3_store_url)
    for info in search.store.list(f"{RUN}/"):
        s3.put_bytes(info.key, search.store.get_bytes(info.key))
    base, _, query = s3_store_url.partition("?")
    doc = status_json(capsys, f"{base}/{RUN}?{query}")
    assert doc["source"].startswith("s3://") and "secret" not in json.dumps(doc)
    assert doc["best"]["member"] == "m001"
    assert len(doc["members"]) == 4


def test_top_limits_rows_and_says_how_many_are_hidden(search: Search, capsys) -> None:
    finish_generation(search.client, GEN0)
    assert main(["status", str(search.run_dir), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "m001" in out and "m003" in out
    assert "... 2 more member(s)" in out
    assert status_json(capsys, str(search.run_dir), "--top", "1")["members"][0]["member"] == "m001"


# --------------------------------------------------------------------- watch


def start_watch(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "autolfads", "status", *args, "--watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("source", ["coordinator", "storage"])
def test_watch_streams_changes_until_the_search_ends(search: Search, source: str) -> None:
    target = search.address if source == "coordinator" else str(search.run_dir)
    extra = ["--interval", "0.1"] if source == "storage" else []
    proc = start_watch(target, *extra)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        docs = [json.loads(proc.stdout.readline())]  # the watch is live now
        assert docs[0]["state"] == "running" and docs[0]["generation"] == 0
        finish_generation(search.client, GEN0)
        # Cancel only once the watch has shown generation 1 (read, not slept for).
        while docs[-1]["generation"] < 1:
            line = proc.stdout.readline()
            assert line, f"the watch ended early: {proc.stderr.read()}"
            docs.append(json.loads(line))
        search.client.cancel("enough")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    docs += [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0, err
    revisions = [d["revision"] for d in docs]
    assert revisions == sorted(set(revisions)), "each update is a new revision"
    assert any(d["generation"] == 1 and d["best"] for d in docs)
    assert docs[-1]["state"] == "cancelled" and docs[-1]["message"] == "enough"


# -------------------------------------------------------------------- errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_coordinator_is_one_line_and_quick(capsys) -> None:
    start = time.monotonic()
    code = main(["status", f"127.0.0.1:{free_port()}", "--wait", "0"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("autolfads: error: coordinator 127.0.0.1:") and err.count("\n") == 1
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_port_outside_the_range_is_one_line_not_dialled(capsys, port: str) -> None:
    # gRPC took 99999 as 34463 (modulo 65536) and reported that it was down.
    assert main(["status", f"127.0.0.1:{port}", "--wait", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"autolfads: error: 127.0.0.1:{port}: port {port} is outside 1-65535\n"


def test_missing_and_corrupt_runs_are_clear_errors(search: Search, tmp_path: Path, capsys) -> None:
    assert main(["status", str(tmp_path / "runs" / "other")]) == 2
    assert "no coordinator state at" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "missing-dir" / RUN)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing-dir").exists(), "status must not create folders"
    # An acknowledged journal entry (not the last, after the snapshot)
    # changed behind the store's back.
    finish_generation(search.client, {m: 1.0 for m in ("m000", "m001", "m002", "m003")})
    entries = sorted((search.run_dir / "coordinator" / "journal").glob("[0-9]*.json"))
    assert len(entries) >= 3
    middle = entries[1]
    middle.write_bytes(middle.read_bytes()[:-10])
    assert main(["status", str(search.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "SHA-256" in err and err.count("\n") == 1
    key = f"{RUN}/coordinator/journal/{middle.name}"
    search.store.put_bytes(key, b"{not json")  # checksum recorded, content torn
    assert main(["status", str(search.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "later entries follow it" in err and err.count("\n") == 1
    assert main(["status", "s3://bucket"]) == 2
    assert "names no run" in capsys.readouterr().err
    assert main(["status", str(search.run_dir), "--top", "-1"]) == 2


# ------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("target", "is_address"),
    [
        ("127.0.0.1:50051", True),
        ("coordinator.autolfads.svc:50051", True),
        ("[::1]:50051", True),
        ("dns:///coordinator:50051", True),
        ("./runs/demo", False),
        ("runs/demo", False),
        ("/data/runs/demo", False),
        ("s3://bucket/runs/demo", False),
        ("./host:50051", False),
    ],
)
def test_address_detection(target: str, is_address: bool) -> None:
    assert is_coordinator_address(target) is is_address


@pytest.mark.parametrize(
    ("target", "store", "run"),
    [
        ("./runs/demo", "./runs", "demo"),
        ("./runs/demo/", "./runs", "demo"),
        ("demo", ".", "demo"),
        ("/demo", "/", "demo"),
        ("file:///data/runs/demo", "file:///data/runs", "demo"),
        ("s3://bucket/demo", "s3://bucket", "demo"),
        ("s3://b/p/demo?endpoint=http://h:9000", "s3://b/p?endpoint=http://h:9000", "demo"),
    ],
)
def test_split_run_url(target: str, store: str, run: str) -> None:
    assert split_run_url(target) == (store, run)
