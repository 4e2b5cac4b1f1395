"""`autolfads run`: the whole search on one machine.

The coordinator runs in this process (gRPC on a loopback port); N trainer
workers run as child processes with exactly the command a container runs
(`autolfads trainer --coordinator ... --storage ...`), forked from a
template that has already imported torch (`worker_pool.py`). When the search ends,
the best member is posterior-sampled and evaluated (`best/`) and the report
is built. Ctrl-C stops workers and coordinator cleanly with the state
persisted; running the same command with `--resume` carries on.

Security: every run makes fresh random tokens (`TokenSet.generate`). The
workers get the worker token through their environment, never their command
line (which other users can read in `ps`); the observer token is written to
`<log dir>/observer.token` (mode 0600) for `autolfads status --token-file`.
So the coordinator is authenticated even on a shared machine.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from autolfads.config import RunConfig
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.search.staging import stage_run
from autolfads.coordinator.security.exposure import ServerSecurity, listen_host
from autolfads.coordinator.security.tokens import ENV_VARS, TokenSet
from autolfads.coordinator.wire.server import CoordinatorServer, create_server
from autolfads.errors import AutolfadsError
from autolfads.progress_display import ProgressPrinter, ProgressSnapshot, epochs_done, snapshot
from autolfads.storage import RunLayout, Store
from autolfads.storage.claims import ClaimLost, claim_run
from autolfads.trainer.timing import TIMING_ENV
from autolfads.worker_pool import (
    WORKER_EXIT_GRACE_S,
    WorkerPool,
    warm_template,
)

log = logging.getLogger(__name__)

# How soon a trainer told to WAIT asks again. In a synchronous search every
# trainer but the last waits at each generation boundary; a 1 s hint costs
# each of them ~0.5 s per generation. The coordinator stretches the hint when
# many trainers wait (coordinator/search/dispatch.py), so a short base is safe.
RUN_RETRY_AFTER_S = 0.1


class RunExists(AutolfadsError):
    """A run of that name is already in storage."""


@dataclass(frozen=True)
class LaunchOptions:
    storage_url: str
    workers: int
    threads_per_worker: int
    device: str = "auto"
    resume: bool = False
    force: bool = False
    lease_timeout_s: float = 60.0
    listen: str = "127.0.0.1:0"
    log_dir: Path | None = None
    # Serve a non-loopback --listen without TLS (tokens are always on).
    allow_plaintext: bool = False


def check_listen_address(listen: str) -> None:
    """Fail before anything is staged if the coordinator cannot bind `listen`."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise AutolfadsError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:0")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, int(port)))
        except OSError as err:
            raise AutolfadsError(f"cannot listen on {listen}: {err.strerror or err}") from None


def check_launch(opts: LaunchOptions) -> ServerSecurity:
    """The run's security (fresh random tokens), once what can fail about the
    options has been checked: before storage is touched, so a refused launch
    leaves nothing behind (the listen address is free; plaintext beyond
    loopback was allowed)."""
    check_listen_address(opts.listen)
    security = ServerSecurity(tokens=TokenSet.generate(), allow_plaintext=opts.allow_plaintext)
    security.check(opts.listen)
    return security


def prepare_run(store: Store, cfg: RunConfig, data_path: Path, opts: LaunchOptions) -> RunLayout:
    """Refuse, wipe or resume an existing run; then stage config and data.

    The caller holds the run's claim, whose record (if any) is kept."""
    layout = RunLayout(cfg.name)
    existing = [info.key for info in store.list(layout.prefix()) if info.key != layout.owner()]
    if existing and not (opts.resume or opts.force):
        raise RunExists(
            f"run {cfg.name!r} already exists in {store.url}; pass --resume to carry on, "
            "--force to delete it and start again, or change `name:` in the config"
        )
    if existing and opts.force:
        log.warning("--force: deleting %d objects of run %s", len(existing), cfg.name)
        for key in existing:
            store.delete(key)
    return stage_run(store, cfg, data_path)


