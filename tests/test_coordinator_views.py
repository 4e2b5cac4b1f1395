"""Member histories (history.jsonl) are views written after the callers are
answered: a failed write fails no report and is retried, the search's end
is answered before them and then writes every one of them, a resumed
search rewrites what a crash lost, and they give way to changes waiting
to be written, yet progress under a steady stream of them, written as many
at a time as the store writes in parallel: by the same few threads at
every close, or by the writing thread itself when the store gains nothing
from parallel writes (a local disk)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TypeVar

import pytest
from coordinator_helpers import tiny_config
from test_coordinator_service import LAYOUT, open_service, run_search

from autolfads.coordinator.search.commit import WRITE_THREADS
from autolfads.coordinator.search.records import history_doc
from autolfads.storage import FaultyStore, LocalStore, Store, WrapperStore

# Two members, four generations; two reports close a generation.
CFG = tiny_config(population=2, max_generations=4, stop_patience_generations=10)
MEMBERS = ("m000", "m001")
HISTORY = r"/history\.jsonl$"


def history(store, member: str) -> list[dict]:
    return [json.loads(line) for line in store.get_bytes(LAYOUT.history(member)).splitlines()]


def test_a_failed_history_write_fails_no_report_and_is_retried(tmp_path, caplog):
    store = FaultyStore(LocalStore(tmp_path / "store"))
    fault = store.inject("put", HISTORY, fail="disk full", times=None)
    service = open_service(store, CFG)
    with caplog.at_level(logging.WARNING):
        assert run_search(service, store, stop_after=4) == 4  # every report answered
    assert fault.hits > 0 and not any(store.exists(LAYOUT.history(m)) for m in MEMBERS)
    assert "member histories not written yet" in caplog.text
    # The state itself was written: a status reader sees both closed generations.
    assert service.snapshot().generation == 2

    store.clear()  # storage is back: the next writes catch the histories up
    run_search(service, store)
    assert service.snapshot().status == "finished"
    for member in MEMBERS:
        entries = history(store, member)
        assert [e["generation"] for e in entries] == [0, 1, 2, 3]
        assert store.get_bytes(LAYOUT.history(member)) == history_doc(service.snapshot(), member)


def test_a_resumed_search_rewrites_the_histories_a_crash_lost(tmp_path):
    # Reference: the same search, uninterrupted, stopped at the same report.
    reference = LocalStore(tmp_path / "ref")
    run_search(open_service(reference, CFG), reference, stop_after=5)

    inner = LocalStore(tmp_path / "crashed")
    store = FaultyStore(inner)
    # The process dies after each state write, before any history is written.
    store.inject("put", HISTORY, fail="killed", times=None)
    run_search(open_service(store, CFG), store, stop_after=5)
    assert not any(inner.exists(LAYOUT.history(m)) for m in MEMBERS)

    resumed = open_service(inner, CFG)  # a new coordinator on the same storage
    for member in MEMBERS:
        rewritten = inner.get_bytes(LAYOUT.history(member))
        assert rewritten == history_doc(resumed.snapshot(), member)
        # The closed generations read as the uninterrupted search wrote them
        # (the rewrite also shows a segment reported in the open generation).
        closed = reference.get_bytes(LAYOUT.history(member))
        assert rewritten.startswith(closed)
        assert [e["generation"] for e in history(reference, member)] == [0, 1]
    resumed.release_leases("the workers died with the coordinator")
    run_search(resumed, inner)
    state = resumed.snapshot()
    for member in MEMBERS:
        lines = history(inner, member)
        assert [e["generation"] for e in lines] == [0, 1, 2, 3]
        # Each line shows its entry as it ended, decisions included, though
        # the open generation's line was first rendered before the decision.
        assert lines == [fresh_line(e) for e in state.history[member]]
        assert all(line["next_parent"] for line in lines[:-1])


@pytest.mark.parametrize("parallel_writes", [1, 4])
def test_a_history_that_cannot_be_written_holds_back_no_other(tmp_path, caplog, parallel_writes):
    # One member's history fails every time (its folder unwritable, say):
    # every other one is still written, at each close and at the end, and
    # only that one is reported missing.
    store = writing(FaultyStore(LocalStore(tmp_path / "store")), parallel_writes)
    store.inject("put", r"/members/m000/history\.jsonl$", fail="permission denied", times=None)
    service = open_service(store, CFG)
    with caplog.at_level(logging.WARNING):
        run_search(service, store)
    state = service.snapshot()
    assert state.status == "finished"
    assert not store.exists(LAYOUT.history("m000"))
    assert store.get_bytes(LAYOUT.history("m001")) == history_doc(state, "m001")
    assert "1 member histories not written; a resumed search rewrites them" in caplog.text


def fresh_line(entry) -> dict:
    return {**asdict(entry), "metric": entry.metric}


def test_the_end_of_the_search_is_answered_before_the_histories_then_writes_them(tmp_path):
    store = FaultyStore(LocalStore(tmp_path / "store"))
    service = open_service(store, CFG)
    run_search(service, store)
    # The entry that records the finished search was put before the last
    # generation's histories: its callers (the last reports, the workers
    # told DONE) were not kept waiting for them...
    puts = store.calls("put")
    final_entry = max(key for key in puts if key.startswith(LAYOUT.journal_prefix()))
    last_history = max(i for i, key in enumerate(puts) if key.endswith("history.jsonl"))
    assert puts.index(final_entry) < last_history
    entry = json.loads(store.get_bytes(final_entry).split(b"\n", 1)[1])
    assert entry["fields"]["status"] == "finished"
    # ...and its writer wrote every one of them before returning.
    for member in MEMBERS:
        assert [e["generation"] for e in history(store, member)] == [0, 1, 2, 3]


def test_histories_still_due_when_the_search_ends_are_written_despite_a_failure(tmp_path):
    store = FaultyStore(LocalStore(tmp_path / "store"))
    service = open_service(store, CFG)
    store.inject("put", HISTORY, fail="disk full", times=None)
    run_search(service, store, stop_after=4)  # two generations closed, no history written
    store.clear()
    store.inject("put", HISTORY, fail="disk full", times=1)
    service.cancel("enough")  # ends the search; a history fails once, and is retried
    state = service.snapshot()
    assert state.status == "cancelled"
    for member in MEMBERS:
        assert store.get_bytes(LAYOUT.history(member)) == history_doc(state, member)
        assert [e["generation"] for e in history(store, member)][:2] == [0, 1]


S = TypeVar("S", bound=Store)


def writing(store: S, parallel_writes: int) -> S:
    """`store`, telling its users that it writes `parallel_writes` at once
    (as S3 does eight; a local disk one)."""
    store.capabilities = replace(store.capabilities, parallel_writes=parallel_writes)
    return store


class HookedStore(WrapperStore):
    """Records the keys put, in order, and calls `hook` once, at the first
    put of a member history."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.puts: list[str] = []
        self.hook: Callable[[], None] | None = None

    def _put_bytes(self, key, data, sha256, content_type, metadata):
        if self.hook is not None and key.endswith("history.jsonl"):
            hook, self.hook = self.hook, None
            hook()
        self.puts.append(key)
        return super()._put_bytes(key, data, sha256, content_type, metadata)


