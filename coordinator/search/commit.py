"""Group commit of the coordinator state: many changes, one write, and no
caller answered before a write that covers its change.

A change is applied in memory under the service lock and staged with a
`Ticket` (its state revision). The caller then leaves the lock and calls
`wait(ticket)`: if no write is in flight it becomes the *leader*: it encodes
the state as it is now (covering its own change and every change staged
since the last write), releases the lock, writes the documents the changes
asked for (`Outbox`: generation records, member histories; before the state,
since they are pure functions of it and a resumed coordinator does not
rewrite them), then `state.json`, then deletes retired checkpoints (after the
state that stops naming them, so a crash leaves an extra object, never a
missing one). Callers arriving meanwhile wait for that write and the next
leader takes everything they staged. Under load one write covers many
changes; with one caller it is a plain synchronous write.

If a write fails, the state is rebuilt from the last written bytes and every
change not covered by a finished write is lost: its caller gets an error and
retries, so memory and storage never disagree about what was acknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from autolfads.storage.base import Store
from autolfads.storage.errors import StorageError

log = logging.getLogger(__name__)

# Side documents of one batch are written by this many threads (a closing
# generation of 1024 members rewrites 1024 history files; local writes
# fsync, S3 writes are round trips, so they overlap well).
WRITE_THREADS = 8


@dataclass
class Ticket:
    """One staged change; settled when a write covered it or it was lost."""

    revision: int
    done: bool = False
    error: BaseException | None = None

    @property
    def settled(self) -> bool:
        return self.done or self.error is not None


@dataclass
class Outbox:
    """What staged changes must write besides the state.

    `put` takes a renderer, evaluated when the batch is encoded (under the
    lock, from the state as of the write), so a document touched by many
    changes in one batch is rendered and written once.
    """

    puts: dict[str, Callable[[], bytes]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)

    def put(self, key: str, render: Callable[[], bytes]) -> None:
        self.puts[key] = render

    def delete(self, key: str) -> None:
        self.deletes.append(key)

    def clear(self) -> None:
        self.puts.clear()
        self.deletes.clear()


@dataclass
class _Batch:
    revision: int
    state: bytes
    docs: list[tuple[str, bytes]]
    deletes: list[str]


class GroupCommit:
    """Persists `encode()` to `key` in group commits (see the module doc).

    `lock` is the service lock (an RLock) guarding the state; `encode`
    returns the current state's JSON bytes; `restore(data)` rebuilds the
    in-memory state from bytes written earlier. `persisted` is what the key
    holds now (None for a new search).
    """

    def __init__(
        self,
        store: Store,
        key: str,
        lock: threading.RLock,
        encode: Callable[[], bytes],
        restore: Callable[[bytes], None],
        persisted: bytes | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.outbox = Outbox()
        self._cond = threading.Condition(lock)
        self._encode = encode
        self._restore = restore
        self._pending: list[Ticket] = []
        self._writing = False
        self._persisted = persisted  # bytes of the last finished write
        self._encoded = persisted  # bytes of the last batch taken (maybe in flight)
        self._latest = Ticket(-1, done=True)
        self._batch_revision = -1  # revision of the batch being written
        self.writes = 0  # state writes so far
        self.changes = 0  # changes staged so far (changes / writes = batching)

    @property
    def latest(self) -> Ticket:
        """The newest staged change's ticket (settled if nothing is pending)."""
        return self._latest

    def stage(self, revision: int) -> Ticket:
        """Record a change applied in memory (lock held)."""
        ticket = Ticket(revision)
        self.changes += 1
        self._pending.append(ticket)
        self._latest = ticket
        return ticket

    def abort(self, error: BaseException) -> None:
        """A change failed half-way (lock held): rebuild the state from the
        last encoded batch and lose every change staged after it."""
        self.outbox.clear()
        if self._encoded is not None:
            self._restore(self._encoded)
        self._fail(lambda t: not self._writing or t.revision > self._batch_revision, error)

    def wait(self, ticket: Ticket) -> None:
        """Return once `ticket`'s change is written; raise if it was lost.

        Call without holding the lock (the leader writes outside it)."""
        while True:
            with self._cond:
                while self._writing and not ticket.settled:
                    self._cond.wait()
                if ticket.settled:
                    break
                batch = self._take()  # this caller leads the next write
            error = self._write(batch)
            with self._cond:
                self._finish(batch, error)
        if ticket.error is not None:
            raise ticket.error

    # ------------------------------------------------------------ internals

    def _take(self) -> _Batch:
        """Lock held: everything staged so far becomes the next write."""
        docs = [(key, render()) for key, render in self.outbox.puts.items()]
        batch = _Batch(self._pending[-1].revision, self._encode(), docs, list(self.outbox.deletes))
        self.outbox.clear()
        self._writing = True
        self._batch_revision = batch.revision
        self._encoded = batch.state
        return batch

    def _write(self, batch: _Batch) -> BaseException | None:
        try:
            _put_all(self.store, batch.docs)
            self.store.put_bytes(self.key, batch.state, content_type="application/json")
        except BaseException as err:  # handed to every caller of the batch
            return err
        for key in batch.deletes:
            try:
                self.store.delete(key)
            except StorageError as err:
                log.warning("checkpoint GC: %s", err)
        return None

    def _finish(self, batch: _Batch, error: BaseException | None) -> None:
        self._writing = False
        if error is None:
            self.writes += 1
            self._persisted = batch.state
            for t in self._pending:
                if t.revision <= batch.revision:
                    t.done = True
            self._pending = [t for t in self._pending if not t.done]
        else:
            log.error("coordinator state not saved, changes rolled back: %s", error)
            self.outbox.clear()
            self._encoded = self._persisted
            if self._persisted is not None:
                self._restore(self._persisted)
            self._fail(lambda t: True, error)
        self._cond.notify_all()

    def _fail(self, lost: Callable[[Ticket], bool], error: BaseException) -> None:
        for t in self._pending:
            if lost(t):
                t.error = _lost(error)
        self._pending = [t for t in self._pending if t.error is None]
        self._cond.notify_all()


def _lost(error: BaseException) -> BaseException:
    """What a caller whose change was rolled back gets: transient, retry."""
    return StorageError(f"the coordinator state was not saved ({error}); retry the request")


def _put_all(store: Store, docs: list[tuple[str, bytes]]) -> None:
    def put(doc: tuple[str, bytes]) -> None:
        key, data = doc
        content_type = "application/json" if key.endswith(".json") else "application/x-ndjson"
        store.put_bytes(key, data, content_type=content_type)

    if len(docs) <= 1:
        for doc in docs:
            put(doc)
        return
    with ThreadPoolExecutor(min(WRITE_THREADS, len(docs))) as pool:
        for _ in pool.map(put, docs):  # re-raises the first failure
            pass
