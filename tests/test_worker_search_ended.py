"""A trainer that cannot reach the coordinator looks at the run's stored state:
a retried pod that starts after the search ended exits 0 instead of waiting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autolfads.coordinator.search.journal import Image, JournalWriter
from autolfads.coordinator.search.state import SearchState
from autolfads.storage import LocalStore, RunLayout
from autolfads.trainer.worker import search_ended


def _dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _trainer(store_dir: Path, run: str, wait_s: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autolfads", "trainer", "--coordinator", _dead_address(),
         "--storage", str(store_dir), "--run", run, "--unavailable-wait", wait_s,
         "--cache-dir", str(store_dir / ".cache"), "--threads", "1"],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip


def store_status(store: LocalStore, run: str, status: str) -> None:
    """A coordinator state recording `status`, written as the coordinator's
    first journal entry."""
    state = SearchState(run, "sync", "d", "0" * 64, "c", status=status)  # type: ignore[arg-type]
    batch = JournalWriter(RunLayout(run), archive_lag=1).take(state, Image(), [])
    store.put_bytes(batch.entry_key, batch.entry)


@pytest.mark.parametrize(
    ("status", "ended"),
    [("finished", True), ("cancelled", True), ("failed", True), ("running", False)],
)
def test_search_ended_reads_the_stored_status(tmp_path: Path, status: str, ended: bool) -> None:
    store = LocalStore(tmp_path)
    store_status(store, "r1", status)
    assert search_ended(store, "r1") is ended
    assert search_ended(store, "other-run") is False  # nothing stored: keep waiting


def test_trainer_exits_0_when_the_stored_search_has_ended(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "runs")
    store_status(store, "done-run", "finished")
    proc = _trainer(tmp_path / "runs", "done-run", "2")
    assert proc.returncode == 0, proc.stderr


def test_trainer_still_gives_up_on_a_running_search(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "runs")
    store_status(store, "live-run", "running")
    proc = _trainer(tmp_path / "runs", "live-run", "2")
    assert proc.returncode == 3
    assert len(proc.stderr.strip().splitlines()) == 1