def local_target(listen: str, port: int) -> str:
    """Where a process of this machine reaches a server bound to `listen`:
    the bound host itself ('[::1]:0', a LAN address), or loopback for a
    wildcard. (Always dialling 127.0.0.1 was refused by a server bound to
    ::1 or to one interface.)"""
    host = listen_host(listen)
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker_command(opts: LaunchOptions, port: int, run: str) -> Callable[[int], list[str]]:
    target = local_target(opts.listen, port)

    def command(slot: int) -> list[str]:
        # No token here: it travels in the environment (`worker_env`).
        return [
            "trainer",
            "--coordinator", target,
            "--storage", opts.storage_url,
            "--threads", str(opts.threads_per_worker),
            "--device", opts.device,
            "--worker-id", f"{run}-local-{slot}",
            "--run", run,
            # If this process dies, orphaned workers give up within a minute.
            "--unavailable-wait", "60",
            # Plaintext to a non-loopback address, as the server was allowed.
            *(["--allow-plaintext"] if opts.allow_plaintext else []),
        ]  # fmt: skip

    return command


def worker_env(tokens: TokenSet) -> dict[str, str]:
    """This process's environment for a worker: its own run's worker token
    only (any other coordinator's tokens and TLS settings are dropped)."""
    dropped = {*ENV_VARS.values(), "AUTOLFADS_TLS_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    assert tokens.worker is not None, "generated token sets have every role"
    env[ENV_VARS["worker"]] = tokens.worker
    # Their logs are files: always with the timing lines (benchmarks/worker_breakdown.py).
    env[TIMING_ENV] = "1"
    return env


def trainer_gpus(device: str, count: int, env: Mapping[str, str]) -> list[str]:
    """The GPUs (CUDA_VISIBLE_DEVICES entries) to spread `autolfads run`'s
    trainers over, given `count` visible GPUs: none on the CPU or with one
    GPU. Every trainer's "cuda" used to be the first GPU, so the default of
    one trainer per GPU put them all on GPU 0 and left the others idle."""
    if device == "cpu" or count < 2:
        return []
    visible = [x.strip() for x in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return visible[:count] if visible else [str(i) for i in range(count)]


def gpu_count(device: str = "auto") -> int:
    """The CUDA GPUs this machine shows (0 for `--device cpu`).

    Where NVIDIA's driver library is missing there are none, and torch is
    not imported: the launcher never needs it otherwise, and the import
    costs about 2 s of every `autolfads run` before its trainers start."""
    if device == "cpu" or not _nvidia_driver():
        return 0
    import torch

    return torch.cuda.device_count()


def _nvidia_driver() -> bool:
    if not sys.platform.startswith("linux"):
        return True  # no cheap check there: ask torch
    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # installed with the driver
    except OSError:
        return False
    return True


def write_secret(path: Path, text: str) -> None:
    """Create `path` readable by this user only (mode 0600), then write `text`."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text + "\n")


@dataclass
class Serving:
    """A coordinator's gRPC server and the bound port."""

    server: CoordinatorServer
    port: int


def open_service(
    cfg: RunConfig, store: Store, data_path: Path, opts: LaunchOptions
) -> CoordinatorService:
    """Stage (or resume) the run and open its coordinator state."""
    layout = prepare_run(store, cfg, data_path, opts)
    return resume_service(cfg, store, layout, opts.lease_timeout_s)


def resume_service(
    cfg: RunConfig, store: Store, layout: RunLayout, lease_timeout_s: float
) -> CoordinatorService:
    """The coordinator state of an already staged run (fresh or resumed)."""
    data_key, data_sha = _staged_data(store, layout)
    return CoordinatorService.open_search(
        cfg,
        store,
        data_key,
        data_sha,
        lease_timeout_s=lease_timeout_s,
        retry_after_s=RUN_RETRY_AFTER_S,
    )


def serve(service: CoordinatorService, listen: str, security: ServerSecurity) -> Serving:
    server, port = create_server(listen, service, security=security)
    return Serving(server, port)


def progress_source(service: CoordinatorService, cfg: RunConfig) -> Callable[[], ProgressSnapshot]:
    """A function returning the search's progress line data, timed from now.

    The ETA counts only what was trained from now: a resumed search's
    earlier generations took none of this time (counted, they made the ETA
    a fraction of what remained)."""
    epochs = {
        "burn_in_epochs": cfg.pbt.burn_in_epochs,
        "generation_epochs": cfg.pbt.generation_epochs,
    }
    at_start = epochs_done(service.status(), **epochs)
    start = time.monotonic()

    def progress() -> ProgressSnapshot:
        return snapshot(
            service.status(), time.monotonic() - start, epochs_at_start=at_start, **epochs
        )

    return progress


def shut_down(
    service: CoordinatorService,
    serving: Serving,
    stop_trainers: Callable[[], None],
    *,
    write: bool = True,
) -> None:
    """Drain, end the trainers, hand back their leases, stop the server.

    Every trainer of this run has exited once `stop_trainers` returns
    (stragglers killed): a lease one still held would otherwise hold up
    `--resume` for a whole lease timeout. Without `write` (the run's claim
    was lost) the state is left as last written.
    """
    if not write:
        serving.server.graceful_stop(grace_s=0.0)  # no call may write either
        stop_trainers()
        return
    # Storage failing (the error goes on up) still leaves no trainer training
    # and no call served for a state nobody writes any more.
    try:
        try:
            service.drain()
        finally:
            stop_trainers()
        released = service.release_leases("autolfads run stopped its trainers")
        if released:
            log.info("handed back %d leases of stopped trainers", released)
    finally:
        serving.server.graceful_stop(grace_s=2.0)
    # A call cut off at the end of the grace may have staged a change: written
    # now, while the run is still claimed (its claim ends after this).
    service.flush()


def write_observer_token(log_dir: Path, tokens: TokenSet) -> Path:
    """Write the observer token (0600) for `autolfads status --token-file`."""
    assert tokens.observer is not None, "generated token sets have every role"
    path = log_dir / "observer.token"
    write_secret(path, tokens.observer)
    return path


def log_watch_hint(address: str, token_file: Path) -> None:
    log.info(
        "coordinator on %s; watch it with: autolfads status %s --token-file %s",
        address,
        address,
        token_file,
    )


def make_log_dir(opts: LaunchOptions, run: str) -> Path:
    log_dir = opts.log_dir or Path(tempfile.mkdtemp(prefix=f"autolfads-{run}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log.info("worker logs in %s", log_dir)
    return log_dir


def run_search(
    cfg: RunConfig,
    store: Store,
    data_path: Path,
    opts: LaunchOptions,
    security: ServerSecurity,
    printer: ProgressPrinter,
) -> str:
    """Run the search to its end; return the final state (finished/cancelled/failed).

    `security` comes from `check_launch(opts)`. KeyboardInterrupt propagates
    after workers and server have stopped cleanly.
    """
    # Before anything is read or deleted: a live coordinator of this run
    # (another `autolfads run`, say) refuses this one here.
    with claim_run(store, cfg.name, command="autolfads run") as claim:
        store = claim.fence(store)  # every write fails once the claim is lost
        tokens = security.tokens
        # The trainers' template imports torch while the coordinator opens.
        warm_template(worker_env(tokens))
        service = open_service(cfg, store, data_path, opts)
        if service.terminal:
            return service.exit_status
        serving = serve(service, opts.listen, security)
        log_dir = make_log_dir(opts, cfg.name)
        log_watch_hint(
            local_target(opts.listen, serving.port), write_observer_token(log_dir, tokens)
        )
        progress = progress_source(service, cfg)
        pool: WorkerPool | None = None
        try:
            pool = WorkerPool(
                _worker_command(opts, serving.port, cfg.name),
                opts.workers,
                log_dir,
                env=worker_env(tokens),
                gpus=trainer_gpus(opts.device, gpu_count(opts.device), os.environ),
            )
            while not service.terminal:
                if not claim.held():
                    raise ClaimLost(claim)
                service.tick()
                pool.check(search_running=True)
                printer.show(progress())
                time.sleep(0.5)
            printer.show(progress())
            # Workers learn DONE at their next request; give them a lease period.
            pool.wait(timeout_s=min(opts.lease_timeout_s, WORKER_EXIT_GRACE_S))
        finally:
            printer.close()
            stop_trainers = pool.stop if pool is not None else lambda: None
            shut_down(service, serving, stop_trainers, write=claim.held())
        return service.exit_status


def _staged_data(store: Store, layout: RunLayout) -> tuple[str, str]:
    from autolfads.coordinator.search.staging import load_run

    _, key, sha = load_run(store, layout.run)
    return key, sha


def default_workers(workers: int | None = None) -> tuple[int, int]:
    """(workers, torch threads per worker) for this machine.

    Without `workers`: one worker per GPU; on CPU one per 2 cores (one per
    core on machines of 2 cores or fewer). Threads split the cores evenly.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers is None:
        try:
            gpus = gpu_count()
        except ImportError:  # pragma: no cover - the trainer extra is required anyway
            gpus = 0
        workers = gpus or (max(1, cpus // 2) if cpus > 2 else cpus)
    return workers, max(1, cpus // workers)
