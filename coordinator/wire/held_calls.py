"""RequestWork as a long poll: calls with nothing to do wait on the event
loop until a lease can be granted, the search ends or the server drains.

A polling fleet costs the coordinator one call per worker per retry hint,
and a worker hears that a generation has opened only at its next poll. A
held call costs one future on the loop and is answered the moment work
exists. The service rings (`CoordinatorService.on_work`) whenever the queue
may have grown, or a worker at its lease limit gets room; one wake pass per
loop iteration then asks how many leases are grantable and wakes that many
held calls, oldest first, passing over workers at their limit, or every one
once the search has ended or the service is draining. A woken call asks
again; if another call took the work first it is held again at the back.

No wakeup is lost: a call checks for work and, finding none, joins the
waiters in the same step on the loop, and a ring always reaches the loop
after that step (`call_soon_threadsafe`), so the pass it schedules sees the
new waiter. Nor is one spent on a call its client dropped: a pass skips a
call cancelled before the pass reached it, and a call cancelled after being
woken, before it could ask, schedules another pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from autolfads.coordinator.search.errors import InvalidRequest
from autolfads.coordinator.search.service import CoordinatorService

# The longest a call is held, whatever it asks: a worker behind a proxy or
# NAT with idle timeouts still hears from the coordinator this often.
MAX_HOLD_S = 60.0
# A hold ends this long before the call's deadline, so the answer (a WAIT)
# still reaches the client in time.
DEADLINE_MARGIN_S = 1.0


def hold_budget(wait_s: float, time_remaining: float | None) -> float:
    """Seconds a call asking to wait `wait_s` may be held, given the time
    left before its deadline (None: no deadline)."""
    if not math.isfinite(wait_s) or wait_s < 0:
        raise InvalidRequest(
            f"wait_s {wait_s} must be a finite number of seconds >= 0 "
            f"(0 answers at once; at most {MAX_HOLD_S:g} s is used)"
        )
    budget = min(wait_s, MAX_HOLD_S)
    if time_remaining is not None:
        budget = min(budget, time_remaining - DEADLINE_MARGIN_S)
    return max(budget, 0.0)


class HeldCalls:
    """The RequestWork calls waiting for work, oldest first (loop thread only,
    but for `_ring`)."""

    def __init__(
        self, service: CoordinatorService, loop: asyncio.AbstractEventLoop, max_held: int
    ) -> None:
        self._service = service
        self._loop = loop
        self.max_held = max_held
        # Oldest first, with each call's worker: waking takes the oldest that
        # can take work, a timeout removes its own.
        self._waiting: dict[asyncio.Future[None], str] = {}
        self._pass_due = False
        self._unlisten = service.on_work(self._ring)

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def full(self) -> bool:
        """No room for another: the caller answers WAIT at once instead, so
        held calls cannot use up the server's concurrent-call limit."""
        return len(self._waiting) >= self.max_held

    async def hold(self, timeout_s: float, worker_id: str) -> None:
        """Wait until woken or `timeout_s` passes (the caller asks again
        either way). Call it in the same loop step as the check that found
        no work."""
        future = self._loop.create_future()
        self._waiting[future] = worker_id
        # A timer that ends the wait, not `asyncio.wait_for`: that wraps the
        # future in a second one and a task step per call, for thousands of
        # held calls at a generation's boundary.
        timer = self._loop.call_later(timeout_s, _end_wait, future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Woken, then cancelled before it could ask: the work it was
                # woken for goes to the next held call.
                self._waiting.pop(future, None)
                self._schedule()
            raise
        finally:  # woken, timed out, or the call was cancelled
            timer.cancel()
            self._waiting.pop(future, None)

    def close(self) -> None:
        self._unlisten()

    def _ring(self) -> None:
        """Any thread, maybe with the service lock held: never blocks."""
        with contextlib.suppress(RuntimeError):  # loop closed: the server stopped
            self._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        # Many rings in one loop iteration (a generation's close, a burst of
        # async reports) make one pass.
        if not self._pass_due and self._waiting:
            self._pass_due = True
            self._loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._pass_due = False
        if not self._waiting:
            return
        ready = self._service.work_ready()
        count = len(self._waiting) if ready is None else min(ready, len(self._waiting))
        woken = 0
        for future, worker_id in list(self._waiting.items()):
            if woken == count:
                break
            # A call cancelled in this loop step (its future cancelled, its
            # task not yet run) takes no work: it must not use up a wake.
            if future.done():
                del self._waiting[future]
                continue
            # Nor may a call whose worker holds all the leases it may: it
            # would be held again, and the work would wait for the next ring.
            # It stays (the report that gives it room rings).
            if ready is not None and not self._service.has_room(worker_id):
                continue
            del self._waiting[future]
            future.set_result(None)
            woken += 1


def _end_wait(future: asyncio.Future[None]) -> None:
    if not future.done():  # done: woken already, or its call was cancelled
        future.set_result(None)
