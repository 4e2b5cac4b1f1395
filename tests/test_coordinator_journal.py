"""The coordinator state's journal, snapshots and archives: a crash at any
point of the write sequence recovers exactly the acknowledged state, torn
tails are discarded, corruption in the middle is an error, compaction keeps
storage short, snapshots come only once the entries outweigh the last one,
and old state.json runs still resume."""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import replace

import pytest
from coordinator_helpers import fake_train, saved_state, tiny_config
from run_helpers import until
from test_coordinator_service import DATA_KEY, LAYOUT, outcome, run_search

from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.search.journal import (
    MAX_ENTRIES_BETWEEN_SNAPSHOTS,
    Image,
    JournalWriter,
    frame,
    unframe,
)
from autolfads.coordinator.search.recovery import load_state, read_state
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.storage import FaultyStore, LocalStore, WrapperStore
from autolfads.storage.errors import StorageError

COORDINATOR = r"/coordinator/"
# Six generations; generation g is archived once the search is at g + 2, and
# retention (newest checkpoint kept) deletes some after that: late deletions.
CFG = tiny_config(max_generations=6, stop_patience_generations=10, keep_generations=1)


def open_service(store, cfg=CFG, **kw) -> CoordinatorService:
    kw = {"snapshot_every": 3, "archive_lag": 1, **kw}
    return CoordinatorService.open_search(
        cfg, store, DATA_KEY, "ab" * 32, clock=ManualClock(), **kw
    )


def canon(state) -> dict:
    """The state's content, independent of dict insertion order."""
    return json.loads(state.to_json())


# The crash test's search: small, so that every one of its writes can be a crash point.
SMALL = tiny_config(
    population=2, max_generations=5, stop_patience_generations=10, keep_generations=1
)


def drive_until_crash(store, cfg=SMALL) -> tuple[CoordinatorService | None, dict | None]:
    """Run the search; return the service and the last state a caller was
    told about (every answered call's change is persisted) when storage
    "crashed" (a write failed) or the search ended. (None, None): the
    search never started."""
    try:
        service = open_service(store, cfg)
    except StorageError:
        return None, None
    acked = canon(service.snapshot())
    try:
        while (reply := service.request_work("w0", 2)).action != "done":
            acked = canon(service.snapshot())
            for grant in reply.leases:
                service.report(fake_train(store, grant, "w0"))
                acked = canon(service.snapshot())
    except StorageError:
        pass
    return service, acked


def faulty(root, parallel_writes: int = 1) -> FaultyStore:
    """A local store that fails on demand, written `parallel_writes` at a
    time by the coordinator (as S3 is, eight; a local disk one)."""
    store = FaultyStore(LocalStore(root))
    store.capabilities = replace(store.capabilities, parallel_writes=parallel_writes)
    return store


def coordinator_changes(tmp_path, parallel_writes: int) -> int:
    store = faulty(tmp_path / "count", parallel_writes)
    service, _ = drive_until_crash(store)
    assert service is not None and service.terminal
    # The sequence has it all: snapshots, compactions, archives, late deletions.
    assert service._commit.snapshots_written >= 3
    image = service._commit.image
    assert image.archived_through >= 1 and image.late_deleted
    return store.count("change", COORDINATOR)


# Eight: a batch's documents go out in parallel, in no fixed order.
@pytest.mark.parametrize("parallel_writes", [1, 8])
def test_a_crash_at_every_write_recovers_the_acknowledged_state(tmp_path, parallel_writes):
    reference = LocalStore(tmp_path / "ref")
    run_search(open_service(reference, SMALL), reference)
    expected = outcome(reference, generations=5)
    total = coordinator_changes(tmp_path, parallel_writes)
    assert total > 20
    for k in range(total):
        store = faulty(tmp_path / f"crash-{k}", parallel_writes)
        inner = store.inner
        # From the k-th put or delete of the coordinator's own objects on,
        # nothing reaches storage: what a kill -9 at that point leaves.
        store.inject("change", COORDINATOR, fail="crash", after=k, times=None)
        _, acked = drive_until_crash(store)
        recovered = read_state(inner, "search")
        if acked is None:
            assert recovered is None
        else:
            assert canon(recovered) == acked, f"crash before change {k}"
        resumed = open_service(inner, SMALL)
        resumed.release_leases("the worker died with the coordinator")
        run_search(resumed, inner)
        assert outcome(inner, generations=5) == expected, f"crash before change {k}"
        assert canon(read_state(inner, "search")) == canon(resumed.snapshot())


