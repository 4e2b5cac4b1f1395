"""The two Ray actors of `autolfads run --ray`, as plain classes.

`TrainerActor` runs the very worker loop of `autolfads trainer`
(`trainer.worker.Worker`) inside a Ray actor process. `CoordinatorActor`
serves the very `CoordinatorService` of `autolfads run` over gRPC from the
head node, owns the trainer actors and ticks the search; the driver only
watches it (see ray_launch.py for why it lives there).

The classes become actors with `ray.remote(cls).options(...)` in the
functions that start them, so this module imports without Ray.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from autolfads.coordinator.security.exposure import ClientSecurity, ServerSecurity
from autolfads.launcher import (
    Serving,
    progress_source,
    resume_service,
    serve,
    shut_down,
)
from autolfads.progress_display import ProgressSnapshot
from autolfads.storage.claims import ClaimLost, claim_run
from autolfads.worker_pool import MAX_RESTARTS_PER_WORKER, WORKER_EXIT_GRACE_S

log = logging.getLogger(__name__)

# After the search ended, a coordinator actor whose driver went away (a laptop
# asleep) waits this long for `autolfads run --resume` to collect it.
ORPHAN_LINGER_S = 3600.0
# How long `trainers()` waits for a trainer actor Ray is restarting.
RESTART_WAIT_S = 120.0


def _configure_logging(env: dict[str, str]) -> None:
    # An actor's stderr is its Ray log file (dashboard: Actors -> logs).
    level = env.get("AUTOLFADS_LOG_LEVEL", os.environ.get("AUTOLFADS_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@dataclass(frozen=True)
class TrainerSpec:
    """How the coordinator actor starts each trainer actor."""

    storage_url: str
    threads: int
    device: str
    cpus: float
    gpus: float
    # Storage settings from the driver, over the node's own environment. They
    # travel as actor arguments: a runtime_env's variables would be written
    # into Ray's runtime_env_agent log.
    env: dict[str, str]

    def open_store(self, url: str, *, create_bucket: bool = True):
        from autolfads.storage import open_store

        return open_store(url, env={**os.environ, **self.env}, create_bucket=create_bucket)

    def __repr__(self) -> str:  # the env may hold credentials
        return f"TrainerSpec(cpus={self.cpus}, gpus={self.gpus}, env={sorted(self.env)})"


class TrainerActor:
    """One stateless PBT trainer: lease, train, report until the search is done."""

    def __init__(
        self, coordinator: str, spec: TrainerSpec, name: str, run: str, security: ClientSecurity
    ) -> None:
        _configure_logging(spec.env)
        self.coordinator = coordinator
        self.spec = spec
        self.name = name
        self.run_name = run
        self.security = security
        self.stop_event = threading.Event()

    def where(self) -> tuple[int, str]:
        """(pid, node IP) of this incarnation."""
        import ray

        return os.getpid(), ray.util.get_node_ip_address()

    def run(self) -> int:
        """The `autolfads trainer` loop; its exit code (0 done, 143 stopped)."""
        from autolfads.coordinator.wire.client import CoordinatorClient
        from autolfads.storage import default_cache_dir
        from autolfads.trainer.worker import Worker, configure_torch

        configure_torch(self.spec.threads)
        store = self.spec.open_store(self.spec.storage_url, create_bucket=False)
        # A restarted actor is a new worker to the coordinator: the lease of
        # the lost incarnation expires and its member is trained again.
        worker_id = f"{self.name}-{os.getpid()}"
        with CoordinatorClient(
            self.coordinator, unavailable_wait_s=10.0, security=self.security
        ) as client:
            worker = Worker(
                client,
                store,
                worker_id,
                cache_dir=default_cache_dir(),
                device=self.spec.device,
                stop=self.stop_event,
                run=self.run_name,
                unavailable_wait_s=60.0,
            )
            return worker.run()

    def stop(self) -> None:
        """Abandon the current leases between epochs (like SIGTERM)."""
        self.stop_event.set()


def ended_because(err: Exception) -> str:
    """Why a trainer actor's run() failed, in one line."""
    from ray.exceptions import ActorUnavailableError, RayTaskError

    if isinstance(err, RayTaskError) and err.cause is not None:
        # run() raised: the exception itself, not Ray's traceback around it.
        cause = err.cause
        text = " ".join(str(cause).split())[:300]
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    if isinstance(err, ActorUnavailableError):  # Ray is restarting it
        return "its process died or its node was lost"
    # ActorDiedError and the like: their last line says why the actor is dead.
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300]


@dataclass(frozen=True)
class CoordinatorView:
    """What the driver polls: the progress line and whether the search ended."""

    progress: ProgressSnapshot
    done: bool
    status: str
    error: str = ""