@pytest.mark.parametrize("parallel_writes", [1, 4])
def test_histories_give_way_to_a_change_waiting_to_be_written(tmp_path, parallel_writes):
    # A closing generation of 12 members leaves 12 histories to write.
    cfg = tiny_config(population=12, max_generations=3, stop_patience_generations=10)
    store = writing(HookedStore(LocalStore(tmp_path / "store")), parallel_writes)
    service = open_service(store, cfg)

    def another_caller_changes_something() -> None:
        # What a caller on another thread leaves behind: a change applied
        # and staged, its write not begun.
        with service._lock, service._transaction():
            service._state.events.append({"kind": "test_change"})

    store.hook = another_caller_changes_something
    run_search(service, store, stop_after=12)  # the 12th report closes generation 0
    written = [k for k in store.puts if k.endswith("history.jsonl")]
    assert len(written) == parallel_writes  # one round, then the change comes first

    service.tick()  # writes the change, then the rest of the histories
    rest = store.puts[store.puts.index(written[-1]) + 1 :]
    assert rest[0].startswith(LAYOUT.journal_prefix())
    assert sorted(k for k in rest if k.endswith("history.jsonl")) == sorted(
        LAYOUT.history(m) for m in service.snapshot().members if LAYOUT.history(m) not in written
    )
    state = service.snapshot()
    assert state.events[-1]["kind"] == "test_change"
    for member in state.members:
        assert store.get_bytes(LAYOUT.history(member)) == history_doc(state, member)


