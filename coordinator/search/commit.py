"""Group commit of the coordinator state: many changes, one write, and no
caller answered before a write that covers its change.

A change is applied in memory under the service lock and staged with a
`Ticket` (its state revision). The caller then leaves the lock and calls
`wait(ticket)`: if no write is in flight it becomes the *leader*: it takes
the journal entry of the state as it is now (covering its own change and
every change staged since the last write: only the records that changed,
`journal.JournalWriter`), releases the lock, writes the documents the changes
asked for (`Outbox`: generation records, member histories, archived
generations; before the entry, since they are pure functions of the state
and a resumed coordinator does not rewrite them), then the journal entry,
then deletes retired checkpoints (after the entry that stops naming them, so
a crash leaves an extra object, never a missing one). Callers arriving
meanwhile wait for that write and the next leader takes everything they
staged. Under load one write covers many changes; with one caller it is a
plain synchronous write.

When a snapshot is due (`JournalWriter.snapshot_due`: enough entries,
holding as many bytes as the last snapshot) the leader, once its callers
are answered, writes one and then deletes the journal entries and snapshots
the snapshot before it covered (keeping one older snapshot to fall back on).

*Views* (`Outbox.view`: each member's history.jsonl) are documents for
people and the report, rendered from the state like the others but written
after the entry and after the batch's callers are answered: a sync
generation's close rewrites one per member, and writing 1024 of them before
answering made every trainer of the next generation wait. One leader at a
time writes them (the others hand theirs over), newest render per key, so a
document never goes back to an older version; a round at a time (as many
as the store writes at once: one on a local disk, eight on S3), giving way
whenever a change waits to be written (the next leader, or the server's
tick, carries on). The batch that ends the search is no exception: its
callers (the last reports, and every worker told DONE) do not wait for
1024 histories; its leader writes every pending view right after answering
them (`flush_views`, as a stopping coordinator's drain does), and a resumed
search rewrites all of them (a crash may have lost some).

If a write fails, the state is rebuilt from the image of the last finished
write and every change not covered by it is lost: its caller gets an error
and retries, so memory and storage never disagree about what was
acknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from itertools import count, islice

from autolfads.coordinator.search.journal import Batch, Image, JournalWriter, image_state, prime
from autolfads.coordinator.search.recovery import Recovered
from autolfads.coordinator.search.state import SearchState
from autolfads.storage.base import Store
from autolfads.storage.errors import StorageError

log = logging.getLogger(__name__)

# How far past the recovered sequence a resumed coordinator starts
# (`GroupCommit.start_past_predecessor`): beyond any write a predecessor can
# still have in flight (one entry and one snapshot, one leader at a time).
PREDECESSOR_GAP = 8

# Side documents of one batch are written `store.capabilities.parallel_writes`
# at a time, by at most this many threads (a closing generation of 1024
# members rewrites 1024 history files: S3 writes are round trips, so they
# overlap well). The threads are the process's, made once (`_writers`). A
# store that gains nothing from parallel writes (a local disk) is written
# by the leader's own thread: at 1024 members and 2000 workers, eight
# writer threads of a local store cost 12-26 % more of the coordinator's
# CPU than one (benchmarks/README.md, part 12), for no faster drain.
WRITE_THREADS = 8
# The server's tick (once a second) writes at least this many pending views
# whatever waits, so that they progress under a steady stream of changes
# too (a 1024-member close in about two minutes at worst).
TICK_VIEWS = 8
# After the search's last write, and when the coordinator stops, pending
# views are tried this many times (then logged; a resumed search rewrites
# every history).
FLUSH_ATTEMPTS = 3


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
    views: dict[str, Callable[[], bytes]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)

    def put(self, key: str, render: Callable[[], bytes]) -> None:
        self.puts[key] = render

    def view(self, key: str, render: Callable[[], bytes]) -> None:
        """Like `put`, but written after the callers are answered (module doc)."""
        self.views[key] = render

    def delete(self, key: str) -> None:
        self.deletes.append(key)

    def clear(self) -> None:
        self.puts.clear()
        self.views.clear()
        self.deletes.clear()


@dataclass
class _Batch:
    revision: int
    journal: Batch
    docs: list[tuple[str, bytes]]
    deletes: list[str]
    views: dict[str, bytes]  # written after the callers are answered
    ends_search: bool  # then every pending view follows at once (`flush_views`)


class GroupCommit:
    """Persists the state returned by `current()` in group commits (see the
    module doc).

    `lock` is the service lock (an RLock) guarding the state; `restore(state)`
    replaces the in-memory state by one rebuilt from what storage holds.
    `recovered`: what `recovery.load_state` read (None for a new search).
    """

    def __init__(
        self,
        store: Store,
        writer: JournalWriter,
        lock: threading.RLock,
        current: Callable[[], SearchState],
        restore: Callable[[SearchState], None],
        recovered: Recovered | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.outbox = Outbox()
        self._cond = threading.Condition(lock)
        self._current = current
        self._restore = restore
        self._pending: list[Ticket] = []
        self._writing = False
        # The image of the last finished write (None: nothing to roll back to),
        # and of the last batch taken (maybe in flight): the next diff's base.
        legacy = recovered is not None and recovered.legacy
        self._persisted = None if recovered is None or legacy else recovered.image
        self._encoded = recovered.image if recovered is not None else Image()
        self._snapshots = list(recovered.snapshots) if recovered else []
        self._oldest_entry = recovered.oldest_entry if recovered else 1
        self._junk = list(recovered.junk) if recovered else []
        if legacy:
            self._junk.append(writer.layout.state())  # once a snapshot holds it
        self._snapshotting = False
        self._views: dict[str, bytes] = {}  # rendered, not yet written
        self._viewing = False  # a leader is writing views
        self._latest = Ticket(-1, done=True)
        self._batch_revision = -1  # revision of the batch being written
        self.writes = 0  # state writes so far
        self.changes = 0  # changes staged so far (changes / writes = batching)
        self.snapshots_written = 0
        self._entry_bytes = 0  # journal bytes written since the last snapshot
        self._entry_bytes_snapshotted = 0  # of those, the ones the snapshot in flight covers
        self._snapshot_bytes = 0  # size of the last snapshot (unknown after a restart)
        self._listeners: list[Callable[[], None]] = []
        # Views per round: as many as the store writes at once.
        self._view_round = _width(store)

    @property
    def latest(self) -> Ticket:
        """The newest staged change's ticket (settled if nothing is pending)."""
        return self._latest

    @property
    def image(self) -> Image:
        """What storage holds (or will, once the write in flight ends)."""
        return self._encoded

    def stage(self, revision: int) -> Ticket:
        """Record a change applied in memory (lock held)."""
        ticket = Ticket(revision)
        self.changes += 1
        self._pending.append(ticket)
        self._latest = ticket
        return ticket

    def on_settled(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` whenever tickets settle (written or lost); returns
        the function that stops it. It runs on the writing thread with the
        lock held: it must only hand the news over (an event loop's
        `call_soon_threadsafe`), never block."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def abort(self, error: BaseException) -> None:
        """A change failed half-way (lock held): rebuild the state from the
        last batch taken and lose every change staged after it."""
        self.outbox.clear()
        if self._encoded.seq > 0:
            self._encoded = self._rebuild(self._encoded)
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
                snapshot = self._snapshot_job() if error is None else None
            if snapshot is not None:
                self._write_snapshot(snapshot)
            if batch.ends_search and error is None:
                self.flush_views()  # its callers are answered; readers come next
            else:
                self._write_views()
        if ticket.error is not None:
            raise ticket.error

    def flush_views(self) -> None:
        """Return once every view rendered so far is written (or has failed
        `FLUSH_ATTEMPTS` times, logged); for a graceful stop, after which a
        run's histories must be complete. Call without holding the lock."""
        for _ in range(FLUSH_ATTEMPTS):
            self._write_views(yield_to_changes=False, wait=True)
            with self._cond:
                if not self._views:
                    return
        log.error(
            "%d member histories not written; a resumed search rewrites them", len(self._views)
        )

    def write_views(self) -> None:
        """Write views left pending while changes came first: `TICK_VIEWS`
        whatever waits, then more while nothing does (the server's tick,
        so that they progress under a steady stream of changes too). Lock
        not held."""
        self._write_views(at_least=-(-TICK_VIEWS // self._view_round))  # rounds, rounded up

    # ------------------------------------------------------------ internals

    def _take(self) -> _Batch:
        """Lock held: everything staged so far becomes the next write."""
        docs = [(key, render()) for key, render in self.outbox.puts.items()]
        views = {key: render() for key, render in self.outbox.views.items()}
        deletes = list(self.outbox.deletes)
        state = self._current()
        journal = self.writer.take(state, self._encoded, deletes)
        batch = _Batch(
            self._pending[-1].revision, journal, docs + journal.docs, deletes, views, state.terminal
        )
        self.outbox.clear()
        self._writing = True
        self._batch_revision = batch.revision
        self._encoded = journal.image
        return batch

    def _write(self, batch: _Batch) -> BaseException | None:
        try:
            _put_all(self.store, batch.docs)
            self.store.put_bytes(
                batch.journal.entry_key, batch.journal.entry, content_type="application/json"
            )
        except BaseException as err:  # handed to every caller of the batch
            return err
        _delete_all(self.store, batch.deletes, "checkpoint GC")
        return None

    def _finish(self, batch: _Batch, error: BaseException | None) -> None:
        self._writing = False
        if error is None:
            self.writes += 1
            self._entry_bytes += len(batch.journal.entry)
            self._persisted = batch.journal.image
            self._views.update(batch.views)
            for t in self._pending:
                if t.revision <= batch.revision:
                    t.done = True
            self._pending = [t for t in self._pending if not t.done]
        else:
            log.error("coordinator state not saved, changes rolled back: %s", error)
            self.outbox.clear()
            # Views of written states stay due; the failed batch's own are not.
            if self._persisted is not None:
                self._persisted = self._rebuild(self._persisted)
                self._encoded = self._persisted
            else:  # nothing written yet: the next write is the first again
                self._encoded = Image()
            self._fail(lambda t: True, error)
        self._cond.notify_all()
        self._settled()

    def _write_views(
        self, yield_to_changes: bool = True, at_least: int = 0, wait: bool = False
    ) -> None:
        """Write the pending views unless another leader is (it takes ours
        too). Best effort: a failed view stays pending for the next round.

        `yield_to_changes`: a few views at a time, stopping while a change
        waits to be written (the leader of that write carries on after
        it), after the first `at_least` rounds. A closing generation's
        views are a burst of writes, and the next generation's leases must
        not queue behind them on the disk. `wait`: if another leader is
        writing views, wait for it and then write what is left."""
        with self._cond:
            while wait and self._viewing:
                self._cond.wait()
            if self._viewing or not self._views:
                return
            self._viewing = True
        try:
            for round_ in count():
                with self._cond:
                    busy = self._writing or self._pending
                    if yield_to_changes and busy and round_ >= at_least:
                        return
                    views = self._take_views(self._view_round if yield_to_changes else None)
                if not views:
                    return
                # A view is never worth failing an answered call: the ones
                # that failed stay pending (a newer render of a key
                # supersedes the failed one), the others are done.
                failed = _put_each(self.store, list(views.items()))
                if failed:
                    log.warning(
                        "%d member histories not written yet (retried later): %s",
                        len(failed),
                        failed[0][1],
                    )
                    with self._cond:
                        self._views = {**{key: views[key] for key, _ in failed}, **self._views}
                    return
        finally:
            with self._cond:
                self._viewing = False
                self._cond.notify_all()

    def _take_views(self, limit: int | None) -> dict[str, bytes]:
        """Lock held: the oldest `limit` (None: all) pending views."""
        if limit is None or limit >= len(self._views):
            views, self._views = self._views, {}
            return views
        keys = list(islice(self._views, limit))
        return {key: self._views.pop(key) for key in keys}

    def _rebuild(self, image: Image) -> Image:
        """Lock held: replace the state by `image`'s; returns the image primed
        with the new state's records (so later diffs stay by identity)."""
        state = image_state(image)
        self._restore(state)
        return prime(state, image)

    def start_past_predecessor(self) -> None:
        """Before a resumed coordinator's first change: write a snapshot of
        the recovered state numbered `PREDECESSOR_GAP` past it, so that its
        journal goes on from there.

        A predecessor cut off from this process but not from the store (a
        network split, a pod whose claim lapsed) may still have a write in
        flight: one journal entry and one snapshot at most, all numbered at or
        below the recovered sequence plus one. Such a write can land at any
        time later; numbered below this snapshot, recovery then ignores it
        and the next compaction deletes it, where it would otherwise replace
        one of this coordinator's entries and mix two states silently. (A
        crash-torn last entry is left below the snapshot likewise.)"""
        with self._cond:
            if self._persisted is None:  # a new search, or a state.json to move
                return
            image = replace(self._persisted, seq=self._persisted.seq + PREDECESSOR_GAP)
        key, data = self.writer.snapshot(image)
        self.store.put_bytes(key, data, content_type="application/json")
        with self._cond:
            self._persisted = self._encoded = image
            self._snapshots.append(image.seq)
            self._snapshot_bytes = len(data)
            self._entry_bytes = 0
            self.snapshots_written += 1

    def _snapshot_job(self) -> Image | None:
        """Lock held, after a write: the image to snapshot, if one is due and
        no other leader is writing one."""
        image = self._persisted
        last = self._snapshots[-1] if self._snapshots else -1
        if self._snapshotting or image is None:
            return None
        if not self.writer.snapshot_due(image, last, self._entry_bytes, self._snapshot_bytes):
            return None
        self._snapshotting = True
        self._entry_bytes_snapshotted = self._entry_bytes
        return image

    def _write_snapshot(self, image: Image) -> None:
        """Write the snapshot, then delete what the previous snapshot made
        redundant (entries up to it, snapshots before it): a crash in between
        leaves extra objects, which recovery ignores."""
        key, data = self.writer.snapshot(image)
        try:
            self.store.put_bytes(key, data, content_type="application/json")
        except StorageError as err:
            log.warning(
                "coordinator snapshot not written (the journal still holds it all): %s", err
            )
            with self._cond:
                self._snapshotting = False
            return
        layout = self.writer.layout
        with self._cond:
            self.snapshots_written += 1
            self._snapshot_bytes = len(data)
            # Stored: the next one counts from it (a failed one is retried
            # at the next write, its entries still counted).
            self._entry_bytes -= self._entry_bytes_snapshotted
            self._snapshots.append(image.seq)
            keep_from = self._snapshots[-2] if len(self._snapshots) > 1 else 0
            doomed = [layout.journal_entry(s) for s in range(self._oldest_entry, keep_from + 1)]
            doomed += [layout.snapshot(s) for s in self._snapshots[:-2]]
            doomed += self._junk
            self._oldest_entry = max(self._oldest_entry, keep_from + 1)
            self._snapshots = self._snapshots[-2:]
            self._junk = []
        _delete_all(self.store, doomed, "journal compaction")
        with self._cond:
            self._snapshotting = False

    def _fail(self, lost: Callable[[Ticket], bool], error: BaseException) -> None:
        for t in self._pending:
            if lost(t):
                t.error = _lost(error)
        self._pending = [t for t in self._pending if t.error is None]
        if self._latest.error is not None:
            # What callers wait for when their own change is already on
            # record (a flush, a resent report, a replayed grant): the newest
            # change still to be written, or nothing. A rolled-back change is
            # not in memory any more, so none of them can depend on it; left
            # here, its error would come back to each of them until the next
            # change was staged.
            self._latest = self._pending[-1] if self._pending else Ticket(-1, done=True)
        self._cond.notify_all()
        self._settled()

    def _settled(self) -> None:
        for listener in tuple(self._listeners):  # one may stop listening meanwhile
            listener()


def _lost(error: BaseException) -> BaseException:
    """What a caller whose change was rolled back gets: transient, retry."""
    return StorageError(f"the coordinator state was not saved ({error}); retry the request")


def _delete_all(store: Store, keys: list[str], what: str) -> None:
    """Best effort: a key left behind is an extra object, never a missing one."""
    for key in keys:
        try:
            store.delete(key)
        except StorageError as err:
            log.warning("%s: %s", what, err)


def _put_all(store: Store, docs: list[tuple[str, bytes]]) -> None:
    """`_put_each`, raising the first failure in the batch's order."""
    failed = _put_each(store, docs)
    if failed:
        raise failed[0][1]


def _put_each(store: Store, docs: list[tuple[str, bytes]]) -> list[tuple[str, Exception]]:
    """Try every one of `docs`, as many at a time as the store writes in
    parallel (in order on this thread if one); return once every write has
    ended (none is left running: a later batch must not race with an older
    render of the same key), with the keys that failed and why, in order."""
    width = _width(store)
    failed: list[tuple[str, Exception]] = []
    if width == 1 or len(docs) <= 1:
        for doc in docs:
            try:
                _put(store, doc)
            except Exception as err:  # the others are still tried
                failed.append((doc[0], err))
        return failed
    pool = _writers(width)
    futures: list[Future[None]] = [pool.submit(_put, store, doc) for doc in docs]
    wait(futures)
    for (key, _), future in zip(docs, futures, strict=True):
        error = future.exception()
        if error is not None:
            if not isinstance(error, Exception):
                raise error  # KeyboardInterrupt and the like are not a failed write
            failed.append((key, error))
    return failed


def _width(store: Store) -> int:
    """How many of `store`'s writes run at once (see WRITE_THREADS)."""
    return min(store.capabilities.parallel_writes, WRITE_THREADS)


def _put(store: Store, doc: tuple[str, bytes]) -> None:
    key, data = doc
    content_type = "application/json" if key.endswith(".json") else "application/x-ndjson"
    store.put_bytes(key, data, content_type=content_type)


_pools: dict[int, ThreadPoolExecutor] = {}
_pool_lock = threading.Lock()


def _writers(width: int) -> ThreadPoolExecutor:
    """The process's `width` writer threads, shared by its searches and made
    once (like asyncio's default executor: idle, they wait on the pool's
    queue, and they end with the process; no coordinator owns them, so a
    stopped server leaves none of its own threads behind).

    A pool per batch started and joined eight threads for every
    round of views: about 1,000 threads per close of a 1024-member
    generation, each one a clone, a stack mapping and a join. Nothing a
    writer runs waits on another batch, so sharing cannot deadlock."""
    with _pool_lock:
        pool = _pools.get(width)
        if pool is None:
            pool = _pools[width] = ThreadPoolExecutor(width, thread_name_prefix="autolfads-write")
        return pool