def test_archives_and_late_deletions_round_trip(tmp_path):
    store = LocalStore(tmp_path)
    service = open_service(store)
    run_search(service, store)
    state = service.snapshot()
    recovered = load_state(store, "search")
    assert recovered is not None
    assert canon(recovered.state) == canon(state)
    # Generations 0-3 left the live state; retention deleted some of their
    # checkpoints after they were archived.
    assert recovered.image.archived_through == 3
    assert recovered.image.late_deleted
    archived = [k for k in store_keys(store) if "/coordinator/archive/" in k]
    assert len(archived) == 4
    # Without history (a status check) the archived generations are not read.
    light = saved_state(store, "search", history=False)
    assert light.status == "finished" and light.best == state.best
    assert {h.generation for hs in light.history.values() for h in hs} == {4, 5}


def store_keys(store) -> list[str]:
    return [info.key for info in store.list("search/")]


def journal_keys(store) -> list[str]:
    return [k for k in store_keys(store) if "/coordinator/journal/" in k]


def test_compaction_keeps_two_snapshots_and_the_entries_after_the_older(tmp_path):
    store = LocalStore(tmp_path)
    service = open_service(store)
    run_search(service, store)
    snapshots = [k for k in store_keys(store) if "/coordinator/snapshot/" in k]
    assert len(snapshots) == 2
    older = LAYOUT.parse_sequence_key(LAYOUT.snapshot_prefix(), snapshots[0])
    assert older is not None
    seqs = [LAYOUT.parse_sequence_key(LAYOUT.journal_prefix(), k) for k in journal_keys(store)]
    assert seqs == list(range(older + 1, service._commit.image.seq + 1))


