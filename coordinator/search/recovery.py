"""The one way to read a search's state from storage.

Everything that needs the coordinator state (the coordinator resuming,
`autolfads status`, a worker asking whether the search ended, Katib's end
trials, tests) calls `load_state`: the newest valid snapshot, then the
journal entries after it in order, then the archived generations (layout
and guarantees in `coordinator.journal`).

What can be found after a crash, and what it means:

- an entry past the snapshot that is torn or corrupt, with nothing after it:
  that write never finished, so nobody was told of its change (the group
  commit answers only after the write). It is discarded with a warning; the
  resumed coordinator's first write is a snapshot numbered past it
  (`GroupCommit.start_past_predecessor`), so it is then ignored like any
  object below the newest snapshot.
- an entry or snapshot that a predecessor still had in flight when this
  coordinator took over, landing late: numbered below that first snapshot,
  ignored.
- a corrupt entry or a gap followed by more entries: acknowledged changes
  would be lost; an error, never skipped.
- a corrupt newest snapshot: the one before it (kept, with the journal
  entries after it, until a newer snapshot exists) is used instead.
- entries or snapshots older than the newest snapshot (a compaction a crash
  interrupted): ignored, deleted by the next compaction.
- only `state.json` (a run written before the journal): read as it is; the
  coordinator's first write moves it to the journal.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.search.journal import (
    CorruptObject,
    Doc,
    Image,
    archive_texts,
    parse_archive,
    prime,
    unframe,
)
from autolfads.coordinator.search.state import SearchState
from autolfads.storage.base import Store
from autolfads.storage.errors import ChecksumMismatch, ObjectNotFound, StorageError
from autolfads.storage.keys import RunLayout

log = logging.getLogger(__name__)

# Journal entries and archives are read this many at a time: on S3 each is a
# round trip, and a restart can read about a thousand entries.
READ_THREADS = 8


@dataclass
class Recovered:
    """A state read back, and what its writer needs to go on."""

    state: SearchState
    image: Image  # what the journal holds (empty for a format-1 state.json)
    snapshots: list[int] = field(default_factory=list)  # valid ones, oldest first
    oldest_entry: int = 1  # lowest journal entry still stored
    junk: list[str] = field(default_factory=list)  # corrupt objects to delete
    legacy: bool = False  # read from state.json


def load_state(store: Store, run: str, *, history: bool = True) -> Recovered | None:
    """The run's persisted state, or None if its coordinator never wrote one.

    `history=False` skips the archived generations (their history entries
    are then absent): enough to read the status, the best member, leases.
    Raises CoordinatorError (one line) when the state cannot be rebuilt.
    """
    layout = RunLayout(run)
    journal, snapshots, has_legacy = _listing(store, layout)
    if not journal and not snapshots:
        if not has_legacy:
            return None
        state = SearchState.from_json(store.get_bytes(layout.state()))
        return Recovered(state, Image(), legacy=True)
    doc, valid, junk = _newest_snapshot(store, layout, snapshots)
    if not valid and journal and journal[0] != 1:
        raise CoordinatorError(
            f"coordinator state of run {run!r} is incomplete: no readable snapshot, "
            f"and the journal starts at entry {journal[0]}"
        )
    _replay(store, layout, doc, [s for s in journal if s > doc.seq])
    archive: dict[int, dict[str, Any]] = {}
    if history:
        generations = range(doc.archived_through + 1)
        with closing(_read_all(store, [layout.archive(g) for g in generations])) as reads:
            archive = {
                g: _parse_archive(layout, g, data)
                for g, data in zip(generations, reads, strict=True)
            }
    state = doc.state(archive)
    base = Image(
        seq=doc.seq,
        archived_through=doc.archived_through,
        archive=archive_texts(archive),
        late_deleted=frozenset(doc.late_deleted),
    )
    oldest = journal[0] if journal else doc.seq + 1
    return Recovered(state, prime(state, base), valid, oldest, junk)


def read_state(store: Store, run: str, *, history: bool = True) -> SearchState | None:
    """Just the state (see `load_state`)."""
    recovered = load_state(store, run, history=history)
    return recovered.state if recovered else None


def _listing(store: Store, layout: RunLayout) -> tuple[list[int], list[int], bool]:
    journal: list[int] = []
    snapshots: list[int] = []
    legacy = False
    for info in store.list(layout.coordinator_prefix()):
        if info.key == layout.state():
            legacy = True
        elif (seq := layout.parse_sequence_key(layout.journal_prefix(), info.key)) is not None:
            journal.append(seq)
        elif (seq := layout.parse_sequence_key(layout.snapshot_prefix(), info.key)) is not None:
            snapshots.append(seq)
    return sorted(journal), sorted(snapshots), legacy


def _newest_snapshot(
    store: Store, layout: RunLayout, snapshots: list[int]
) -> tuple[Doc, list[int], list[str]]:
    """The newest snapshot that reads back whole (an empty Doc if none), the
    valid snapshots up to it, and the corrupt ones (to delete)."""
    junk: list[str] = []
    for i in range(len(snapshots) - 1, -1, -1):
        seq = snapshots[i]
        key = layout.snapshot(seq)
        try:
            body = unframe(store.get_bytes(key), "snapshot", seq)
        except (CorruptObject, ChecksumMismatch) as err:
            log.warning("coordinator snapshot %s is corrupt, using an older one: %s", key, err)
            junk.append(key)
            continue
        doc = Doc()
        doc.apply(body)
        return doc, snapshots[: i + 1], junk
    return Doc(), [], junk


def _replay(store: Store, layout: RunLayout, doc: Doc, pending: list[int]) -> None:
    """Apply journal entries `pending` (ascending) to `doc`. A torn last entry
    is left in place, below the snapshot the resumed coordinator writes first."""
    # Closed here when a damaged entry stops the replay: left to the garbage
    # collector, the reads' pool could be shut down from one of its own threads.
    with closing(_read_all(store, [layout.journal_entry(seq) for seq in pending])) as reads:
        _apply_all(layout, doc, pending, reads)


def _apply_all(
    layout: RunLayout, doc: Doc, pending: list[int], reads: Iterator[bytes | StorageError]
) -> None:
    for i, (seq, data) in enumerate(zip(pending, reads, strict=True)):
        if seq != doc.seq + 1:
            raise CoordinatorError(
                f"coordinator journal of run {layout.run!r} is missing entry {doc.seq + 1} "
                f"but has entries up to {pending[-1]}: acknowledged changes would be lost"
            )
        key = layout.journal_entry(seq)
        try:
            body = unframe(_bytes(data), "journal", seq)
        except (CorruptObject, ChecksumMismatch, ObjectNotFound) as err:
            if i < len(pending) - 1:
                raise CoordinatorError(
                    f"coordinator journal entry {key} is corrupt ({err}) but "
                    f"{len(pending) - 1 - i} later entries follow it: refusing to skip it"
                ) from None
            log.warning(
                "discarding the torn last journal entry %s (never acknowledged): %s", key, err
            )
            return
        doc.apply(body)


def _read_all(store: Store, keys: list[str]) -> Generator[bytes | StorageError, None, None]:
    """Each key's bytes, in order, read `READ_THREADS` at a time; a missing
    or damaged object comes as its error, for the caller to judge in order."""

    def read(key: str) -> bytes | StorageError:
        try:
            return store.get_bytes(key)
        except (ChecksumMismatch, ObjectNotFound) as err:
            return err

    if len(keys) <= 1:
        yield from map(read, keys)
        return
    with ThreadPoolExecutor(min(READ_THREADS, len(keys))) as pool:
        yield from pool.map(read, keys)


def _bytes(data: bytes | StorageError) -> bytes:
    if isinstance(data, StorageError):
        raise data
    return data


def _parse_archive(
    layout: RunLayout, generation: int, data: bytes | StorageError
) -> dict[str, Any]:
    key = layout.archive(generation)
    try:
        return parse_archive(unframe(_bytes(data), "archive", generation), generation)
    except (CorruptObject, ChecksumMismatch, ObjectNotFound) as err:
        raise CoordinatorError(
            f"archived history of generation {generation} is unreadable ({key}): {err}"
        ) from None