class CoordinatorActor:
    """The search's coordinator on the head node, owning its trainer actors."""

    def __init__(
        self,
        run: str,
        storage_url: str,
        listen: str,
        advertise: str,
        security: ServerSecurity,
        trainer_security: ClientSecurity,
        spec: TrainerSpec,
        workers: int,
        lease_timeout_s: float,
    ) -> None:
        from autolfads.coordinator.search.staging import load_run
        from autolfads.coordinator.wire.collector import settle_collector
        from autolfads.storage import RunLayout

        settle_collector()  # this actor's process hosts the coordinator
        _configure_logging(spec.env)
        store = spec.open_store(storage_url)
        cfg, _, _ = load_run(store, run)
        # Before the state is read: another live coordinator of the run
        # refuses this one (the driver reports the one-line error).
        self._claim = claim_run(store, run, command="autolfads ray coordinator")
        try:
            fenced = self._claim.fence(store)  # no write once the claim is lost
            self.service = resume_service(cfg, fenced, RunLayout(run), lease_timeout_s)
            self.serving: Serving = serve(self.service, listen, security)
        except BaseException:
            self._claim.release()
            raise
        self.address = f"{advertise}:{self.serving.port}"
        self._progress = progress_source(self.service, cfg)
        self._spec = spec
        self._run = run
        self._storage_url = storage_url
        self._trainer_security = trainer_security
        self._trainers: dict[int, Any] = {}  # slot -> Ray actor handle (untyped)
        self._runs: dict[object, int] = {}  # run() call -> slot
        # where() call -> slot: a trainer that died, being restarted by Ray
        self._waking: dict[object, int] = {}
        self._restarts = dict.fromkeys(range(workers), 0)
        self._started = dict.fromkeys(range(workers), 0.0)  # service clock, run() last called
        self._error = ""
        self._last_failure = ""
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._stopped_lock = threading.Lock()
        self._stopped = False
        # Set once shutdown has finished (state written, claim released):
        # only then may the driver, told the search is done, kill this actor.
        self._shut = threading.Event()
        for slot in range(workers):
            self._start_trainer(slot)
        self._loop = threading.Thread(target=self._tick_loop, name="search", daemon=True)
        self._loop.start()

    # ------------------------------------------------------------ trainers

    def _start_trainer(self, slot: int) -> None:
        import ray

        # An actor handle: its methods are called through `.remote`, which
        # Ray's own annotations do not describe.
        actor: Any = (
            ray.remote(TrainerActor)
            .options(
                num_cpus=self._spec.cpus,
                num_gpus=self._spec.gpus,
                # Ray restarts a crashed actor (or one whose node was lost);
                # its pending run() fails instead of being re-run, so that
                # `_check_trainers` sees every death and counts it (a trainer
                # that dies at each start must end the search, not loop).
                # Deaths before run() started (while Ray creates or restarts
                # the actor) are bounded by Ray: the actor is then dead for
                # good, and `_check_trainers` starts a new one in its slot.
                max_restarts=MAX_RESTARTS_PER_WORKER,
                max_task_retries=0,
                max_concurrency=2,  # stop() while run() trains
            )
            .remote(
                self.address, self._spec, f"{self._run}-ray-{slot}", self._run,
                self._trainer_security,
            )
        )  # fmt: skip
        self._trainers[slot] = actor
        self._run_trainer(slot)

    def _run_trainer(self, slot: int) -> None:
        self._started[slot] = self.service.clock.now()
        self._runs[self._trainers[slot].run.remote()] = slot

    def _rerun_once_restarted(self, slot: int) -> None:
        """run() again on a trainer that died, once Ray has restarted it. A
        call made while it restarts fails at once (run() is not retried, so
        that every death is seen), and would count as a death of its own:
        one crash used the whole budget. where() is retried through the
        restart, and `_check_trainers` calls run() when it answers."""
        where = self._trainers[slot].where.options(max_task_retries=-1)
        self._waking[where.remote()] = slot

    def _trained_since_start(self, slot: int) -> bool:
        """Whether a trainer of `slot` has finished a segment since its run()
        last started: one that did was working (then lost its node, or
        crashed once), so its restarts are not a crash loop."""
        prefix = f"{self._run}-ray-{slot}-"  # worker ids: TrainerActor.run
        since = self._started[slot]
        return any(
            lease.status == "accepted" and lease.worker_id.startswith(prefix)
            and lease.granted_at >= since
            for lease in self.service.snapshot().leases.values()
        )  # fmt: skip

    def _check_trainers(self) -> None:
        """Call run() again on a trainer whose loop ended while the search runs."""
        import ray
        from ray.exceptions import ActorDiedError

        self._check_waking()
        ready, _ = ray.wait(list(self._runs), num_returns=len(self._runs), timeout=0)
        for ref in ready:
            slot = self._runs.pop(ref)
            dead = False  # for good: Ray restarts it no more
            try:
                code = f"exit code {ray.get(ref)}"
            except Exception as err:  # run() raised, its process died, or it is gone
                code = ended_because(err)
                dead = isinstance(err, ActorDiedError)
            if self.service.terminal or self._stopping.is_set():
                continue
            if self._trained_since_start(slot):
                self._restarts[slot] = 0
            if self._restarts[slot] >= MAX_RESTARTS_PER_WORKER:
                log.error(
                    "trainer %d ended (%s) %d times without finishing a segment; giving up on it",
                    slot,
                    code,
                    1 + self._restarts[slot],
                )
                self._last_failure = f"trainer {slot} ended: {code}"
                # Ray would restart it for ever after its next death.
                ray.kill(self._trainers[slot], no_restart=True)
                continue
            self._restarts[slot] += 1
            log.warning("trainer %d ended (%s) while the search runs; running it again", slot, code)
            if dead:
                self._start_trainer(slot)
            else:
                self._rerun_once_restarted(slot)
        if (
            not self._runs
            and not self._waking
            and not self.service.terminal
            and not self._stopping.is_set()
        ):
            # Like `autolfads run`: the search fails only once no trainer is left.
            self._error = f"every trainer actor failed; last: {self._last_failure}"

    def _check_waking(self) -> None:
        """run() on the restarted trainers; a new actor where Ray gave up."""
        import ray

        if not self._waking:
            return
        ready, _ = ray.wait(list(self._waking), num_returns=len(self._waking), timeout=0)
        for ref in ready:
            slot = self._waking.pop(ref)
            if self.service.terminal or self._stopping.is_set():
                continue
            try:
                ray.get(ref)
            except Exception as err:  # dead for good: its restarts ran out
                log.warning("trainer %d was not restarted (%s)", slot, ended_because(err))
                self._start_trainer(slot)
                continue
            self._run_trainer(slot)

    def _stop_trainers(self) -> None:
        import ray

        for actor in self._trainers.values():
            actor.stop.remote()
        if self._runs:
            ray.wait(list(self._runs), num_returns=len(self._runs), timeout=WORKER_EXIT_GRACE_S)
        for actor in self._trainers.values():
            ray.kill(actor, no_restart=True)
        self._runs.clear()
        self._waking.clear()

    # ------------------------------------------------------------ the search

    def _tick_loop(self) -> None:
        while not self.service.terminal and not self._stopping.is_set() and not self._error:
            if not self._claim.held():
                self._error = str(ClaimLost(self._claim))
                break
            try:
                self.service.tick()
                self._check_trainers()
            except Exception as err:  # the search cannot go on: say so, then shut down
                log.exception("the coordinator actor's search loop failed")
                self._error = f"the coordinator actor failed: {err}"
                break
            time.sleep(0.5)
        if self._stopping.is_set():
            return  # stop() shuts down
        # Trainers learn DONE at their next request; give them a moment.
        import ray

        if self._runs:
            ray.wait(list(self._runs), num_returns=len(self._runs), timeout=WORKER_EXIT_GRACE_S)
        try:
            self._shut_down()
        except Exception:  # storage down at the end: `view` says so
            log.exception("the coordinator actor's shutdown failed")
        # Nobody collected the result (the driver went away): exit on our own.
        if not self._closed.wait(ORPHAN_LINGER_S):
            os._exit(0)

    def _shut_down(self) -> None:
        with self._stopped_lock:
            first, self._stopped = not self._stopped, True
        if not first:  # stop() during the loop's own shutdown: the same end
            self._shut.wait()
            return
        try:
            shut_down(self.service, self.serving, self._stop_trainers, write=self._claim.held())
        except Exception as err:
            self._error = self._error or f"shutting down failed: {err}"
            raise
        finally:
            try:
                self._claim.release()
            finally:
                self._shut.set()

    def view(self) -> CoordinatorView:
        done = self._shut.is_set()
        return CoordinatorView(
            self._progress(), done=done, status=self.service.exit_status, error=self._error
        )

    def address_of(self) -> str:
        return self.address

    def storage_of(self) -> str:
        """The --storage of the search this actor serves (as its driver gave it)."""
        return self._storage_url

    def trainers(self) -> list[tuple[int, int, str]]:
        """(slot, pid, node IP) of every trainer actor now alive."""
        import ray

        # Retried (unlike run()) once Ray has restarted an actor that died.
        where = {
            slot: actor.where.options(max_task_retries=-1) for slot, actor in self._trainers.items()
        }
        refs = {slot: method.remote() for slot, method in where.items()}
        out = []
        for slot, ref in refs.items():
            try:
                pid, ip = ray.get(ref, timeout=RESTART_WAIT_S)
            except Exception:  # restarting, or gone: not alive now
                continue
            out.append((slot, pid, ip))
        return out

    def stop(self) -> str:
        """Ctrl-C in the driver: stop trainers (leases handed back), save state."""
        self._stopping.set()
        # The driver is here: a tick loop already lingering for an orphaned
        # end of search (up to ORPHAN_LINGER_S) must not hold this call.
        self._closed.set()
        self._loop.join()
        self._shut_down()
        return self.service.exit_status

    def close(self) -> None:
        """The driver has the result; the actor may be ended."""
        self._closed.set()