def test_a_torn_last_entry_is_discarded_and_overwritten(tmp_path, caplog):
    store = LocalStore(tmp_path)
    service = open_service(store)
    run_search(service, store, stop_after=5)
    acked = canon(service.snapshot())
    last = journal_keys(store)[-1]
    # One more write, torn half-way (the process died while writing it).
    grant = service.request_work("w0", 1).leases[0]
    torn = store.get_bytes(journal_keys(store)[-1])
    assert journal_keys(store)[-1] != last
    store.put_bytes(journal_keys(store)[-1], torn[: len(torn) // 2])
    with caplog.at_level(logging.WARNING):
        assert canon(read_state(store, "search")) == acked
    assert "torn last journal entry" in caplog.text
    resumed = open_service(store)
    assert grant.lease_id not in resumed.snapshot().leases
    run_search(resumed, store)
    assert canon(read_state(store, "search")) == canon(resumed.snapshot())
    assert resumed.snapshot().status == "finished"


def test_a_write_a_lapsed_predecessor_had_in_flight_cannot_replace_the_successors(tmp_path):
    # A coordinator cut off from its claim but not from the store (a network
    # split) passed its fence, began a write, and hangs. Its claim lapses, a
    # successor resumes and goes on; then the old write lands. Numbered where
    # the successor's own first entry used to go, it replaced that entry and
    # recovery mixed two states without a word.
    base = LocalStore(tmp_path)
    old_view = FaultyStore(base)
    rare = {"snapshot_every": 1000}  # no snapshot of the successor's covers the late write
    old = open_service(old_view, **rare)
    run_search(old, old_view, stop_after=5)
    split = threading.Event()
    held = old_view.inject("put", COORDINATOR, hold=split, times=None)
    late = threading.Thread(target=lambda: old.request_work("w-old", 1))
    late.start()
    until(lambda: held.hits > 0, "the old coordinator's write to start")
    successor = open_service(base, **rare)  # the claim lapsed: the successor takes over
    grant = successor.request_work("w-new", 1).leases[0]
    successor.report(fake_train(base, grant, "w-new"))
    acked = canon(successor.snapshot())
    split.set()  # the split heals: the old write lands
    late.join(30)
    assert canon(read_state(base, "search")) == acked
    run_search(open_service(base), base)
    final = read_state(base, "search")
    assert final is not None and final.status == "finished"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_damage_followed_by_entries_is_an_error_not_skipped(tmp_path, damage):
    store = LocalStore(tmp_path)
    service = open_service(store, snapshot_every=1000)  # one snapshot, every entry kept
    run_search(service, store, stop_after=6)
    key = journal_keys(store)[3]
    if damage == "truncate":
        store.put_bytes(key, store.get_bytes(key)[:-1])
    elif damage == "garbage":
        store.put_bytes(key, b"\x00" * 100)
    else:
        store.delete(key)
    before = set(threading.enumerate())
    with pytest.raises(CoordinatorError) as err:
        read_state(store, "search")
    message = str(err.value)
    assert "\n" not in message
    assert ("later entries follow it" if damage != "delete" else "missing entry 4") in message
    # The stopped replay's readers are gone with it, not left to the garbage
    # collector (which could end their pool from one of its own threads).
    assert {t for t in threading.enumerate() if t.is_alive()} <= before


def test_a_corrupt_newest_snapshot_falls_back_to_the_older_one(tmp_path, caplog):
    store = LocalStore(tmp_path)
    service = open_service(store)
    run_search(service, store, stop_after=14)
    snapshots = [k for k in store_keys(store) if "/coordinator/snapshot/" in k]
    assert len(snapshots) == 2
    store.put_bytes(snapshots[-1], b"{}")
    with caplog.at_level(logging.WARNING):
        assert canon(read_state(store, "search")) == canon(service.snapshot())
    assert "using an older one" in caplog.text
    resumed = open_service(store)
    run_search(resumed, store)
    assert snapshots[-1] not in store_keys(store)  # deleted by the next compaction


def test_entries_and_snapshots_a_compaction_left_behind_are_ignored(tmp_path):
    store = FaultyStore(LocalStore(tmp_path))
    store.inject("delete", COORDINATOR, fail="crash during compaction", times=None)
    service = open_service(store)
    run_search(service, store)
    assert len([k for k in store_keys(store) if "/coordinator/snapshot/" in k]) > 2
    assert LAYOUT.journal_entry(1) in store_keys(store)
    assert canon(read_state(store, "search")) == canon(service.snapshot())


def test_a_run_written_before_the_journal_resumes_and_moves_to_it(tmp_path):
    reference = LocalStore(tmp_path / "ref")
    run_search(open_service(reference), reference)
    store = LocalStore(tmp_path / "old")
    first = open_service(store)
    run_search(first, store, stop_after=9)
    # What the previous version left: the whole state in state.json only.
    old = first.snapshot()
    for key in [k for k in store_keys(store) if "/coordinator/" in k]:
        store.delete(key)
    store.put_bytes(LAYOUT.state(), old.to_json().encode())
    assert canon(read_state(store, "search")) == canon(old)
    resumed = open_service(store)
    assert LAYOUT.state() not in store_keys(store)  # migrated, then removed
    run_search(resumed, store)
    assert outcome(store, generations=6) == outcome(reference, generations=6)


def test_write_size_does_not_grow_with_finished_generations(tmp_path):
    store = FaultyStore(LocalStore(tmp_path))
    cfg = tiny_config(population=8, max_generations=12, stop_patience_generations=20)
    service = open_service(store, cfg, snapshot_every=10_000, archive_lag=None)
    sizes: dict[int, list[int]] = {}
    while (reply := service.request_work("w0", 1)).action != "done":
        for grant in reply.leases:
            service.report(fake_train(store, grant, "w0"))
            entry = journal_keys(store)[-1]
            sizes.setdefault(grant.generation, []).append(len(store.get_bytes(entry)))
    # A plain report (not the one closing its generation) writes as much at
    # generation 11 as at generation 6, give or take digits (counters that
    # gain one, metrics printed to 16-18): the best-metric history goes as
    # what was added (it grew ~20 bytes a generation, ~100 here, when it
    # went whole); the state.json of before grew by a history entry per
    # member per generation (~8 x 400 bytes).
    early, late = sorted(sizes[6])[:4], sorted(sizes[11])[:4]
    assert max(late) <= max(early) + 24, (early, late)
    best = service.snapshot().best
    assert best is not None and not math.isnan(best.metric)


class SizedStore(WrapperStore):
    """Records (key, bytes) of every put, in order."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.puts: list[tuple[str, int]] = []

    def _put_bytes(self, key, data, sha256, content_type, metadata):
        self.puts.append((key, len(data)))
        return super()._put_bytes(key, data, sha256, content_type, metadata)


def test_entries_with_the_whole_best_history_in_their_fields_still_recover(tmp_path):
    # Journals written before the history went as a delta keep it whole in
    # each object's "fields"; a run left by that version must resume as is.
    store = LocalStore(tmp_path)
    service = open_service(store)
    run_search(service, store, stop_after=9)
    expected = canon(read_state(store, "search"))
    assert expected["best_history"], "the search must have closed generations"
    for key in [k for k in store_keys(store) if "/coordinator/journal/" in k or "/snapshot/" in k]:
        kind = "journal" if "/journal/" in key else "snapshot"
        seq = int(key.rsplit("/", 1)[1].split(".")[0])
        body = unframe(store.get_bytes(key), kind, seq)
        keep, added = body.pop("best_history_keep"), body.pop("best_history_add")
        # The whole history as of this object: only snapshots and the first
        # entries are self-contained, so rebuild it from the recovered state.
        assert keep == 0 or kind == "journal"
        body["fields"]["best_history"] = expected["best_history"][: keep + len(added)]
        store.put_bytes(key, frame(kind, seq, json.dumps(body).encode()))
    assert canon(read_state(store, "search")) == expected
    resumed = open_service(store)
    run_search(resumed, store)
    final = read_state(store, "search")
    assert final is not None and len(final.best_history) == 6


def test_a_snapshot_waits_for_entries_as_large_as_the_last_one(tmp_path):
    writer = JournalWriter(LAYOUT, archive_lag=1, snapshot_every=2)
    image = Image(seq=10)
    assert writer.snapshot_due(image, -1, 0, 0)  # none yet: the first is due at once
    assert not writer.snapshot_due(image, 9, 10**6, 100)  # fewer entries than snapshot_every
    assert not writer.snapshot_due(image, 8, 99, 100)  # entries smaller than the snapshot
    assert writer.snapshot_due(image, 8, 100, 100)
    many = Image(seq=10 + MAX_ENTRIES_BETWEEN_SNAPSHOTS)
    assert writer.snapshot_due(many, 10, 1, 10**9)  # enough entries to read back one by one

    # In a search: a snapshot costs the whole live state, entries only the
    # changes, so snapshots come far less often than every entry.
    store = SizedStore(LocalStore(tmp_path))
    cfg = tiny_config(population=8, max_generations=4, stop_patience_generations=10)
    service = open_service(store, cfg, snapshot_every=1)
    run_search(service, store)
    since, last_snapshot, snapshots = 0, 0, 0
    for key, size in store.puts:
        if key.startswith(LAYOUT.journal_prefix()):
            since += size
        elif key.startswith(LAYOUT.snapshot_prefix()):
            assert since >= last_snapshot
            since, last_snapshot, snapshots = 0, size, snapshots + 1
    assert 2 <= snapshots < service._commit.writes / 4
    assert canon(saved_state(store, "search")) == canon(service.snapshot())


def test_a_failed_snapshot_is_tried_again_at_the_next_write(tmp_path, caplog):
    store = FaultyStore(LocalStore(tmp_path))
    store.inject("put", "/coordinator/snapshot/", fail="disk full", after=1)  # the second
    cfg = tiny_config(population=8, max_generations=4, stop_patience_generations=10)
    service = open_service(store, cfg, snapshot_every=1)
    with caplog.at_level(logging.WARNING):
        run_search(service, store)
    assert "coordinator snapshot not written" in caplog.text
    puts = store.calls("put", COORDINATOR)
    snapshots = [i for i, key in enumerate(puts) if "/coordinator/snapshot/" in key]
    assert len(snapshots) >= 3
    # Its entries still count: the very next write's leader tries again.
    between = puts[snapshots[1] + 1 : snapshots[2]]
    assert [k for k in between if "/coordinator/journal/" in k] == [between[0]]
    assert canon(saved_state(store, "search")) == canon(service.snapshot())