class JournalHookedStore(WrapperStore):
    """Calls `hook` at every journal entry put (while the write is on)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.hook: Callable[[], None] | None = None

    def _put_bytes(self, key, data, sha256, content_type, metadata):
        if self.hook is not None and key.startswith(LAYOUT.journal_prefix()):
            self.hook()
        return super()._put_bytes(key, data, sha256, content_type, metadata)


@pytest.mark.parametrize("parallel_writes", [1, 4])
def test_histories_progress_under_a_steady_stream_of_changes(tmp_path, parallel_writes):
    cfg = tiny_config(population=12, max_generations=3, stop_patience_generations=10)
    store = writing(JournalHookedStore(LocalStore(tmp_path / "store")), parallel_writes)
    service = open_service(store, cfg)
    run_search(service, store, stop_after=11)

    def another_change_arrives() -> None:
        # A change staged during every write: whenever a write ends, the
        # next one is already waiting, as under steady load.
        with service._lock, service._transaction():
            service._state.events.append({"kind": "test_change"})

    store.hook = another_change_arrives
    run_search(service, store, stop_after=1)  # closes generation 0: 12 histories due
    assert not any(store.exists(LAYOUT.history(m)) for m in service.snapshot().members)
    for _ in range(2):  # each tick writes at least one round of histories
        service.tick()
    state = service.snapshot()
    for member in state.members:
        assert store.get_bytes(LAYOUT.history(member)) == history_doc(state, member)


class ThreadNamesStore(WrapperStore):
    """Records the name of each thread that writes a member history."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.threads: set[str] = set()

    def _put_bytes(self, key, data, sha256, content_type, metadata):
        if key.endswith("history.jsonl"):
            self.threads.add(threading.current_thread().name)
        return super()._put_bytes(key, data, sha256, content_type, metadata)


def threads_writing_histories(store: ThreadNamesStore) -> set[str]:
    """Run a search of four closes of 12 members (eight rounds of histories
    when eight are written at once) and return the threads that wrote its
    histories, once every history is checked."""
    cfg = tiny_config(population=12, max_generations=4, stop_patience_generations=10)
    service = open_service(store, cfg)
    run_search(service, store)
    state = service.snapshot()
    assert state.status == "finished"
    for member in state.members:
        assert store.get_bytes(LAYOUT.history(member)) == history_doc(state, member)
    return store.threads


def test_histories_are_written_by_the_same_few_threads_at_every_close(tmp_path):
    # A pool started per round showed new threads in every round (~1,000
    # per close of a 1024-member generation).
    store = writing(ThreadNamesStore(LocalStore(tmp_path / "store")), WRITE_THREADS)
    threads = threads_writing_histories(store)
    # How many of the pool's threads take a round's writes depends on which
    # idle ones wake first, so only the bound is checked, and that every
    # history went through the pool.
    assert 0 < len(threads) <= WRITE_THREADS
    assert all(name.startswith("autolfads-write") for name in threads)


def test_a_local_store_s_histories_are_written_by_the_writing_thread_alone(tmp_path):
    # A local disk gains nothing from parallel writes, and writer threads
    # contend for the GIL with the server's event loop: none is used.
    assert LocalStore(tmp_path / "store").capabilities.parallel_writes == 1
    threads = threads_writing_histories(ThreadNamesStore(LocalStore(tmp_path / "store")))
    assert threads == {threading.current_thread().name}
