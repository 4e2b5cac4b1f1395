"""The trainer processes of `autolfads run` (autolfads/worker_pool.py).

Real trainer processes, forked from the template as `autolfads run` starts
them, pointed at a loopback port where nothing listens: they run the real
`autolfads trainer` command and fail the way a trainer without a coordinator
fails, which is what the pool's restart and stop rules act on.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from autolfads.worker_pool import (
    FORKSERVER,
    MAX_RESTARTS_PER_WORKER,
    ForkedTrainer,
    SearchFailed,
    SpawnedTrainer,
    WorkerPool,
    warm_template,
)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_command(port: int, store: Path, wait_s: int):
    store.mkdir(exist_ok=True)

    def command(slot: int) -> list[str]:
        return [
            "trainer",
            "--coordinator", f"127.0.0.1:{port}",
            "--storage", str(store),
            "--threads", "1",
            "--worker-id", f"pool-test-{slot}",
            # As `autolfads run` passes it: the trainer then waits for its
            # coordinator in short calls, and a SIGTERM ends the wait.
            "--run", "pool-test",
            "--unavailable-wait", str(wait_s),
        ]  # fmt: skip

    return command


def test_a_failing_trainer_is_restarted_a_bounded_number_of_times(tmp_path: Path) -> None:
    # The template gets this process's environment; only the pool's trainers
    # get INFO logging, so INFO lines prove that their own environment won.
    warm_template({k: v for k, v in os.environ.items() if k != "AUTOLFADS_LOG_LEVEL"})
    env = {**os.environ, "AUTOLFADS_LOG_LEVEL": "INFO"}
    pool = WorkerPool(trainer_command(closed_port(), tmp_path / "store", 0), 1, tmp_path, env)
    with pytest.raises(SearchFailed, match="every trainer worker failed") as failed:
        for _ in range(MAX_RESTARTS_PER_WORKER + 1):
            pool.wait(timeout_s=120)  # the trainer gives up at once: exit 2
            pool.check(search_running=True)
    # Its own one-line error, in its own log, once per start.
    assert "autolfads: error: coordinator 127.0.0.1:" in str(failed.value)
    log = pool.log_path(0).read_text()
    errors = [x for x in log.splitlines() if x.startswith("autolfads: error: coordinator")]
    assert len(errors) == MAX_RESTARTS_PER_WORKER + 1
    # The environment it was given reached it (INFO lines are logged).
    assert " INFO " in log


def test_a_finished_search_restarts_nothing(tmp_path: Path) -> None:
    pool = WorkerPool(trainer_command(closed_port(), tmp_path / "store", 0), 2, tmp_path)
    pool.wait(timeout_s=120)
    pids = pool.pids()
    pool.check(search_running=False)
    assert pool.pids() == pids


@pytest.mark.parametrize("kind", ["forked", "spawned"])
def test_a_trainer_has_its_own_session_and_stops_on_sigterm(kind: str, tmp_path: Path) -> None:
    if kind == "forked" and not FORKSERVER:
        pytest.skip("forked trainers need the forkserver and pidfds (Linux 5.3+)")
    start = ForkedTrainer if kind == "forked" else SpawnedTrainer
    # Waits up to 10 minutes for a coordinator: only SIGTERM ends it in time.
    argv = trainer_command(closed_port(), tmp_path / "store", 600)(0)
    log = tmp_path / "t.log"
    trainer = start(argv, log, {**os.environ, "AUTOLFADS_LOG_LEVEL": "INFO"})
    assert trainer.pid is not None
    try:
        # Its first log line comes after it set itself up (session, output).
        deadline = time.monotonic() + 120
        while '"event": "started"' not in (log.read_text() if log.exists() else ""):
            assert trainer.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # Ctrl-C at `autolfads run`'s terminal must not reach it (its own
        # session), nor may the template's process group be its own.
        assert os.getsid(trainer.pid) == trainer.pid
        assert os.getpgid(trainer.pid) != os.getpgid(0)
        trainer.send_signal(signal.SIGTERM)
        code = trainer.wait(timeout=120)
    finally:
        trainer.kill()
        trainer.wait(timeout=60)
    # It stopped through its own handler (an exit code), not by the signal.
    assert code is not None and code >= 0


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def environ_of(pid: int) -> list[bytes]:
    """A live process's environment. While it is in the middle of exec, the
    kernel shows an empty one for an instant: read again until it is not."""
    deadline = time.monotonic() + 60
    while not (environ := Path(f"/proc/{pid}/environ").read_bytes()):
        assert time.monotonic() < deadline and not gone(pid)
        time.sleep(0.01)
    return environ.split(b"\0")


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead, not yet reaped by its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(
    not FORKSERVER, reason="forked trainers need the forkserver and pidfds (Linux 5.3+)"
)
def test_a_dead_template_loses_no_trainer_and_starts_no_duplicate(tmp_path: Path) -> None:
    # Runs last in this file: it kills this process's template for good.
    env = {**os.environ, "AUTOLFADS_LOG_LEVEL": "INFO", "POOL_TEST_MARK": "given"}
    pool = WorkerPool(trainer_command(closed_port(), tmp_path / "store", 600), 1, tmp_path, env)
    (pid,) = pool.pids().values()
    assert pid is not None
    template = parent_of(pid)
    assert template != os.getpid()
    os.kill(template, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not gone(template):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # multiprocessing now says the trainer exited (its parent is gone), but
    # it runs on: not restarted, and still stopped by the pool.
    pool.check(search_running=True)
    assert pool.pids() == {0: pid} and not gone(pid)
    pool.stop(timeout_s=120)
    assert gone(pid)
    # Later trainers start as new interpreters, with the environment given
    # (multiprocessing would start a new template with this process's).
    later = WorkerPool(trainer_command(closed_port(), tmp_path / "store", 600), 1, tmp_path, env)
    try:
        (new_pid,) = later.pids().values()
        assert new_pid is not None and parent_of(new_pid) == os.getpid()
        assert b"POOL_TEST_MARK=given" in environ_of(new_pid)
    finally:
        later.stop(timeout_s=120)
