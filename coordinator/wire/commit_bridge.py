"""Group commits awaited on the event loop: `await bridge.written(ticket)`
returns once the ticket's change is written (and raises if it was lost).

The service applies a change in memory on the loop's thread and stages it
(`CoordinatorService.report_staged` and friends); storage must not block
the loop, so `COMMIT_THREADS` threads lead the writes (`service.flush`),
woken at the end of each turn of the loop in which a call started to wait.
Whichever thread finishes a write (one of these, or the server's tick)
tells the loop through the service's `on_written` listener, and the loop
settles every call the write covered.
Under load one write answers many calls, and a call costs one future, not
a thread handoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from autolfads.coordinator.search.commit import Ticket
from autolfads.coordinator.search.service import CoordinatorService

# Two, so that a write can start while the other thread is still busy with
# the previous batch's snapshot or member histories (written after its
# callers are answered).
COMMIT_THREADS = 2


class CommitBridge:
    def __init__(self, service: CoordinatorService, loop: asyncio.AbstractEventLoop) -> None:
        self._service = service
        self._loop = loop
        self._waiting: list[tuple[Ticket, asyncio.Future[None]]] = []
        self._kick = threading.Event()
        self._kick_due = False
        self._closed = False
        self._unlisten = service.on_written(self._notify)
        self._threads = [
            threading.Thread(target=self._run, name=f"coordinator-commit-{i}", daemon=True)
            for i in range(COMMIT_THREADS)
        ]
        for thread in self._threads:
            thread.start()

    async def written(self, ticket: Ticket) -> None:
        """Loop thread: wait for `ticket`'s write; re-raise its error if lost."""
        if not ticket.settled:
            future = self._loop.create_future()
            self._waiting.append((ticket, future))
            # The commit threads are woken once this turn of the loop is over:
            # the calls that run in the same turn (every held call woken at a
            # generation's boundary) stage their changes first, and one write
            # takes them all, instead of the threads taking the lock between
            # them.
            if not self._kick_due:
                self._kick_due = True
                self._loop.call_soon(self._kick_threads)
            await future
        if ticket.error is not None:
            raise ticket.error

    def _kick_threads(self) -> None:
        self._kick_due = False
        if not self._kick.is_set():  # set() takes a lock and notifies each time
            self._kick.set()

    def close(self) -> None:
        """Stop the commit threads (once the server takes no more calls)."""
        self._unlisten()
        self._closed = True
        self._kick.set()
        for thread in self._threads:
            thread.join()

    def _notify(self) -> None:
        """Any thread, maybe with the service lock held: never blocks."""
        with contextlib.suppress(RuntimeError):  # loop closed: the server stopped
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        """Loop thread: answer the calls whose tickets are settled."""
        waiting = []
        for ticket, future in self._waiting:
            if not ticket.settled:
                waiting.append((ticket, future))
            elif not future.done():  # done: the call was cancelled meanwhile
                future.set_result(None)
        self._waiting = waiting

    def _run(self) -> None:
        while True:
            self._kick.wait()
            if self._closed:
                return
            self._kick.clear()
            with contextlib.suppress(Exception):  # a lost ticket carries its error
                self._service.flush()
            # A ticket may have settled after its call checked it and before
            # the call's future was listed: settle again.
            self._notify()
