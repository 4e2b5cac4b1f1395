"""The PBT coordinator service: leases, heartbeats, reports, generations.

Transport-free: the gRPC servicer converts protobuf to the domain messages in
`messages` and calls these methods; tests may call them directly. All state is
one `SearchState` guarded by one lock; every change that matters runs inside
`_transaction`, which stages it for the group commit (`commit`): the caller
leaves the lock and is answered only once a journal entry covering its
change is written (`journal`, under `<run>/coordinator/`). Concurrent changes
share one write; a failed write or change rolls memory back to what storage
holds, so no caller is ever told of a change that is not persisted.
Callers that must not block (the gRPC servicer on its event loop) use the
`*_staged` variants, which return the change's ticket instead of waiting,
and hear of written tickets through `on_written`.

Scale (thousands of workers): WAIT replies and the expiry check use the
indexes in `dispatch` instead of scanning the population; the state stays
bounded (`SearchState.prune`), and a write carries only the records that
changed (closed generations are archived once, `journal`).

Determinism (sync mode): decisions depend only on the config, the seed and
the reported results: never on arrival order, worker count or lease ids.

Why one class of ~600 lines: every method here changes the one population
state under the one lock, inside a `_transaction` that the group commit
persists before anyone is answered; split across modules, the invariants of
that lock would be too. Everything that can live outside it does: the pure
policy (`policy`), closing generations (`generations`), the lease indexes
(`dispatch`), report checks (`report_checks`), persistence (`commit`,
`journal`, `recovery`) and the views.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from autolfads.config import RunConfig
from autolfads.coordinator.search import population as pop
from autolfads.coordinator.search.clock import Clock, SystemClock
from autolfads.coordinator.search.commit import GroupCommit, Ticket
from autolfads.coordinator.search.dispatch import Dispatch
from autolfads.coordinator.search.errors import (
    InvalidRequest,
    SearchFinished,
    StaleLease,
    UnknownLease,
)
from autolfads.coordinator.search.generations import Progress
from autolfads.coordinator.search.ids import RandomIds
from autolfads.coordinator.search.journal import DEFAULT_SNAPSHOT_EVERY, JournalWriter
from autolfads.coordinator.search.messages import (
    HeartbeatReply,
    ReportAck,
    SegmentReport,
    StatusView,
    WorkReply,
)
from autolfads.coordinator.search.recovery import Recovered, load_state
from autolfads.coordinator.search.report_checks import check_report, loaded_start
from autolfads.coordinator.search.state import (
    HistoryEntry,
    LeaseRecord,
    SearchState,
    Segment,
    SegmentResult,
    StartPoint,
    WorkerRequest,
)
from autolfads.coordinator.search.validation import (
    check_lease_id,
    check_report_shape,
    check_worker_id,
)
from autolfads.coordinator.search.views import (
    LineageCache,
    MemberViews,
    lease_view,
    status_view,
)
from autolfads.storage.base import Store
from autolfads.storage.errors import StorageError
from autolfads.storage.keys import RunLayout

log = logging.getLogger(__name__)

DEFAULT_LEASE_TIMEOUT_S = 300.0
# Per request and per worker: a worker never holds more active leases.
DEFAULT_MAX_LEASES = 16
# Workers remembered for the end-of-search linger; beyond this, the ones not
# seen for a lease timeout are forgotten (bogus worker ids cannot grow memory).
MAX_TRACKED_WORKERS = 4096
# State bounds (see SearchState.prune): ended leases kept per member (the
# current and the previous generation's), plus this many for retries; and
# the newest events kept (each generation's are also in its gen-N.json).
ENDED_LEASES_PER_MEMBER = 2
ENDED_LEASE_SLACK = 256
MAX_EVENTS = 500
# A segment whose leases expire this many times ends as failed (NaN): every
# worker that took it went silent, as when its settings run out of memory
# and the kernel kills the trainer. Without a bound a synchronous
# generation would wait for it forever; failed, the member copies a better
# one at the next exploit like any diverged member.
MAX_LEASE_EXPIRIES = 3
# A closed generation's history is archived this many generations after
# retention's window (keep_generations), when its checkpoints are settled.
ARCHIVE_SLACK = 2


def _answer_waits_for_write(reply: WorkReply) -> bool:
    """A grant's leases (or a retry's) must be on record before the reply,
    and so must the end of the search before a DONE: were that write lost,
    the search would go on without the workers (or the Katib experiment)
    told to stop."""
    return reply.action in ("train", "done")


class CoordinatorService:
    """One PBT search. Thread-safe; construct with `open_search`."""

    def __init__(
        self,
        cfg: RunConfig,
        store: Store,
        state: SearchState,
        *,
        clock: Clock | None = None,
        lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S,
        max_leases_per_request: int = DEFAULT_MAX_LEASES,
        retry_after_s: float = 1.0,
        recovered: Recovered | None = None,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        archive_lag: int | None = None,
    ) -> None:
        if lease_timeout_s <= 0 or not math.isfinite(lease_timeout_s):
            raise InvalidRequest(f"lease timeout {lease_timeout_s} s must be a positive number")
        self.cfg = cfg
        self.store = store
        self.layout = RunLayout(state.run)
        self.clock = clock or SystemClock()
        self.lease_timeout_s = float(lease_timeout_s)
        self.max_leases_per_request = max_leases_per_request
        self.retry_after_s = retry_after_s
        self._state = state
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._draining = False
        self._work_listeners: tuple[Callable[[], None], ...] = ()
        self._dispatch = Dispatch(retry_after_s, bell=self._ring_work)
        # `recovered`: what `state` was read from (None for a new search).
        writer = JournalWriter(
            self.layout,
            archive_lag=archive_lag or cfg.pbt.keep_generations + ARCHIVE_SLACK,
            snapshot_every=snapshot_every,
        )
        self._commit = GroupCommit(
            store, writer, self._lock, lambda: self._state, self._restore, recovered
        )
        self._progress = Progress(cfg, self._commit.outbox, self.layout)
        self._pruned_generation = -1
        self._status_cache: tuple[int, StatusView] | None = None
        self._lineages = LineageCache()
        self._member_views = MemberViews()
        # Which workers were seen, and which were told DONE (not persisted:
        # only used to linger after the end until workers have heard of it).
        self._last_seen: dict[str, float] = {}
        self._told_done: set[str] = set()
        self._lease_ids = RandomIds()

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open_search(
        cls, cfg: RunConfig, store: Store, data_key: str, data_sha256: str, **kwargs: Any
    ) -> CoordinatorService:
        """Resume the run's persisted state if there is one, else start a search."""
        layout = RunLayout(cfg.name)
        recovered = load_state(store, cfg.name)
        if recovered is None:
            state = SearchState(
                run=cfg.name,
                mode=cfg.pbt.mode,
                data_key=data_key,
                data_sha256=data_sha256,
                config_key=layout.config(),
                segments=pop.initial_segments(cfg),
            )
            service = cls(cfg, store, state, **kwargs)
            with service._lock, service._transaction():
                service._event("search_started", population=cfg.pbt.population)
            service.flush()
            return service
        service = cls(cfg, store, recovered.state, recovered=recovered, **kwargs)
        service._commit.start_past_predecessor()
        service._resume()
        service.flush()
        return service

    def _resume(self) -> None:
        """Give every active lease a fresh grace period (its worker may have
        waited for us) and finish any transition a crash interrupted."""
        with self._lock, self._transaction():
            deadline = self.clock.now() + self.lease_timeout_s
            for lease in self._active_leases():
                lease.deadline = deadline
            self._event("coordinator_resumed", generation=self._state.generation)
            # The histories are written after answering; a crash may have lost
            # some, or the result of a search that had ended.
            for member in self._state.history:
                self._progress.view_history(self._state, member)
            if self._state.terminal:
                self._progress.view_result(self._state)
            if self._state.mode == "sync" and not self._state.terminal:
                self._progress.advance_sync(self._state)

    def drain(self) -> None:
        """Stop granting leases (SIGTERM); running leases may still report."""
        with self._lock:
            self._draining = True
            self._changed.notify_all()
            self._ring_work()
        self.flush()
        self._commit.flush_views()
        log.info("state written %d times for %d changes", self._commit.writes, self._commit.changes)

    def release_leases(self, message: str) -> int:
        """Requeue every active lease now, without a grace period.

        Only for a caller that knows every worker holding one has stopped
        (`autolfads run` after ending its own trainers): a resumed search then
        hands those members out at once instead of waiting for the leases to
        expire. Returns how many leases were released.
        """
        with self._lock:
            leases = [] if self._state.terminal else self._active_leases()
            if leases:
                with self._transaction():
                    for lease in leases:
                        self._requeue(
                            self._state.segments[lease.member], lease, "abandoned", message
                        )
        self.flush()
        return len(leases)

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def terminal(self) -> bool:
        with self._lock:
            return self._state.terminal

    @property
    def exit_status(self) -> str:
        with self._lock:
            return self._state.status

    def workers_not_told_done(self, window_s: float) -> set[str]:
        """Workers seen in the last `window_s` s that have not yet heard DONE."""
        with self._lock:
            now = self.clock.now()
            recent = {w for w, t in self._last_seen.items() if now - t <= window_s}
            # After a restart, workers holding leases from before it count
            # too (they may still be backing off); ones whose leases expired
            # or were handed back are gone.
            recent |= {
                x.worker_id
                for x in self._state.leases.values()
                if now - x.granted_at <= window_s and x.status in ("active", "accepted", "revoked")
            }
            return recent - self._told_done

    def snapshot(self) -> SearchState:
        with self._lock:
            return copy.deepcopy(self._state)

    # ------------------------------------------------------------ protocol

    def request_work(self, worker_id: str, max_leases: int, request_id: str = "") -> WorkReply:
        reply, ticket = self.request_work_staged(worker_id, max_leases, request_id)
        if ticket is not None:
            self._commit.wait(ticket)
        return reply

    def request_work_staged(
        self, worker_id: str, max_leases: int, request_id: str = ""
    ) -> tuple[WorkReply, Ticket | None]:
        """`request_work` without the wait: the reply, and the ticket that
        must be written before it is given (None when nothing has to be)."""
        check_worker_id(worker_id)
        if not 1 <= max_leases <= self.max_leases_per_request:
            raise InvalidRequest(
                f"max_leases {max_leases} must be between 1 and {self.max_leases_per_request}"
            )
        if len(request_id) > 128:
            raise InvalidRequest("request_id is longer than 128 characters")
        with self._lock:
            reply = self._request_work(worker_id, max_leases, request_id)
            ticket = self._commit.latest
        return reply, (ticket if _answer_waits_for_write(reply) else None)

    def _request_work(self, worker_id: str, max_leases: int, request_id: str) -> WorkReply:
        self._seen(worker_id)
        self._sweep()
        state = self._state
        if state.terminal:
            self._told_done.add(worker_id)
            return WorkReply("done", search_state=state.status)
        previous = state.requests.get(worker_id)
        if request_id and previous is not None and previous.request_id == request_id:
            replayed = self._replay(previous)
            if replayed is not None:
                return replayed
            # None of its leases is live any more (a retry whose first
            # answer was lost, after those leases expired): answered afresh.
        allowed = 0
        if not self._draining and self._dispatch.has_queued(state):
            held = self._dispatch.held(state, worker_id)
            allowed = min(max_leases, self.max_leases_per_request - held)
        if allowed < 1:
            return self._wait_reply(worker_id)
        queued = self._dispatch.queued(state, allowed)
        with self._transaction(reindex=False):
            leases = [self._grant(seg, worker_id) for seg in queued]
            state.requests[worker_id] = WorkerRequest(request_id, [x.lease_id for x in leases])
        self._dispatch.granted(leases)
        return WorkReply(
            "train",
            tuple(lease_view(self._state, x, self.layout, self.lease_timeout_s) for x in leases),
        )

    def request_exactly(self, worker_id: str, count: int, request_id: str) -> WorkReply | None:
        """All or nothing: `count` leases, or None (nothing changed) while fewer
        are queued; DONE once the search has ended.

        For a scheduler that must be answered with exactly `count` units and
        cannot be told to wait (Katib). A retry with the same `request_id`
        gets the first answer's leases back.
        """
        check_worker_id(worker_id)
        if not 1 <= count <= self.max_leases_per_request:
            raise InvalidRequest(
                f"{count} leases requested; must be between 1 and {self.max_leases_per_request}"
            )
        with self._lock:
            self._sweep()
            state = self._state
            previous = state.requests.get(worker_id)
            replay = previous is not None and previous.request_id == request_id
            queued = 0 if self._draining else self._dispatch.queued_count(state)
            if not state.terminal and not replay and queued < count:
                return None
            reply = self._request_work(worker_id, count, request_id)
            ticket = self._commit.latest
        if _answer_waits_for_write(reply):
            self._commit.wait(ticket)
        return reply

    def unit_status(self, member: str, generation: int) -> tuple[str, str]:
        """Where (member, generation) stands: ("leased", lease id), ("done", "")
        once reported or passed, ("unknown", "") if never handed out."""
        with self._lock:
            segment = self._state.segments.get(member)
            if segment is None or generation > segment.generation:
                return "unknown", ""
            if generation < segment.generation or segment.phase in ("reported", "finished"):
                return "done", ""
            if segment.phase == "leased":
                return "leased", segment.lease_id
            return "unknown", ""

    def _wait_reply(self, worker_id: str) -> WorkReply:
        return WorkReply(
            "wait", retry_after_s=self._dispatch.retry_after(worker_id, self.clock.now())
        )

    def heartbeat(self, lease_id: str, worker_id: str, epochs_done: int = 0) -> HeartbeatReply:
        check_worker_id(worker_id)
        check_lease_id(lease_id)
        with self._lock:
            self._seen(worker_id)
            self._sweep()
            lease = self._lease_of(lease_id, worker_id)
            if lease.status == "active":
                lease.deadline = self.clock.now() + self.lease_timeout_s
                return HeartbeatReply("continue", deadline=lease.deadline)
            return HeartbeatReply("stop", self._stop_reason(lease), lease.deadline)  # type: ignore[arg-type]

    def report(self, report: SegmentReport) -> ReportAck:
        ack, ticket = self.report_staged(report)
        self._commit.wait(ticket)
        return ack

    def report_staged(self, report: SegmentReport) -> tuple[ReportAck, Ticket]:
        """`report` without the wait: the ack, and the ticket that must be
        written before it is given."""
        check_worker_id(report.worker_id)
        check_report_shape(report)
        with self._lock:
            ack = self._report(report)
            state = self._state
            held = self._dispatch.held(state, report.worker_id)
            if held == self.max_leases_per_request - 1 and self._dispatch.has_queued(state):
                # Its worker was at the limit, so a pass may have left its
                # held RequestWork waiting (`has_room`); now it has room.
                self._ring_work()
            # A duplicate waits too: the first copy's change may not be written yet.
            return ack, self._commit.latest

    def on_written(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` (from any thread, never blocking) whenever staged
        changes are written or lost: for callers that wait without a thread.
        Returns the function that stops it."""
        return self._commit.on_settled(listener)

    def on_work(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` (from any thread, maybe with the lock held; it
        must not block) whenever leases may have become grantable, the search
        may have ended, or the service started draining: for RequestWork
        calls held until there is work (`work_ready` says how many).
        Returns the function that stops it."""
        with self._lock:
            self._work_listeners += (listener,)

        def stop() -> None:
            with self._lock:
                self._work_listeners = tuple(x for x in self._work_listeners if x != listener)

        return stop

    def work_ready(self) -> int | None:
        """How many leases could be granted now (the queued segments), or
        None when every held request should be answered now: the search has
        ended or the service is draining."""
        with self._lock:
            if self._state.terminal or self._draining:
                return None
            return self._dispatch.queued_count(self._state)

    def has_room(self, worker_id: str) -> bool:
        """Whether `worker_id` holds fewer leases than one request may: a
        held RequestWork woken for queued work must be one that can take it
        (a worker asking for its next lease while at the limit cannot)."""
        with self._lock:
            return self._dispatch.held(self._state, worker_id) < self.max_leases_per_request

    def _ring_work(self) -> None:
        for listener in self._work_listeners:
            listener()

    def _report(self, report: SegmentReport) -> ReportAck:
        self._seen(report.worker_id)
        self._sweep()
        state = self._state
        lease = self._lease_of(report.lease_id, report.worker_id)
        if (lease.member, lease.generation) != (report.member, report.generation):
            raise InvalidRequest(
                f"lease {lease.lease_id} is for member {lease.member} generation "
                f"{lease.generation}, not member {report.member} generation {report.generation}"
            )
        if lease.status == "accepted" or (
            lease.status == "abandoned" and report.outcome == "abandoned"
        ):
            return ReportAck(accepted=True, duplicate=True)
        if state.terminal:
            raise SearchFinished(
                f"the search is {state.status}; report of {lease.lease_id} ignored"
            )
        if lease.status != "active":
            raise StaleLease(
                f"lease {lease.lease_id} ({lease.member}, generation {lease.generation}) "
                f"is {lease.status}; its work was handed to another worker"
            )
        segment = state.segments[lease.member]
        assert segment.lease_id == lease.lease_id, "active lease not on its segment"
        if report.outcome == "abandoned":
            with self._transaction():
                self._requeue(segment, lease, "abandoned", report.message)
            # Workers hand leases back only when they stop: do not linger
            # at the end of the search waiting to tell this one DONE.
            self._last_seen.pop(report.worker_id, None)
            self._dispatch.forget_idle(report.worker_id)
            return ReportAck(accepted=True)
        check_report(report, segment, self.layout)
        self._settle(report, segment, lease)
        return ReportAck(accepted=True)

    def _settle(
        self,
        report: SegmentReport,
        segment: Segment,
        lease: LeaseRecord,
        lease_status: str = "accepted",
    ) -> None:
        """Record `report` as the segment's result (lock held)."""
        state = self._state
        generation = state.generation
        with self._transaction(reindex=False):
            self._accept(report, segment, lease)
            lease.status = lease_status  # type: ignore[assignment]
        if state.terminal:
            self._dispatch.invalidate()
        elif state.mode == "async":
            # An async report queues at most the member's next segment.
            self._dispatch.ended(lease)
            self._dispatch.enqueued(state, state.segments[lease.member])
        elif state.generation == generation:
            # Within a sync generation a report queues nothing: keep the queue.
            self._dispatch.ended(lease)
        else:
            self._dispatch.invalidate()

    def status(self) -> StatusView:
        """The current view, including changes not written yet (in-process
        displays); a remote reader gets `status_staged`'s, once written."""
        return self.status_staged()[0]

    def status_staged(self) -> tuple[StatusView, Ticket]:
        """The current view, and the ticket of the newest change it shows:
        answer with it only once that ticket is written, so that no reader
        sees a state (an ended search above all) that a crash could undo."""
        with self._lock:
            self._sweep()
            # Status polls are frequent and a view of 1024 members is not
            # cheap: build it once per revision.
            revision = self._state.revision
            if self._status_cache is None or self._status_cache[0] != revision:
                self._status_cache = (
                    revision,
                    status_view(
                        self._state,
                        self.cfg.pbt.max_generations,
                        self._lineages,
                        self._member_views,
                    ),
                )
            return self._status_cache[1], self._commit.latest

    def wait_for_change(self, revision: int, timeout_s: float) -> int:
        """Block until the state revision exceeds `revision` (or timeout/drain)."""
        with self._lock:
            self._changed.wait_for(
                lambda: self._state.revision > revision or self._state.terminal or self._draining,
                timeout=timeout_s,
            )
            return self._state.revision

    def cancel(self, reason: str = "") -> str:
        with self._lock:
            if not self._state.terminal:
                with self._transaction():
                    self._progress.finish(
                        self._state, "cancelled", reason.strip()[:500] or "cancelled by an operator"
                    )
            status = self._state.status
        self.flush()
        return status

    def tick(self) -> None:
        """Expire overdue leases and write any change nobody waits for, then
        views left pending (the server calls this every second).

        A write that fails here is logged, not raised: it was rolled back,
        the callers that waited for it got its error and retry, and the
        next tick expires the same leases again. One failed write (a
        storage hiccup) must not stop the server that calls this."""
        with self._lock:
            self._sweep()
        try:
            self.flush()
        except StorageError as err:
            log.warning("coordinator state not saved this tick (retried at the next): %s", err)
            return
        self._commit.write_views()

    # ------------------------------------------------------------ internals

    @contextmanager
    def _transaction(self, reindex: bool = True) -> Iterator[None]:
        """Apply a change in memory and stage it for the next group commit.

        The caller holds the lock and, once it has left it, waits for
        `self._commit.latest` before answering. If the change fails half-way,
        the state is rebuilt from the last encoded write (changes staged
        since then are lost and their callers get an error). `reindex=False`:
        the caller updates the dispatch indexes itself.
        """
        try:
            yield
        except BaseException as err:
            self._commit.abort(err)
            raise
        self._state.revision += 1
        self._bound_state()
        if reindex:
            self._dispatch.invalidate()
        self._commit.stage(self._state.revision)
        self._changed.notify_all()

    def flush(self) -> None:
        """Wait until every staged change is written (lock not held)."""
        with self._lock:
            ticket = self._commit.latest
        self._commit.wait(ticket)

    def _restore(self, state: SearchState) -> None:
        """Replace the in-memory state by a written one (rollback, lock held).

        Leases live again keep their deadlines: heartbeats move them in memory
        only (nothing is written for them), so the written ones can be as old
        as the grants, and putting those back would expire every healthy
        lease (and refuse the retry of the report whose write failed)."""
        revision = self._state.revision
        # Whatever their status now: a lost report had ended its own lease.
        beaten = {x.lease_id: x.deadline for x in self._state.leases.values()}
        self._state = state
        for lease in state.leases.values():
            if lease.status == "active" and lease.lease_id in beaten:
                lease.deadline = max(lease.deadline, beaten[lease.lease_id])
        # Watchers wait for revisions to grow: never hand them an older number.
        self._state.revision = max(revision, self._state.revision)
        self._dispatch.reset()
        self._status_cache = None
        self._lineages.clear()
        self._member_views.clear()
        self._changed.notify_all()

    def _bound_state(self) -> None:
        """Prune the state at each new generation, or when ended leases or
        events pile up within one (amortised: pruning frees slack first)."""
        state = self._state
        max_ended = ENDED_LEASES_PER_MEMBER * len(state.segments) + ENDED_LEASE_SLACK
        if (
            state.generation != self._pruned_generation
            or len(state.leases) > len(state.segments) + max_ended + ENDED_LEASE_SLACK
            or len(state.events) > MAX_EVENTS + ENDED_LEASE_SLACK
        ):
            state.prune(state.generation - 1, max_ended, MAX_EVENTS)
            self._pruned_generation = state.generation

    def _event(self, kind: str, **fields: Any) -> None:
        self._state.events.append({"time": self.clock.now(), "kind": kind, **fields})
        log.info("%s %s", kind, fields)

    def _seen(self, worker_id: str) -> None:
        now = self.clock.now()
        self._last_seen[worker_id] = now
        if len(self._last_seen) <= MAX_TRACKED_WORKERS:
            return
        forget = [w for w, t in self._last_seen.items() if now - t > self.lease_timeout_s]
        if len(self._last_seen) - len(forget) > MAX_TRACKED_WORKERS:
            # A flood of fresh ids: keep the newest half.
            by_age = sorted(self._last_seen, key=self._last_seen.__getitem__)
            forget = by_age[: len(by_age) - MAX_TRACKED_WORKERS // 2]
        for name in forget:
            del self._last_seen[name]
            self._told_done.discard(name)

    def _active_leases(self) -> list[LeaseRecord]:
        return [x for x in self._state.leases.values() if x.status == "active"]

    def _sweep(self) -> None:
        """Expire overdue leases (staged; written with the next commit); a
        segment that reaches `MAX_LEASE_EXPIRIES` ends as failed."""
        overdue = self._dispatch.overdue(self._state, self.clock.now())
        if not overdue:
            return
        given_up: list[LeaseRecord] = []
        with self._transaction():
            for lease in overdue:
                segment = self._state.segments[lease.member]
                segment.expired += 1
                if segment.expired >= MAX_LEASE_EXPIRIES:
                    given_up.append(lease)
                else:
                    self._requeue(segment, lease, "expired", "")
        for lease in given_up:
            if self._state.terminal or lease.status != "active":
                continue  # settling an earlier one ended the search (and revoked this)
            segment = self._state.segments[lease.member]
            message = (
                f"its lease expired {segment.expired} times: every worker that took it "
                "went silent (killed, out of memory?)"
            )
            failed = SegmentReport(
                lease.lease_id,
                lease.worker_id,
                lease.member,
                lease.generation,
                "failed",
                hparams=dict(segment.hparams),
                message=message,
            )
            self._settle(failed, segment, lease, lease_status="expired")

    def _requeue(self, segment: Segment, lease: LeaseRecord, status: str, message: str) -> None:
        """The unit goes back to the queue; it restarts from the same start point."""
        lease.status = status  # type: ignore[assignment]
        segment.phase = "queued"
        segment.lease_id = ""
        self._event(
            f"lease_{status}",
            lease_id=lease.lease_id,
            member=lease.member,
            generation=lease.generation,
            worker_id=lease.worker_id,
            **({"message": message[:300]} if message else {}),
        )

    def _grant(self, segment: Segment, worker_id: str) -> LeaseRecord:
        now = self.clock.now()
        lease = LeaseRecord(
            lease_id=self._lease_ids.next(),
            member=segment.member,
            generation=segment.generation,
            worker_id=worker_id,
            granted_at=now,
            deadline=now + self.lease_timeout_s,
        )
        self._state.leases[lease.lease_id] = lease
        segment.phase = "leased"
        segment.lease_id = lease.lease_id
        segment.attempts += 1
        return lease

    def _replay(self, previous: WorkerRequest) -> WorkReply | None:
        """The first answer again, if any of its leases is still live."""
        leases = [self._state.leases[i] for i in previous.lease_ids if i in self._state.leases]
        live = tuple(
            lease_view(self._state, x, self.layout, self.lease_timeout_s)
            for x in leases
            if x.status == "active"
        )
        return WorkReply("train", live) if live else None

    def _lease_of(self, lease_id: str, worker_id: str) -> LeaseRecord:
        lease = self._state.leases.get(lease_id)
        if lease is None:
            raise UnknownLease(
                f"unknown lease {lease_id[:64]!r}: never granted by this search, "
                "or it ended generations ago"
            )
        if lease.worker_id != worker_id:
            raise InvalidRequest(
                f"lease {lease_id} belongs to worker {lease.worker_id!r}, not {worker_id!r}"
            )
        return lease

    def _stop_reason(self, lease: LeaseRecord) -> str:
        if self._state.status == "cancelled":
            return "search_cancelled"
        if self._state.terminal:
            return "search_finished"
        return "lease_expired" if lease.status == "expired" else "lease_revoked"

    def _accept(self, report: SegmentReport, segment: Segment, lease: LeaseRecord) -> None:
        state = self._state
        succeeded = report.outcome == "succeeded"
        started = loaded_start(segment, report)
        lease.status = "accepted"
        for point in report.corrupt:
            self._event(
                "checkpoint_checksum_failed",
                member=segment.member,
                generation=segment.generation,
                checkpoint=point.checkpoint,
                fell_back_to=started.checkpoint if started else None,
            )
        segment.phase = "reported"
        segment.lease_id = ""
        # Any non-finite metric means diverged: stored as NaN, so -inf never ranks first.
        finite = succeeded and math.isfinite(report.fitness)
        segment.result = SegmentResult(
            metric=report.fitness if finite else math.nan,
            checkpoint=report.checkpoint_key if succeeded else "",
            sha256=report.checkpoint_sha256 if succeeded else "",
            size=report.checkpoint_size,
            lease_id=lease.lease_id,
            worker_id=lease.worker_id,
            outcome="succeeded" if succeeded else "failed",
            start_checkpoint=started.checkpoint if started else "",
        )
        if not succeeded:
            self._event(
                "segment_failed",
                member=segment.member,
                generation=segment.generation,
                message=report.message[:300],
            )
        start = started or StartPoint()
        state.history.append(
            segment.member,
            HistoryEntry(
                generation=segment.generation,
                member=segment.member,
                parent=start.member if start.checkpoint else segment.member,
                start_checkpoint=start.checkpoint,
                start_generation=start.generation,
                hparams=dict(segment.hparams),
                metric=segment.result.metric,
                checkpoint=segment.result.checkpoint,
                sha256=segment.result.sha256,
                exploited=segment.exploited,
            ),
        )
        if state.mode == "sync":
            self._progress.advance_sync(state)
        else:
            self._progress.advance_async(state, segment.member)
