"""Indexes that keep RequestWork cheap with thousands of workers polling.

Derived from the state, never persisted, rebuilt whenever in doubt:

- the queued segments in grant order (generation, member), so a WAIT is
  answered without scanning the population;
- active leases per worker (the per-worker lease cap);
- a lower bound on the next lease deadline, so the expiry sweep run on every
  call costs a comparison until a lease can actually be overdue (heartbeats
  only push deadlines later, so the bound stays valid until it passes);
- the workers told to WAIT recently, to scale the retry hint: with more idle
  workers than the server should answer per second, each is asked to wait
  longer, keeping the WAIT traffic near `WAIT_CALLS_PER_S` in total.

Whenever the queue may have grown (it was dropped for a rebuild, or a
segment was inserted) the dispatch rings its `bell`, so RequestWork calls
held for work (long polls) are woken without polling.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable

from autolfads.coordinator.search.state import LeaseRecord, SearchState, Segment

# Target rate of WAIT replies across all idle workers, and the longest hint.
WAIT_CALLS_PER_S = 200.0
MAX_RETRY_AFTER_S = 10.0
# The retry hint is recomputed (and forgotten waiters dropped) this often,
# and sooner, without the drop, once the idle workers outgrow what the hint
# spreads by this factor.
HINT_REFRESH_S = 1.0
CROWD_GROWTH = 1.25


class Dispatch:
    def __init__(self, base_retry_after_s: float, bell: Callable[[], None] = lambda: None) -> None:
        self.base_retry_after_s = base_retry_after_s
        self._bell = bell  # called with the service lock held: must not block
        self._queue: list[str] | None = None  # None: rebuild from the state
        self._held: Counter[str] | None = None
        self._next_expiry = -math.inf
        self._idle: dict[str, float] = {}  # worker -> time of its last WAIT
        self._hint = base_retry_after_s
        self._hint_at = -math.inf

    def invalidate(self) -> None:
        """Segments or leases changed: rebuild the queue and lease counts.

        (The expiry bound survives: a change can end leases or postpone
        deadlines, never bring one forward.)"""
        self._queue = None
        self._held = None
        self._bell()

    def reset(self) -> None:
        """The state was replaced (resume, rollback): rebuild everything."""
        self.invalidate()
        self._next_expiry = -math.inf

    def queued(self, state: SearchState, limit: int | None = None) -> list[Segment]:
        """The first `limit` (default all) queued segments, oldest generation
        first, then by member. (A grant asks for a few of up to a whole
        population: slice before looking them up.)"""
        if self._queue is None:
            self._rebuild(state)
        assert self._queue is not None
        members = self._queue if limit is None else self._queue[:limit]
        return [state.segments[m] for m in members]

    def queued_count(self, state: SearchState) -> int:
        if self._queue is None:
            self._rebuild(state)
        assert self._queue is not None
        return len(self._queue)

    def has_queued(self, state: SearchState) -> bool:
        if self._queue is None:
            self._rebuild(state)
        return bool(self._queue)

    def held(self, state: SearchState, worker_id: str) -> int:
        """Active leases of `worker_id`."""
        if self._held is None:
            active = (x for x in state.leases.values() if x.status == "active")
            self._held = Counter(x.worker_id for x in active)
        return self._held[worker_id]

    def granted(self, leases: list[LeaseRecord]) -> None:
        """The first len(leases) queued segments were just leased."""
        assert self._queue is not None and self._held is not None, "grant on stale indexes"
        del self._queue[: len(leases)]
        for lease in leases:
            self._held[lease.worker_id] += 1
            self._next_expiry = min(self._next_expiry, lease.deadline)
            self._idle.pop(lease.worker_id, None)

    def enqueued(self, state: SearchState, segment: Segment) -> None:
        """`segment` may just have been queued (nothing else changed): keep
        the queue in grant order instead of rebuilding it."""
        if self._queue is not None and segment.phase == "queued":
            order = (segment.generation, segment.member)
            at = bisect.bisect(self._queue, order, key=lambda m: (state.segments[m].generation, m))
            self._queue.insert(at, segment.member)
            self._bell()

    def ended(self, lease: LeaseRecord) -> None:
        """`lease` was active and has ended; the queue is unchanged."""
        if self._held is not None:
            self._held[lease.worker_id] -= 1

    def overdue(self, state: SearchState, now: float) -> list[LeaseRecord]:
        """Active leases past their deadline (a comparison while none can be)."""
        if now <= self._next_expiry:
            return []
        active = [x for x in state.leases.values() if x.status == "active"]
        late = [x for x in active if x.deadline < now]
        self._next_expiry = min((x.deadline for x in active if x.deadline >= now), default=math.inf)
        return late

    def retry_after(self, worker_id: str, now: float) -> float:
        """The WAIT hint for `worker_id`: the base hint, longer when many wait."""
        self._idle[worker_id] = now
        if now - self._hint_at >= HINT_REFRESH_S or now < self._hint_at:
            # A waiting worker calls again within 1.5 hints (jitter included).
            horizon = now - 1.5 * self._hint - HINT_REFRESH_S
            self._idle = {w: t for w, t in self._idle.items() if t >= horizon}
            self._hint = self._spread()
            self._hint_at = now
        elif len(self._idle) > CROWD_GROWTH * self._hint * WAIT_CALLS_PER_S:
            # A crowd arriving at once (a fleet started together) must not
            # all hear the short hint computed before it came, or it comes
            # back at once too: lengthen the hint as the crowd grows.
            self._hint = self._spread()
        return self._hint

    def _spread(self) -> float:
        spread = len(self._idle) / WAIT_CALLS_PER_S
        return max(self.base_retry_after_s, min(MAX_RETRY_AFTER_S, spread))

    def forget_idle(self, worker_id: str) -> None:
        self._idle.pop(worker_id, None)

    def _rebuild(self, state: SearchState) -> None:
        queued = [s for s in state.segments.values() if s.phase == "queued"]
        queued.sort(key=lambda s: (s.generation, s.member))
        self._queue = [s.member for s in queued]
