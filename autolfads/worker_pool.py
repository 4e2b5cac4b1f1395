"""The trainer processes of `autolfads run`, forked from a warm template.

A trainer started as a new interpreter (`python -m autolfads trainer ...`)
spends about a second importing torch, and nearly as long again when it
builds its first optimizer (torch then imports its compiler stack), before
its first epoch: on the README's main job, about 1 % of all worker-seconds.
So `autolfads run` starts one template process early, which imports torch
and builds a throwaway optimizer (`autolfads.trainer.preload`) while the
coordinator opens, and forks each trainer from it (multiprocessing's
forkserver). A trainer, and a restarted one, then starts in milliseconds and
runs exactly the `autolfads trainer` command a container runs, with its own
environment, log file and session.

Where the forkserver start method does not exist (Windows), trainers start
as new interpreters, as before. As with any forkserver, the template imports
the program's main module: a script that calls `launcher.run_search` itself
needs an `if __name__ == "__main__":` guard (the `autolfads` command and
`python -m autolfads` have one).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util  # noqa: F401 (see _stop_forked_trainers)
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from autolfads.errors import AutolfadsError

log = logging.getLogger(__name__)

MAX_RESTARTS_PER_WORKER = 3
WORKER_EXIT_GRACE_S = 30.0
PRELOAD_MODULE = "autolfads.trainer.preload"
# Forked trainers need the forkserver and pidfds (Linux 5.3+).
FORKSERVER = "forkserver" in multiprocessing.get_all_start_methods() and hasattr(os, "pidfd_open")
EXIT_GRACE_S = 10.0
_template_started = False  # by warm_template, in this process
_template_lost = False  # then trainers start as new interpreters
_live: set[ForkedTrainer] = set()


class SearchFailed(AutolfadsError):
    exit_code = 1


class TrainerProcess(Protocol):
    pid: int | None

    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def wait(self, timeout: float) -> int | None: ...
    def kill(self) -> None: ...


def warm_template(env: Mapping[str, str]) -> None:
    """Start the template process now, with the trainers' environment `env`;
    it imports in the background, and the first trainer's start waits for
    it. (Once per process; a no-op without a forkserver.)

    The template gets `env`, not this process's environment: a forked
    trainer's initial environment (`/proc/PID/environ`) is the template's,
    so it must not hold what `env` leaves out, such as other roles' tokens.
    Its stdout and stderr are /dev/null (the trainers' go to their logs):
    a template left behind must not hold this process's output open.
    """
    global _template_started
    if not FORKSERVER or _template_started:
        return
    import multiprocessing.forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD_MODULE])
    # The forkserver (and multiprocessing's resource tracker) start with this
    # process's environment and output, so these stand in meanwhile. Called
    # before the coordinator's threads exist, so nothing else uses them then.
    saved_env = dict(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.environ.clear()
    os.environ.update(env)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        # Returns at once; a trainer's start waits until the template is ready.
        multiprocessing.forkserver.ensure_running()
        _template_started = True
    finally:
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in (*saved_fds, null):
            os.close(fd)
        os.environ.clear()
        os.environ.update(saved_env)


class ForkedTrainer:
    """`autolfads <argv>` in a process forked from the template.

    The template, not this process, is the trainer's parent and reports its
    exit; should the template die, multiprocessing reports every trainer as
    exited (255) while they still run. So liveness and signals go through a
    pidfd of the trainer itself, which outlives the template."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([PRELOAD_MODULE])
        self._proc = ctx.Process(target=_run_trainer, args=(list(argv), str(log_path), dict(env)))
        self._proc.start()  # EOFError/OSError: the template is gone or broken
        self.pid: int | None = self._proc.pid
        assert self.pid is not None
        self._pidfd: int | None = os.pidfd_open(self.pid)
        _live.add(self)

    def _exited(self, timeout: float = 0.0) -> bool:
        if self._pidfd is None:
            return True
        if not select.select([self._pidfd], [], [], timeout)[0]:
            return False
        os.close(self._pidfd)
        self._pidfd = None
        return True

    def poll(self) -> int | None:
        if not self._exited():
            if self._proc.exitcode is not None:
                _lost_template()  # it reported a live trainer as exited
            return None
        _live.discard(self)
        # The template reports the exit code just after reaping the trainer:
        # wait for its word (at once with EOF if the template is gone: 255).
        self._proc.join(5.0)
        return self._proc.exitcode if self._proc.exitcode is not None else 255

    def send_signal(self, sig: int) -> None:
        if not self._exited():
            assert self._pidfd is not None
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                signal.pidfd_send_signal(self._pidfd, sig)

    def wait(self, timeout: float) -> int | None:
        self._exited(timeout)
        return self.poll()

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _lost_template() -> None:
    """Start later trainers as new interpreters: multiprocessing would start
    a new template with this process's environment, not the trainers'."""
    global _template_lost
    if not _template_lost:
        log.warning("the trainers' template process is gone; new trainers start as interpreters")
    _template_lost = True


# atexit runs the last registered first: multiprocessing's own handler
# (which joins children without a bound) must be registered before this one.
@atexit.register
def _stop_forked_trainers() -> None:
    """At exit, trainers still running get SIGTERM (they hand their leases
    back), then SIGKILL after a grace period; otherwise multiprocessing's own
    exit handler would wait for them without a bound."""
    live = list(_live)
    for trainer in live:
        trainer.send_signal(signal.SIGTERM)
    end = time.monotonic() + EXIT_GRACE_S
    for trainer in live:
        if trainer.wait(max(0.0, end - time.monotonic())) is None:
            trainer.kill()
            trainer.wait(5.0)


def _run_trainer(argv: list[str], log_path: str, env: dict[str, str]) -> None:
    """In the forked child: become what `python -m autolfads <argv>` with
    output to `log_path` and environment `env` would be."""
    # A session of its own: Ctrl-C reaches only `autolfads run`, which then
    # stops the trainers with SIGTERM so they hand their leases back.
    os.setsid()
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    from autolfads.cli import main

    sys.exit(main(argv))


class SpawnedTrainer:
    """`python -m autolfads <argv>` as a new interpreter (no forkserver)."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> None:
        with log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "autolfads", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        self.pid: int | None = self._proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def send_signal(self, sig: int) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        self._proc.kill()


def start_trainer(argv: Sequence[str], log_path: Path, env: dict[str, str]) -> TrainerProcess:
    if FORKSERVER and not _template_lost:
        try:
            return ForkedTrainer(argv, log_path, env)
        except (EOFError, OSError) as err:  # e.g. the preload failed in the template
            log.warning("cannot fork a trainer from the template (%r)", err)
            _lost_template()
    return SpawnedTrainer(argv, log_path, env)


def slot_env(env: Mapping[str, str], gpus: Sequence[str], slot: int) -> dict[str, str]:
    """The environment of the trainer in `slot`: `env`, and with `gpus` one
    of them, round robin (CUDA_VISIBLE_DEVICES; its "cuda" is then that GPU)."""
    if not gpus:
        return dict(env)
    return {**env, "CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}


class WorkerPool:
    """Trainer child processes, restarted (boundedly) if one dies mid-search.

    `command(slot)` is the `autolfads` command line (without the interpreter)
    of the trainer in `slot`; `gpus` (CUDA_VISIBLE_DEVICES entries) spreads
    the trainers over those GPUs (see `slot_env`)."""

    def __init__(
        self,
        command: Callable[[int], list[str]],
        count: int,
        log_dir: Path,
        env: dict[str, str] | None = None,
        gpus: Sequence[str] = (),
    ) -> None:
        self._command = command
        self._log_dir = log_dir
        self._env = dict(os.environ) if env is None else env
        self._gpus = tuple(gpus)
        warm_template(self._env)  # if the caller has not
        self._procs: dict[int, TrainerProcess] = {}
        self._restarts = dict.fromkeys(range(count), 0)
        for slot in range(count):
            self._start(slot)

    def log_path(self, slot: int) -> Path:
        return self._log_dir / f"worker-{slot}.log"

    def pids(self) -> dict[int, int | None]:
        return {slot: proc.pid for slot, proc in self._procs.items()}

    def _start(self, slot: int) -> None:
        env = slot_env(self._env, self._gpus, slot)
        self._procs[slot] = start_trainer(self._command(slot), self.log_path(slot), env)

    def check(self, search_running: bool) -> None:
        """Restart workers that died while the search still needs them."""
        for slot, proc in list(self._procs.items()):
            code = proc.poll()
            if code is None or code == 0 or not search_running:
                continue
            if self._restarts[slot] >= MAX_RESTARTS_PER_WORKER:
                del self._procs[slot]
                log.error(
                    "worker %d failed %d times (last exit code %d); see %s",
                    slot,
                    self._restarts[slot] + 1,
                    code,
                    self.log_path(slot),
                )
                continue
            self._restarts[slot] += 1
            log.warning("worker %d exited with %d; restarting", slot, code)
            self._start(slot)
        if search_running and not self._procs:
            raise SearchFailed(f"every trainer worker failed; last log lines:\n{self.tail(0)}")

    def tail(self, slot: int, lines: int = 15) -> str:
        try:
            text = self.log_path(slot).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = WORKER_EXIT_GRACE_S) -> None:
        """SIGTERM (workers hand their leases back), then SIGKILL stragglers."""
        for proc in self._procs.values():
            proc.send_signal(signal.SIGTERM)
        self.wait(timeout_s)

    def wait(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        for proc in self._procs.values():
            if proc.wait(timeout=max(0.1, end - time.monotonic())) is None:
                proc.kill()
                proc.wait(timeout=WORKER_EXIT_GRACE_S)
