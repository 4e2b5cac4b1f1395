"""The stateless PBT trainer worker: `autolfads trainer --coordinator HOST:PORT`.

The loop reads top to bottom:

    ask for up to N leases            (held by the coordinator until there
                                       is work; WAIT: sleep retry_after;
                                       DONE: exit 0)
    for each lease: fetch config + data (cached by content hash), load the
        start checkpoint (verified SHA-256; a corrupt one falls back to the
        next start point and is reported) into an idle training session of
        this run (built once: model, optimizer, data tensors), apply the
        lease's hyperparameters (the leases are heartbeated meanwhile from
        a helper thread: a slow download is not a silent worker)
    train every lease's `epochs` epochs, one epoch of each in turn,
        heartbeating between epochs (STOP drops that lease); while the last
        epochs run, the next lease is asked for on a helper thread (only when
        the last round of epochs is short against the heartbeat interval)
    serialise the checkpoint; then, on the publisher thread while this one
        asks for the next lease: store checkpoint, then metrics.json, then
        report (its lease heartbeated from the helper thread until then, and
        checked just before the upload: one lost meanwhile stores nothing);
        repeat

Nothing that matters survives a lease: a reused session is reset to exactly
what a new process would build at the lease's start point, and a killed
worker costs one lease timeout, after which the coordinator hands the unit
to someone else. SIGTERM (pod eviction): the current leases are abandoned
cleanly between epochs (reported as ABANDONED so they are re-queued at once),
finished segments are still published, and the worker exits 143.
Every phase's seconds go to the log (`trainer/timing.py`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from autolfads.config import RunConfig, loads_config
from autolfads.coordinator.search.errors import (
    CoordinatorError,
    CoordinatorUnavailable,
    SearchFinished,
    StaleLease,
    UnknownLease,
)
from autolfads.coordinator.search.messages import (
    HeartbeatReply,
    Lease,
    ReportAck,
    SegmentReport,
    WorkReply,
)
from autolfads.coordinator.search.recovery import read_state
from autolfads.coordinator.search.state import StartPoint
from autolfads.errors import AutolfadsError
from autolfads.signals import StopEvent, stop_on_signals
from autolfads.storage import (
    ChecksumMismatch,
    DataCache,
    ObjectNotFound,
    StorageError,
    Store,
)
from autolfads.trainer.beats import Beat, Beats
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import load_cached
from autolfads.trainer.leased import (
    LeasedSegment,
    SessionPool,
    copied,
    exploit_generator_seed,
    last_short_round,
    metrics_doc,
    session_key,
)
from autolfads.trainer.model.device import resolve_device
from autolfads.trainer.model.session import CheckpointError, TrainingSession, read_checkpoint
from autolfads.trainer.publisher import Publisher
from autolfads.trainer.timing import WorkerClock

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_DONE = 0
EXIT_TERMINATED = 143
# A WAIT's retry_after is capped so a worker notices new work promptly.
MAX_WAIT_S = 10.0
# RequestWork is a long poll: with nothing to do, the coordinator holds the
# call up to this long and answers the moment a generation opens (a
# coordinator without long polls answers WAIT at once). SIGTERM ends a hold
# within `client.CANCEL_CHECK_S`.
WORK_WAIT_S = 20.0
# A lease waiting on storage longer than this (loading, or its checkpoint
# waiting to upload and uploading) has a stuck worker, not a slow store: its
# beats stop, and the lease expires as a silent worker's does.
STORAGE_BEAT_LIMIT_S = 900.0
# Passed as a call's `cancel`, already set: the client tries once and does
# not ride out an outage (a helper thread's beat retries on its interval).
ONE_ATTEMPT = threading.Event()
ONE_ATTEMPT.set()


class CoordinatorLink(Protocol):
    """The calls a worker makes: `CoordinatorClient` (gRPC), or a Katib
    trial's stand-in that serves one lease from storage (`katib.trial`)."""

    def request_work(
        self,
        worker_id: str,
        max_leases: int = 1,
        *,
        wait_s: float = 0.0,
        cancel: threading.Event | None = None,
        request_id: str | None = None,
    ) -> WorkReply: ...

    def heartbeat(
        self,
        lease_id: str,
        worker_id: str,
        epochs_done: int = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> HeartbeatReply: ...

    def report(
        self, report: SegmentReport, *, cancel: threading.Event | None = None
    ) -> ReportAck: ...


class Worker:
    def __init__(
        self,
        client: CoordinatorLink,
        store: Store,
        worker_id: str,
        *,
        cache_dir: Path,
        max_leases: int = 1,
        device: str = "cpu",
        stop: threading.Event | None = None,
        run: str | None = None,
        unavailable_wait_s: float = 0.0,
    ) -> None:
        self.client = client
        # The run's name lets a worker that cannot reach the coordinator see in
        # storage whether the search already ended (a retried pod that starts
        # after the coordinator exited must not wait for it in vain).
        self.run_name = run
        self.unavailable_wait_s = unavailable_wait_s
        self.store = store
        self.worker_id = worker_id
        self.max_leases = max_leases
        # Checked before any lease is taken: a device this machine lacks is
        # the worker's problem, never a segment's (ConfigError, one line).
        resolve_device(device)
        self.device = device
        self.stop = stop or threading.Event()
        # What lease requests and retries watch: the stop, or this loop failing
        # (the caller's stop event is never set here: a Ray actor runs a new
        # worker with it after one fails).
        self._halt = _Halt(self.stop)
        self._cache = DataCache(store, cache_dir)
        # Caches, not state: configs by key, datasets by content hash.
        self._configs: dict[str, RunConfig] = {}
        self._datasets: dict[str, LfadsData] = {}
        self._sessions = SessionPool(device)
        self._beats = Beats()  # leases busy with storage: loading, publishing
        self._publisher = Publisher(self._beats)
        # The next lease request, made while a segment's last epoch runs.
        self._asker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autolfads-ask")
        self._asking: Future[WorkReply | None] | None = None
        # Seconds per phase of this loop, logged for benchmarks/worker_breakdown.py.
        self.clock = WorkerClock(worker_id)

    def run(self) -> int:
        """Lease, train, report until DONE (exit 0) or SIGTERM (143)."""
        self.clock.started()
        try:
            try:
                code = self._loop()
            except BaseException:
                # A lease granted in advance must not wait out its timeout
                # with a dead worker (a sync generation would stall on it).
                self._halt.set()  # ends that request's long poll and retries
                self._hand_back_asked()
                raise
            self._hand_back_asked()
            # Every finished segment is stored and reported before the worker ends.
            with self.clock.phase("ckpt_save"):
                self._publisher.wait()
            return code
        finally:
            self._asker.shutdown(wait=True)
            self._publisher.close()
            self._beats.close()
            self.clock.emit("exit")

    def _loop(self) -> int:
        while not self.stop.is_set():
            self._publisher.check()  # a failed upload or report ends the worker
            asked = time.perf_counter()
            reply = self._next_reply()
            # A request that got work is a lease round trip, but for the time
            # the coordinator held it waiting for work; a WAIT is waiting.
            phase = "rpc" if reply and reply.action == "train" else "wait"
            self.clock.add(phase, asked, held_s=reply.held_s if reply else 0.0)
            if reply is None:
                log.info("the stored state of run %s says the search has ended", self.run_name)
                return EXIT_DONE
            if reply.action == "done":
                log.info("search %s: nothing left to do", reply.search_state)
                return EXIT_DONE
            if reply.action == "wait" and self._publisher.busy:
                # Our own report may be what the coordinator waits for (the
                # generation's last): ask again as soon as it is in.
                with self.clock.phase("ckpt_save"):
                    self._publisher.wait()
                continue
            if reply.action == "wait":
                with self.clock.phase("wait"):
                    self.stop.wait(min(max(reply.retry_after_s, 0.05), MAX_WAIT_S))
                continue
            if self.stop.is_set():  # granted as SIGTERM ended the hold: hand back
                self._abandon([LeasedSegment(lease) for lease in reply.leases])
                break
            self.train(list(reply.leases))
            self.clock.emit("segment")
        return EXIT_TERMINATED

    def _next_reply(self) -> WorkReply | None:
        """The answer asked for during the last epoch, else a new request."""
        if self._asking is not None:
            asking, self._asking = self._asking, None
            reply = asking.result()
            if reply is None or reply.action != "wait":
                return reply
            # A WAIT heard before this segment ended is stale: ask again.
        return self._request_work()

    def _hand_back_asked(self) -> None:
        """Stopping: leases granted in advance go back at once (no timeout)."""
        if self._asking is not None:
            asking, self._asking = self._asking, None
            try:
                reply = asking.result()
            except CoordinatorError as err:  # nothing granted that we know of
                log.warning("lease request made in advance failed: %s", err)
                return
            if reply is not None and reply.action == "train":
                self._abandon([LeasedSegment(lease) for lease in reply.leases])

    def _request_work(self) -> WorkReply | None:
        """The coordinator's answer, or None once storage says the search
        ended; WAIT if stopped while the coordinator was unreachable (the
        loop then ends: 143)."""
        # One id for every attempt: a lease granted to an answer that was lost
        # comes back with the retry (a new id would be granted another).
        request_id = uuid.uuid4().hex
        try:
            return self._riding_out(
                lambda: self.client.request_work(
                    self.worker_id,
                    self.max_leases,
                    wait_s=WORK_WAIT_S,
                    cancel=self._halt,
                    request_id=request_id,
                )
            )
        except CoordinatorUnavailable:
            if self._halt.is_set():
                return WorkReply("wait")
            raise

    def _riding_out(self, call: Callable[[], T]) -> T | None:
        """`call()` through a coordinator restart: each client call has its
        own bounded wait; between calls the run's stored state is checked
        (None once it says the search ended), for at most
        `unavailable_wait_s` in total, and not once the worker is stopping.
        Leases, heartbeats and reports alike: a report is idempotent, and
        a finished segment's report must not be lost to a restart."""
        deadline = time.monotonic() + self.unavailable_wait_s
        while True:
            try:
                return call()
            except CoordinatorUnavailable:
                if self.run_name and search_ended(self.store, self.run_name):
                    return None
                if time.monotonic() >= deadline or self._halt.is_set():
                    raise

    # ------------------------------------------------------------ one round

    def train(self, leases: list[Lease]) -> None:
        segs: list[LeasedSegment] = []
        # Downloads can outlast the lease timeout: beat every lease meanwhile.
        loading = [self._lease_beat(LeasedSegment(lease)) for lease in leases]
        try:
            with self._beats.during(loading):
                for lease in leases:
                    segs.append(self._load(lease))
        except BaseException:
            # Storage failed this worker, not the segments: none has trained,
            # so every lease of the round goes back at once for another
            # worker, and the error ends this one (as a failed upload does).
            for seg in segs:
                if seg.session is not None:
                    self._sessions.put_back(session_key(seg.lease), seg.session)
            self._abandon([LeasedSegment(x) for x in leases], "worker cannot read storage")
            raise
        # Loading (data download, first checkpoint) can take a while: tell
        # the coordinator we are alive before the first epoch.
        self._heartbeat(segs)
        last_beat = time.monotonic()
        interval = min(seg.lease.heartbeat_interval_s for seg in segs)
        while any(seg.training for seg in segs):
            if self.stop.is_set():
                # Before any epoch (a stop while loading trains none):
                # segments still training go back; finished ones are
                # published.
                unfinished = [seg for seg in segs if seg.training]
                self._abandon(unfinished)
                for seg in unfinished:
                    seg.stopped = True
                break
            if self._asking is None and last_short_round(segs):
                # Ask for the next lease while the last epoch runs; the lease
                # then waits about one epoch for its first heartbeat.
                self._asking = self._asker.submit(self._request_work)
            for seg in segs:
                if self.stop.is_set():
                    break  # handed back above, before another lease's epoch
                if not seg.training:  # finished, failed, or stopped by a heartbeat
                    continue
                with self.clock.phase("train"):
                    self._train_epoch(seg)
                # Between any two epochs, not only after one epoch of each
                # lease: a round of N leases' epochs may outlast the timeout.
                done = not any(x.training for x in segs)
                if done or time.monotonic() - last_beat >= interval:
                    self._heartbeat(segs)
                    last_beat = time.monotonic()
        for seg in segs:
            if not seg.stopped:
                self._finish(seg)
            if seg.session is not None:
                self._sessions.put_back(session_key(seg.lease), seg.session)

    def _train_epoch(self, seg: LeasedSegment) -> None:
        assert seg.session is not None
        try:
            metrics = seg.session.train_epoch()
        except AutolfadsError as err:
            seg.failure = f"training failed: {err}"
            return
        seg.epochs.append((seg.session.epoch, {k: float(v) for k, v in metrics.items()}))
        log.debug(
            "%s gen %d epoch %d: %s",
            seg.lease.member,
            seg.lease.generation,
            seg.session.epoch,
            metrics.get("valid_recon_smth"),
        )

    def _heartbeat(self, segs: list[LeasedSegment]) -> None:
        with self.clock.phase("rpc"):
            self._heartbeat_each(segs)

    def _heartbeat_each(self, segs: list[LeasedSegment]) -> None:
        for seg in segs:
            if seg.stopped:
                continue
            beat = partial(
                self.client.heartbeat,
                seg.lease.lease_id,
                self.worker_id,
                len(seg.epochs),
                cancel=self._halt,
            )
            try:
                reply = self._riding_out(beat)
            except UnknownLease as err:
                log.warning("dropping lease: %s", err)
                seg.stopped = True
                continue
            except CoordinatorUnavailable:
                if not self.stop.is_set():
                    raise
                # Stopping in an outage: no more beats; the round ends as a
                # stop does (unfinished leases handed back, finished ones
                # published).
                return
            if reply is None:  # the stored state says the search ended
                seg.stopped = True
                continue
            if reply.action == "stop":
                log.info(
                    "lease %s of %s stopped: %s", seg.lease.lease_id, seg.lease.member, reply.reason
                )
                seg.stopped = True

    # ------------------------------------------------------------ loading

    def _load(self, lease: Lease) -> LeasedSegment:
        """The lease's segment ready to train, or marked failed when the
        run's own objects are bad (every worker would fail it the same way).
        Any other storage error (unreachable, denied, throttled) is this
        worker's and propagates: a segment failed for it would be lost to
        the search for good."""
        seg = LeasedSegment(lease)
        try:
            with self.clock.phase("data"):
                cfg = self._config(lease.config_key)
                data = self._data(lease.data_key, lease.data_sha256)
        except (ChecksumMismatch, ObjectNotFound) as err:
            seg.failure = f"cannot load the run's config or data: {err}"
            return seg
        except StorageError:
            raise
        except AutolfadsError as err:  # a config or data file that does not parse
            seg.failure = f"cannot load the run's config or data: {err}"
            return seg
        for point in (lease.start, *lease.fallbacks):
            try:
                seg.session = self._open(cfg, data, lease, point)
                return seg
            except (ChecksumMismatch, ObjectNotFound, CheckpointError) as err:
                # Never loaded silently: the next start point is tried and
                # the coordinator records the event from the report.
                log.warning("start point %s unusable (%s); falling back", point.checkpoint, err)
                seg.corrupt.append(point)
            except StorageError:
                raise
            except AutolfadsError as err:
                seg.failure = f"cannot start the segment: {err}"
                return seg
        seg.failure = "every start point failed its checksum or could not be read"
        return seg

    def _open(
        self, cfg: RunConfig, data: LfadsData, lease: Lease, point: StartPoint
    ) -> TrainingSession:
        state = None
        if not point.fresh:
            with self.clock.phase("ckpt_load"):
                blob = self.store.get_bytes(point.checkpoint, expected_sha256=point.sha256 or None)
                state = read_checkpoint(blob)
        with self.clock.phase("build"):
            # Built once per run and process; each lease moves an idle session
            # to its start point, exactly as a new one would be.
            session = self._sessions.take(session_key(lease), cfg, data)
            try:
                if state is None:
                    session.start_fresh(lease.hparams, point.seed)
                else:
                    seed = None
                    if copied(lease, point):
                        seed = exploit_generator_seed(cfg.pbt.seed, lease.member, lease.generation)
                    session.start_from(state, lease.hparams, seed)
            except BaseException:
                self._sessions.put_back(session_key(lease), session)
                raise
        return session

    def _config(self, key: str) -> RunConfig:
        if key not in self._configs:
            text = self.store.get_bytes(key).decode("utf-8")
            self._configs[key] = loads_config(text, source=key)
        return self._configs[key]

    def _data(self, key: str, sha256: str) -> LfadsData:
        if sha256 not in self._datasets:
            self._datasets[sha256] = load_cached(self._cache, key, sha256)
        return self._datasets[sha256]

    # ------------------------------------------------------------ publishing

    def _finish(self, seg: LeasedSegment) -> None:
        lease = seg.lease
        if seg.failure:
            log.error("%s generation %d failed: %s", lease.member, lease.generation, seg.failure)
            self._publisher.submit(
                lambda: self._report(seg, self._failed_report(seg)), self._lease_beat(seg)
            )
            return
        assert seg.session is not None
        # Serialised here, before the session moves on to the next lease; stored
        # and reported on the publisher's thread while this one trains on.
        with self.clock.phase("ckpt_save"):
            blob = seg.session.checkpoint()
            fitness_metric = seg.session.cfg.pbt.fitness
            metric = float(seg.session.smoothed(fitness_metric))
        self._publisher.submit(
            lambda: self._publish(seg, blob, fitness_metric, metric), self._lease_beat(seg)
        )

    def _failed_report(self, seg: LeasedSegment) -> SegmentReport:
        lease = seg.lease
        return SegmentReport(
            lease.lease_id,
            self.worker_id,
            lease.member,
            lease.generation,
            "failed",
            hparams=lease.hparams,
            epochs=tuple(seg.epochs),
            corrupt=tuple(seg.corrupt),
            message=seg.failure[:500],
        )

    def _publish(self, seg: LeasedSegment, blob: bytes, fitness_metric: str, metric: float) -> None:
        """Checkpoint, then metrics.json (the marker), then the report: in this
        order, so the report never names a checkpoint not yet stored; nothing
        once the lease is no longer ours."""
        lease = seg.lease
        if not self._still_held(seg):
            # It waited here (behind a slow upload) until its lease expired;
            # another worker may have stored and reported the unit since, at
            # the same keys: ours must not overwrite what was recorded.
            log.warning(
                "%s generation %d not stored: its lease was lost while it waited to upload",
                lease.member,
                lease.generation,
            )
            return
        try:
            info = self.store.put_bytes(lease.checkpoint_key, blob)
            assert info.sha256 is not None, "a put always records the checksum"
            self.store.put_bytes(
                lease.metrics_key,
                metrics_doc(seg, fitness_metric, metric, info.sha256),
                content_type="application/json",
            )
        except StorageError:
            # This worker's storage failed, not the segment: the lease goes
            # back at once (as when loading fails), not after its timeout as
            # an expiry of the member; the error then ends the worker.
            self._abandon([seg], "worker cannot write storage")
            raise
        self._report(
            seg,
            SegmentReport(
                lease.lease_id,
                self.worker_id,
                lease.member,
                lease.generation,
                "succeeded",
                hparams=lease.hparams,
                epochs=tuple(seg.epochs),
                fitness=metric,
                checkpoint_key=lease.checkpoint_key,
                checkpoint_sha256=info.sha256,
                checkpoint_size=len(blob),
                corrupt=tuple(seg.corrupt),
            ),
        )

    def _lease_beat(self, seg: LeasedSegment) -> Beat:
        """A heartbeat of `seg`'s lease from the helper thread (while its
        worker loads or publishes it)."""
        lease = seg.lease
        what = f"{lease.member} generation {lease.generation}"
        return Beat(
            partial(self._beat, seg), lease.heartbeat_interval_s, STORAGE_BEAT_LIMIT_S, what
        )

    def _beat(self, seg: LeasedSegment) -> bool:
        """One heartbeat attempt; False: the coordinator no longer holds the
        lease for us."""
        try:
            reply = self.client.heartbeat(
                seg.lease.lease_id, self.worker_id, len(seg.epochs), cancel=ONE_ATTEMPT
            )
        except UnknownLease:
            return False
        return reply.action == "continue"

    def _still_held(self, seg: LeasedSegment) -> bool:
        """The lease is still ours (and renewed for the upload), or the
        coordinator cannot say now (the report then rides the outage out)."""
        try:
            return self._beat(seg)
        except CoordinatorUnavailable:
            return True

    def _report(self, seg: LeasedSegment, report: SegmentReport) -> None:
        try:
            ack = self._riding_out(lambda: self.client.report(report, cancel=self._halt))
        except (StaleLease, UnknownLease, SearchFinished) as err:
            # Someone else owns the unit now (or the search ended): drop it.
            log.warning("report of %s not counted: %s", seg.lease.member, err)
            return
        except CoordinatorUnavailable as err:
            if not self.stop.is_set():
                raise
            # Stopping: the pod's grace period is shorter than an outage.
            log.warning(
                "report of %s not sent (%s); stopping, its lease will expire",
                seg.lease.member,
                err,
            )
            return
        if ack is None:
            log.warning("report of %s not sent: the search has ended", seg.lease.member)
            return
        log.info(
            "%s generation %d reported (metric %s%s)",
            seg.lease.member,
            seg.lease.generation,
            report.fitness,
            ", duplicate" if ack.duplicate else "",
        )

    def _abandon(self, segs: list[LeasedSegment], why: str = "worker stopping (SIGTERM)") -> None:
        for seg in segs:
            if seg.stopped:
                continue
            g = seg.lease
            try:
                self.client.report(
                    SegmentReport(
                        g.lease_id,
                        self.worker_id,
                        g.member,
                        g.generation,
                        "abandoned",
                        message=why,
                    ),
                    # A stopping worker tries once: its grace period is short.
                    cancel=self._halt,
                )
            except CoordinatorError as err:
                log.warning("could not hand back lease %s (%s); it will expire", g.lease_id, err)


class _Halt(threading.Event):
    """Set once the worker's `stop` is, or once `set()` is called here (its
    loop failed), without touching `stop`. `wait` waits on `stop` (a failure
    is seen at the latest when that wait ends: the client pauses at most 5 s
    between retries and looks every 0.2 s during a long poll)."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self._stop = stop
        self._failed = False

    def is_set(self) -> bool:
        return self._failed or self._stop.is_set()

    def set(self) -> None:
        self._failed = True

    def wait(self, timeout: float | None = None) -> bool:
        return self.is_set() or self._stop.wait(timeout) or self._failed


def search_ended(store: Store, run: str) -> bool:
    """True if the run's stored coordinator state records a finished,
    cancelled or failed search (unreadable or absent: False, keep waiting)."""
    try:
        state = read_state(store, run, history=False)
    except AutolfadsError:
        return False
    return state is not None and state.terminal


def default_threads() -> int:
    """CPU threads for torch: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (non-Linux)
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def configure_torch(threads: int) -> None:
    torch.set_num_threads(threads)


def install_sigterm(stop: StopEvent) -> None:
    """SIGTERM/SIGINT set `stop`; the loop abandons its leases between epochs."""
    stop_on_signals(stop)
