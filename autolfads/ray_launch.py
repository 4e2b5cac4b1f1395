"""`autolfads run --ray ADDRESS`: the whole search on an existing Ray cluster.

What runs where:

* the driver (this process, wherever `autolfads run` was typed) checks the
  cluster, stages the run, starts the coordinator actor, shows the progress
  line and, once the search has finished, posterior-samples the best member
  and builds the report exactly as `autolfads run` does;
* the coordinator actor (ray_actors.CoordinatorActor) is pinned to the head
  node and *detached*: it serves the search over gRPC (random tokens; TLS
  when the head is not this machine's loopback) and owns the trainer actors.
  Detached, it outlives its driver: a laptop that sleeps or loses its
  connection does not end a long search. `autolfads run --ray ... --resume`
  finds it again by run name and carries on watching;
* trainer actors run the `autolfads trainer` loop with the resources asked
  (`--trainer-cpus`, fractional `--trainer-gpus`); Ray restarts one that
  crashes or loses its node, and the coordinator's leases make that safe
  (one that keeps dying without finishing a segment is given up).

Ctrl-C stops the trainers (their leases handed back), saves the state and
ends the actors; `--resume` continues.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autolfads import ray_cluster
from autolfads.config import RunConfig
from autolfads.coordinator.security.exposure import ClientSecurity, ServerSecurity, is_loopback_host
from autolfads.errors import ConfigError
from autolfads.launcher import (
    LaunchOptions,
    log_watch_hint,
    make_log_dir,
    prepare_run,
    write_observer_token,
)
from autolfads.progress_display import ProgressPrinter
from autolfads.ray_actors import CoordinatorActor, CoordinatorView, TrainerSpec
from autolfads.signals import interrupt_on_sigterm
from autolfads.storage import Store
from autolfads.storage.claims import RunClaimed, claim_run
from autolfads.worker_pool import SearchFailed

log = logging.getLogger(__name__)

# Storage settings the actors need, passed as actor arguments (never a
# command line, log line, actor name or runtime_env, which Ray logs).
FORWARDED_ENV_PREFIXES = ("AWS_", "MINIO_", "AUTOLFADS_S3_")
FORWARDED_ENV_NAMES = ("AUTOLFADS_LOG_LEVEL", "SSL_CERT_FILE")
POLL_S = 0.5
STOP_TIMEOUT_S = 120.0
# How long a call to the coordinator actor is retried while Ray reports it
# unavailable (alive, but its call failed on the way: a connection to the
# head's node lost for a moment) before the driver gives up on it.
UNAVAILABLE_WAIT_S = 120.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the actor names in its errors


@dataclass(frozen=True)
class RayOptions:
    address: str
    resources: ray_cluster.TrainerResources
    tls_dir: Path | None = None


def default_workers(need: ray_cluster.TrainerResources) -> int:
    """As many trainers as the cluster's nodes hold, node by node: a trainer
    fits on one node or on none (one counted from the sum of the nodes' CPUs
    would stay pending for ever, and the search's end would wait for it)."""
    if not need.cpus and not need.gpus:
        return 1
    return max(1, sum(ray_cluster.trainers_fitting(node, need) for node in ray_cluster.nodes()))


@dataclass(frozen=True)
class Cluster:
    """The facts about the joined cluster the launch depends on."""

    listen: str  # where the coordinator actor binds
    advertise: str  # the host trainers dial
    security: ServerSecurity
    trainer_security: ClientSecurity


def actor_name(run: str) -> str:
    return f"coordinator-{run}"


def check_device(device: str, need: ray_cluster.TrainerResources) -> None:
    """A trainer uses a GPU only where Ray reserved it one."""
    if device == "cuda" and not need.gpus:
        raise ConfigError(
            "--device cuda with --ray needs --trainer-gpus (1 per trainer, or 0.5 to share "
            "a GPU): without it Ray reserves no GPU for a trainer"
        )


def trainer_device(device: str, need: ray_cluster.TrainerResources) -> str:
    """The trainers' --device. Ray leaves an actor that reserved no GPU every
    GPU of its node visible, so `auto` would train on GPUs that Ray gives to
    others (or none: every trainer of a node on its first GPU): such a
    trainer trains on the CPU."""
    return "cpu" if not need.gpus else device


def trainer_spec(opts: LaunchOptions, ray_opts: RayOptions) -> TrainerSpec:
    need = ray_opts.resources
    return TrainerSpec(
        storage_url=opts.storage_url,
        threads=opts.threads_per_worker,
        device=trainer_device(opts.device, need),
        cpus=need.cpus,
        gpus=need.gpus,
        env=forwarded_env(),
    )


def join(opts: LaunchOptions, ray_opts: RayOptions, security: ServerSecurity) -> Cluster:
    """Connect and check the cluster; nothing is created if this raises."""
    ray_opts.resources.check()
    check_device(opts.device, ray_opts.resources)
    ray_cluster.connect(ray_opts.address)
    live = ray_cluster.nodes()
    ray_cluster.check_storage(opts.storage_url, live, ray_cluster.driver_ip())
    ray_cluster.check_resources(ray_opts.resources, live)
    head = ray_cluster.head_ip(live)
    tokens = security.tokens
    if is_loopback_host(head) or all(node.ip == head for node in live):
        # Every node is the head's machine: the coordinator stays on loopback
        # (nodes of other machines that join later could not reach it).
        return Cluster(
            "127.0.0.1:0",
            "127.0.0.1",
            ServerSecurity(tokens=tokens),
            ClientSecurity(token=tokens.worker),
        )
    return _beyond_loopback(head, ray_opts, security)


def _beyond_loopback(head: str, ray_opts: RayOptions, security: ServerSecurity) -> Cluster:
    """Trainers on other machines reach the coordinator over the network: TLS
    from --tls-dir, or plaintext only if --allow-plaintext says so."""
    from autolfads.coordinator.security.tls import ClientTls, ServerTls

    tokens = security.tokens
    if ray_opts.tls_dir is None:
        if not security.allow_plaintext:
            raise ConfigError(
                f"the coordinator will listen on the head node {head}, beyond loopback: pass "
                "--tls-dir DIR (tls.crt, tls.key for the head and ca.crt) or --allow-plaintext"
            )
        return Cluster(
            f"{head}:0",
            head,
            ServerSecurity(tokens=tokens, allow_plaintext=True),
            ClientSecurity(token=tokens.worker, allow_plaintext=True),
        )
    return Cluster(
        f"{head}:0",
        head,
        ServerSecurity(tokens=tokens, tls=ServerTls.from_dir(ray_opts.tls_dir)),
        ClientSecurity(token=tokens.worker, tls=ClientTls.from_dir(ray_opts.tls_dir)),
    )


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = dict(os.environ) if environ is None else environ
    return {
        k: v
        for k, v in environ.items()
        if k.startswith(FORWARDED_ENV_PREFIXES) or k in FORWARDED_ENV_NAMES
    }


def _find(run: str):
    import ray

    try:
        return ray.get_actor(actor_name(run), namespace=ray_cluster.NAMESPACE)
    except ValueError:
        return None


def ask(call: Callable[[], Any], timeout_s: float | None = None) -> Any:
    """`ray.get(call())`, called again while Ray says the actor is unavailable
    for now (`ActorUnavailableError`: the call may not have reached it), for
    up to UNAVAILABLE_WAIT_S; the actor's methods asked this way only read.
    Any other RayError (the actor is dead, ...) is raised at once."""
    import ray
    from ray.exceptions import ActorUnavailableError

    end_by = time.monotonic() + UNAVAILABLE_WAIT_S
    while True:
        try:
            return ray.get(call(), timeout=timeout_s)
        except ActorUnavailableError as err:
            if time.monotonic() > end_by:
                raise
            log.debug("the coordinator actor is unavailable for now (%s); asking again", err)
            time.sleep(POLL_S)


def storage_place(url: str) -> str:
    """Where a --storage URL points: an S3 URL without its settings (?endpoint=...)."""
    if url.startswith("s3://"):
        url = url.partition("?")[0]
    return url.rstrip("/")


def check_same_storage(actor, run: str, storage_url: str) -> None:
    """The run of that name on this cluster is this --storage's: one of another
    storage must not be watched, and finalized from this one's state."""
    from ray.exceptions import RayError

    try:
        theirs: str = ask(actor.storage_of.remote, STOP_TIMEOUT_S)
    except RayError:  # an actor started before it could say: nothing to compare
        return
    if storage_place(theirs) != storage_place(storage_url):
        raise ConfigError(
            f"run {run!r} on this Ray cluster is the search in {storage_place(theirs)}, not in "
            f"--storage {storage_place(storage_url)}: pass that --storage to watch it, or give "
            "this run another `name:` in its config"
        )


def stopped_unended(actor) -> bool:
    """The actor has shut down without an end to its search (Ctrl-C's stop)
    and was never ended, or it is gone: nothing to re-attach to."""
    from ray.exceptions import RayError

    try:
        view: CoordinatorView = ask(actor.view.remote, STOP_TIMEOUT_S)
    except RayError:
        return True
    return view.done and not view.error and view.status == "running"


def wait_gone(run: str) -> None:
    """Until the ended actor's name is free for a new one."""
    end_by = time.monotonic() + STOP_TIMEOUT_S
    while _find(run) is not None:
        if time.monotonic() > end_by:
            raise SearchFailed(
                f"the old coordinator actor of run {run!r} is still registered; "
                f"end it with `ray kill` (namespace {ray_cluster.NAMESPACE}) and run again"
            )
        time.sleep(POLL_S)


def start_coordinator(cfg: RunConfig, opts: LaunchOptions, ray_opts: RayOptions, cluster: Cluster):
    """The detached coordinator actor on the head node (it starts the trainers)."""
    import ray

    spec = trainer_spec(opts, ray_opts)
    return (
        ray.remote(CoordinatorActor)
        .options(
            name=actor_name(cfg.name),
            namespace=ray_cluster.NAMESPACE,
            lifetime="detached",  # survives the driver (see the module docstring)
            num_cpus=0,
            resources={"node:__internal_head__": 0.001},
            max_concurrency=8,  # view(), stop() and trainers() while the search ticks
        )
        .remote(
            cfg.name, opts.storage_url, cluster.listen, cluster.advertise, cluster.security,
            cluster.trainer_security, spec, opts.workers, opts.lease_timeout_s,
        )
    )  # fmt: skip


def run_on_ray(
    cfg: RunConfig,
    store: Store,
    data_path: Path,
    opts: LaunchOptions,
    ray_opts: RayOptions,
    cluster: Cluster,
    printer: ProgressPrinter,
) -> str:
    """Run (or re-attach to) the search on the joined cluster; return its
    final state. KeyboardInterrupt propagates after the actors have stopped
    cleanly.
    """
    if not opts.storage_url.startswith("s3://"):
        # Actors do not share this process's working directory.
        opts = replace(opts, storage_url=store.url)
    actor = _find(cfg.name)
    if actor is not None and stopped_unended(actor):
        # Stopped by a driver that was killed before it could end it: the
        # state is saved; end it and start the search again from there.
        log.info("ending the stopped coordinator actor of run %s", cfg.name)
        end(actor)
        wait_gone(cfg.name)
        actor = None
    if actor is not None:
        check_same_storage(actor, cfg.name, opts.storage_url)
    if actor is not None and not opts.resume:
        raise ConfigError(
            f"run {cfg.name!r} is already running on this Ray cluster; watch it again with --resume"
        )
    token_file = None
    if actor is None:
        # Claimed while staging (a --force wipe included), then handed to
        # the coordinator actor, which claims the run while it serves.
        with claim_run(store, cfg.name, command="autolfads run --ray"):
            prepare_run(store, cfg, data_path, opts)
        # The token file is there before any trainer can start.
        token_file = write_observer_token(make_log_dir(opts, cfg.name), cluster.security.tokens)
        started = time.monotonic()
        actor = start_coordinator(cfg, opts, ray_opts, cluster)
    else:
        log.info("re-attached to the running coordinator of run %s", cfg.name)
    # `ray job stop` sends SIGTERM: stop the search as Ctrl-C does (Ray's own
    # handler would only exit the driver, leaving the detached search running).
    interrupt_on_sigterm()
    try:
        if token_file is not None:  # just started: wait until it serves
            address = serving_address(actor)
            log.info("coordinator actor up in %.1f s", time.monotonic() - started)
            log_watch_hint(address, token_file)
        view = watch(actor, printer)
    except KeyboardInterrupt:
        printer.close()
        stop(actor)
        raise
    printer.close()
    end(actor)
    if view.error:
        raise SearchFailed(f"search stopped on the Ray cluster: {view.error}")
    return view.status


def stop(actor) -> None:
    """Ctrl-C: the actor stops the search (trainers, leases, state), then
    ends. If it cannot, one line says so, and it is ended all the same."""
    import ray
    from ray.exceptions import RayError

    try:
        ray.get(actor.stop.remote(), timeout=STOP_TIMEOUT_S)
    except RayError as err:
        raise SearchFailed(
            f"the coordinator actor did not stop cleanly ({last_line(str(err))}); "
            "the state is saved up to its last write: run again with --resume"
        ) from None
    finally:
        end(actor)


def serving_address(actor) -> str:
    """The just-started coordinator actor's address once it serves. If its
    start failed (another coordinator claimed the run after this driver
    staged it, storage unreachable from the head node), the error in one line."""
    from ray.exceptions import RayActorError

    try:
        address: str = ask(actor.address_of.remote)
    except RayActorError as err:
        line = last_line(str(err))
        kind, _, message = line.partition(": ")
        if err.actor_init_failed and kind.endswith(".RunClaimed"):
            raise RunClaimed(message) from None
        raise SearchFailed(f"the coordinator actor could not start ({line})") from None
    return address


def last_line(text: str) -> str:
    """The last line of a Ray error: for a task's or an actor creation's
    error, the exception raised ("module.Class: message") without Ray's
    traceback around it."""
    lines = [ANSI.sub("", line).strip() for line in text.splitlines()]
    return next((line for line in reversed(lines) if line), text)


def watch(actor, printer: ProgressPrinter) -> CoordinatorView:
    """Show progress until the coordinator actor says the search has ended."""
    from ray.exceptions import RayError

    while True:
        try:
            view: CoordinatorView = ask(actor.view.remote)
        except RayError as err:
            raise SearchFailed(
                f"the coordinator actor failed ({last_line(str(err))}); the state is saved: "
                "run again with --resume"
            ) from None
        printer.show(view.progress)
        if view.done:
            return view
        time.sleep(POLL_S)


def end(actor) -> None:
    import ray

    actor.close.remote()
    ray.kill(actor, no_restart=True)
