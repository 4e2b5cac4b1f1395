"""The coordinator service without the network: leases, reports, generations,
fault handling and resume, on a real local store with a manual clock."""

from __future__ import annotations

import json
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, replace

import pytest
from coordinator_helpers import fake_train, saved_state, stage_tiny_run, tiny_config

from autolfads.coordinator.search import ids as ids_module
from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.errors import (
    InvalidRequest,
    SearchFinished,
    StaleLease,
    UnknownLease,
)
from autolfads.coordinator.search.messages import SegmentReport
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.search.state import SearchState
from autolfads.storage import FaultyStore, LocalStore, RunLayout
from autolfads.storage.errors import StorageError

DATA_KEY = "search/data/" + "ab" * 32 + ".h5"
LAYOUT = RunLayout("search")


def open_service(store, cfg=None, clock=None, **kw) -> CoordinatorService:
    return CoordinatorService.open_search(
        cfg or tiny_config(), store, DATA_KEY, "ab" * 32, clock=clock or ManualClock(), **kw
    )


def run_search(service, store, workers=1, max_leases=1, seed=0, stop_after=None) -> int:
    """Drive the search with `workers` fake trainers reporting in random order."""
    rng = random.Random(seed)
    reports = 0
    while True:
        grants = []
        for w in range(workers):
            reply = service.request_work(f"w{w}", max_leases)
            if reply.action == "done":
                return reports
            grants += [(f"w{w}", g) for g in reply.leases]
        rng.shuffle(grants)
        for worker, grant in grants:
            service.report(fake_train(store, grant, worker))
            reports += 1
            if stop_after is not None and reports >= stop_after:
                return reports


def outcome(store, generations: int = 3) -> tuple:
    """Everything a person reads from the bucket about the decisions."""
    logs = []
    for g in range(generations):
        doc = store.get_json(LAYOUT.generation(g))
        logs.append((doc["ranking"], doc["copies"], doc["best_metric"]))
    best = store.get_json(LAYOUT.best("search.json"))["best"]
    return logs, best["member"], best["metric"], best["hparams"]


def test_search_runs_all_generations_and_logs_consistent_lineage(local_store):
    service = open_service(local_store)
    assert run_search(service, local_store, workers=2) == 12  # 4 members x 3 generations
    state = service.snapshot()
    assert state.status == "finished" and "max_generations" in state.message
    assert len(state.best_history) == 3
    for g in range(3):
        assert local_store.exists(LAYOUT.generation(g))
    # Every step of every final member's lineage is a decision in the
    # generation logs (the best may be any generation's, so check them all).
    final = local_store.get_json(LAYOUT.generation(2))["ranking"]
    assert sorted(final) == ["m000", "m001", "m002", "m003"]
    for member in final:
        chain = state.lineage(member, 2)
        assert [e.generation for e in chain] == [2, 1, 0]
        for newer, older in zip(chain, chain[1:], strict=False):
            log = local_store.get_json(LAYOUT.generation(older.generation))
            decision = log["members"][newer.member]["next"]
            assert decision["parent"] == older.member
            assert decision["checkpoint"] == older.checkpoint
            assert decision["new_hparams"] == newer.hparams
    best = state.best
    assert best is not None
    assert state.lineage(best.member, best.generation)[-1].generation == 0
    history = local_store.get_bytes(LAYOUT.history(best.member)).decode().splitlines()
    assert [json.loads(line)["generation"] for line in history] == [0, 1, 2]


def test_decisions_do_not_depend_on_worker_count_or_arrival_order(tmp_path):
    results = []
    for i, (workers, leases, seed) in enumerate([(1, 1, 0), (4, 1, 1), (2, 3, 2)]):
        store = LocalStore(tmp_path / f"s{i}")
        run_search(open_service(store), store, workers, leases, seed)
        results.append(outcome(store))
    assert results[0] == results[1] == results[2]


def test_resume_after_crash_gives_the_undisturbed_result(tmp_path):
    reference = LocalStore(tmp_path / "ref")
    run_search(open_service(reference), reference)
    store = LocalStore(tmp_path / "crash")
    first = open_service(store)
    run_search(first, store, workers=2, stop_after=6)  # mid generation 1
    lease = first.request_work("w9", 1).leases[0]  # in flight during the "crash"
    del first
    clock = ManualClock()
    resumed = open_service(store, clock=clock, lease_timeout_s=10)
    state = resumed.snapshot()
    assert state.generation == 1 and sum(map(len, state.history.values())) == 6
    assert state.leases[lease.lease_id].status == "active"  # fresh grace period
    assert resumed.heartbeat(lease.lease_id, "w9").action == "continue"
    resumed.report(fake_train(store, lease, "w9"))  # the in-flight report still counts
    run_search(resumed, store)
    assert outcome(store) == outcome(reference)
    assert all(len(h) == 3 for h in resumed.snapshot().history.values())


def test_expired_lease_is_requeued_and_its_late_report_rejected(local_store):
    clock = ManualClock()
    service = open_service(local_store, clock=clock, lease_timeout_s=30)
    lost = service.request_work("w0", 1).leases[0]
    clock.advance(31)
    retry = service.request_work("w1", 4).leases
    assert lost.member in [g.member for g in retry]
    again = next(g for g in retry if g.member == lost.member)
    assert again.start == lost.start and again.hparams == lost.hparams
    assert service.heartbeat(lost.lease_id, "w0").reason == "lease_expired"
    before = service.snapshot().to_json()
    with pytest.raises(StaleLease):
        service.report(fake_train(local_store, lost, "w0"))
    assert service.snapshot().to_json() == before
    events = [e["kind"] for e in service.snapshot().events]
    assert "lease_expired" in events


def test_a_segment_whose_leases_keep_expiring_ends_as_failed(local_store):
    """A member whose settings kill every trainer that takes it (out of
    memory, say) used to be handed out again forever, stalling the
    synchronous generation for good."""
    from autolfads.coordinator.search.service import MAX_LEASE_EXPIRIES

    clock = ManualClock()
    cfg = tiny_config(population=2, max_generations=2)
    service = CoordinatorService.open_search(
        cfg, local_store, "search/data/" + "ab" * 32 + ".h5", "ab" * 32,
        clock=clock, lease_timeout_s=30,
    )  # fmt: skip
    healthy, doomed = service.request_work("w0", 2).leases
    service.report(fake_train(local_store, healthy, "w0"))
    for attempt in range(1, MAX_LEASE_EXPIRIES):
        clock.advance(31)
        (again,) = service.request_work(f"w{attempt}", 2).leases
        assert again.member == doomed.member and again.generation == 0
    clock.advance(31)
    # The last expiry fails the segment: generation 0 closes without it.
    reply = service.request_work("w9", 2)
    assert {g.generation for g in reply.leases} == {1}
    state = service.snapshot()
    (entry,) = state.history[doomed.member]
    assert math.isnan(entry.metric)
    failed = [e for e in state.events if e["kind"] == "segment_failed"]
    assert f"expired {MAX_LEASE_EXPIRIES} times" in failed[0]["message"]
    # Its member copies the healthy one at the exploit, like a diverged member.
    assert next(g for g in reply.leases if g.member == doomed.member).parent == healthy.member
    # The silent worker's late report changes nothing.
    with pytest.raises(StaleLease):
        service.report(fake_train(local_store, again, "w2"))


def test_leases_failing_together_settle_nothing_after_the_search_ends(local_store):
    """Two segments reach their last expiry in one sweep; failing the first
    ends the search (async plateau). The second used to be settled into the
    ended search anyway: a result after the end, a new queued segment."""
    from autolfads.coordinator.search.service import MAX_LEASE_EXPIRIES

    clock = ManualClock()
    cfg = tiny_config(
        mode="async", population=2, max_generations=5,
        stop_patience_generations=2, stop_improvement=0.5,
    )  # fmt: skip
    service = open_service(local_store, cfg, clock=clock, lease_timeout_s=30)
    for grant in service.request_work("w0", 2).leases:
        service.report(fake_train(local_store, grant, "w0", metric=1.0))
    ahead = next(g for g in service.request_work("w0", 2).leases if g.member == "m001")
    service.report(fake_train(local_store, ahead, "w0", metric=0.99))
    service.request_work("w0", 2)  # m001 runs ahead into generation 2
    for attempt in range(MAX_LEASE_EXPIRIES):
        clock.advance(31)
        reply = service.request_work(f"w{attempt + 1}", 2)
    assert reply.action == "done"
    state = service.snapshot()
    assert state.status == "finished"
    kinds = [e["kind"] for e in state.events]
    assert "search_finished" in kinds
    assert kinds[kinds.index("search_finished") + 1 :] == []  # nothing after the end
    assert all(s.phase == "finished" for s in state.segments.values())


def test_duplicate_report_is_acknowledged_once(local_store):
    service = open_service(local_store)
    grant = service.request_work("w0", 1).leases[0]
    report = fake_train(local_store, grant, "w0")
    assert service.report(report).duplicate is False
    revision = service.snapshot().revision
    ack = service.report(report)
    assert ack.accepted and ack.duplicate
    state = service.snapshot()
    assert state.revision == revision and len(state.history[grant.member]) == 1


def test_bad_requests_change_nothing(local_store):
    service = open_service(local_store)
    grant = service.request_work("w0", 1).leases[0]
    good = fake_train(local_store, grant, "w0")
    before = service.snapshot().to_json()
    bad = [
        (UnknownLease, replace(good, lease_id="f" * 32)),
        (InvalidRequest, replace(good, generation=5)),
        (InvalidRequest, replace(good, member="m003")),
        (InvalidRequest, replace(good, worker_id="w1")),
        (InvalidRequest, replace(good, hparams={**good.hparams, "lr_init": math.nan})),
        (InvalidRequest, replace(good, hparams={**good.hparams, "bogus": 1.0})),
        (InvalidRequest, replace(good, hparams={**good.hparams, "lr_init": 0.5})),
        (InvalidRequest, replace(good, checkpoint_sha256="xyz")),
        (InvalidRequest, replace(good, checkpoint_key="search/elsewhere.pt")),
    ]
    for error, report in bad:
        with pytest.raises(error):
            service.report(report)
    with pytest.raises(InvalidRequest):
        service.request_work("w0", 0)
    with pytest.raises(InvalidRequest):
        service.request_work("../etc", 1)
    assert service.snapshot().to_json() == before
    assert service.report(good).accepted


def test_corrupt_checkpoint_falls_back_and_is_recorded(local_store):
    service = open_service(local_store, tiny_config(population=2))
    run_search(service, local_store, stop_after=4)  # generations 0 and 1 done
    grants = service.request_work("w0", 2).leases
    target = next(g for g in grants if g.fallbacks)
    local_store.put_bytes(target.start.checkpoint, b"bit rot")  # replaced behind our back
    report = fake_train(local_store, target, "w0")
    assert [p.checkpoint for p in report.corrupt] == [target.start.checkpoint]
    service.report(report)
    event = next(e for e in service.snapshot().events if e["kind"] == "checkpoint_checksum_failed")
    assert event["checkpoint"] == target.start.checkpoint
    assert event["fell_back_to"] == target.fallbacks[0].checkpoint
    entry = service.snapshot().entry(target.member, target.generation)
    assert entry is not None and entry.start_checkpoint == target.fallbacks[0].checkpoint


def test_cancel_stops_leases_and_workers(local_store):
    service = open_service(local_store)
    grant = service.request_work("w0", 1).leases[0]
    assert service.cancel("operator said so") == "cancelled"
    assert service.cancel() == "cancelled"  # idempotent
    assert service.heartbeat(grant.lease_id, "w0").reason == "search_cancelled"
    assert service.request_work("w1", 1).action == "done"
    with pytest.raises(SearchFinished):
        service.report(fake_train(local_store, grant, "w0"))
    stored = saved_state(local_store, "search")
    assert stored.status == "cancelled" and stored.message == "operator said so"


@pytest.mark.parametrize("fail", [None, "disk full"])
def test_an_all_or_nothing_request_hears_done_only_once_the_end_is_written(tmp_path, fail):
    """`request_exactly` (Katib's GetSuggestions) answers DONE once the change
    that ended the search is written, as RequestWork does: Katib told to
    stop must not find the search running again after that write is lost."""
    store = FaultyStore(LocalStore(tmp_path))
    service = open_service(store)
    gate = threading.Event()
    held = store.inject("put", f"^{re.escape(LAYOUT.journal_prefix())}", hold=gate, fail=fail)
    with ThreadPoolExecutor(2) as pool:
        cancel = pool.submit(service.cancel, "by the test")
        deadline = time.monotonic() + 30
        while held.hits < 1:  # the write that ends the search has begun
            assert time.monotonic() < deadline
            time.sleep(0.01)
        asked = pool.submit(service.request_exactly, "katib", 1, "r1")
        try:
            # Not before the write lands (the old code answered DONE at once).
            with pytest.raises(FutureTimeout):
                asked.result(timeout=0.5)
        finally:
            gate.set()
        if fail is None:
            reply = asked.result(timeout=30)
            assert reply is not None and reply.action == "done"
            assert cancel.result(timeout=30) == "cancelled"
            return
        with pytest.raises(StorageError):
            asked.result(timeout=30)
        with pytest.raises(StorageError):
            cancel.result(timeout=30)
    # The end was rolled back: the search goes on, and the retry gets work.
    reply = service.request_exactly("katib", 1, "r2")
    assert reply is not None and reply.action == "train" and len(reply.leases) == 1


def test_a_lost_write_keeps_the_leases_that_heartbeats_kept_alive(tmp_path):
    """Heartbeats move deadlines in memory only; a rollback to the written
    state used to put back the deadlines of the grants, so one failed write
    expired every healthy lease and refused the retry of the lost report."""
    store = FaultyStore(LocalStore(tmp_path))
    clock = ManualClock()
    service = open_service(store, clock=clock, lease_timeout_s=10)
    grants = [service.request_work(f"w{i}", 1).leases[0] for i in range(4)]
    for _ in range(24):  # a minute of training, a beat every 2.5 s
        clock.advance(2.5)
        for i, grant in enumerate(grants):
            assert service.heartbeat(grant.lease_id, f"w{i}").action == "continue"
    store.inject("put", f"^{re.escape(LAYOUT.journal_prefix())}", fail="disk full")  # once
    report = fake_train(store, grants[0], "w0")
    with pytest.raises(StorageError):
        service.report(report)
    assert service.report(report).accepted  # the worker's retry
    beats = [service.heartbeat(g.lease_id, f"w{i}").action for i, g in enumerate(grants[1:], 1)]
    assert beats == ["continue"] * 3
    state = saved_state(store, "search")
    assert sorted(x.status for x in state.leases.values()) == ["accepted"] + ["active"] * 3


def test_async_mode_never_deletes_a_result_that_becomes_the_best(tmp_path):
    """A fast member runs generations ahead in async mode; its result of a
    generation not closed yet was not protected from retention, so the best
    of the search could name a deleted checkpoint (and finalize fail)."""
    cfg = tiny_config(mode="async", max_generations=6, keep_generations=2)
    store = LocalStore(tmp_path)
    service = open_service(store, cfg)
    first = {g.member: g for g in service.request_work("w0", 4).leases}
    queued: dict = {}

    def report(grant, metric: float) -> None:
        service.report(replace(fake_train(store, grant, "w0"), fitness=metric))

    def next_of(member: str):
        queued.update({g.member: g for g in service.request_work("w0", 8).leases})
        return queued.pop(member)

    report(first["m001"], 0.5)
    report(first["m000"], 1.0)
    report(next_of("m000"), 0.1)  # generation 1: the best result of the search
    report(next_of("m000"), 1.0)  # generations 2 and 3 run ahead
    report(next_of("m000"), 1.0)
    report(first["m002"], 0.9)
    report(first["m003"], 0.9)  # generation 0 closes: retention runs
    for member in ("m001", "m002", "m003"):
        report(next_of(member), 0.8)  # generation 1 closes: m000's 0.1 is the best
    best = saved_state(store, "search").best
    assert best is not None and (best.member, best.generation) == ("m000", 1)
    assert store.exists(best.checkpoint)


def test_resuming_with_other_data_is_refused_before_anything_is_uploaded(tmp_path):
    # A second data object left the run unreadable for --resume and finalize
    # alike ("holds several data files").
    from autolfads.coordinator.search.staging import load_run, stage_run
    from autolfads.errors import DataError
    from autolfads.trainer.data.lfads_h5 import write_lfads_h5
    from autolfads.trainer.data.synth import make_chaotic_rnn

    store = stage_tiny_run(tmp_path)
    other = tmp_path / "other.h5"
    sizes = {"n_conditions": 4, "n_replications": 4, "n_neurons": 8, "n_heldout": 2}
    write_lfads_h5(make_chaotic_rnn(seed=1, n_bins=10, n_fp_bins=2, **sizes), other)
    before = sorted(x.key for x in store.list("search/data/"))
    with pytest.raises(DataError, match="is not the data run 'search' was staged with"):
        stage_run(store, tiny_config(), other)
    assert sorted(x.key for x in store.list("search/data/")) == before
    assert load_run(store, "search")[1] == before[0]  # still one data file
    stage_run(store, tiny_config(), tmp_path / "data.h5")  # the same file: fine


def test_abandoned_lease_is_requeued_at_once(local_store):
    service = open_service(local_store)
    grant = service.request_work("w0", 1).leases[0]
    abandon = SegmentReport(grant.lease_id, "w0", grant.member, grant.generation, "abandoned")
    assert service.report(abandon).accepted
    assert service.report(abandon).duplicate
    assert grant.member in [g.member for g in service.request_work("w1", 4).leases]


def test_retried_request_gets_the_same_leases(local_store):
    service = open_service(local_store)
    first = service.request_work("w0", 2, request_id="r1")
    again = service.request_work("w0", 2, request_id="r1")
    assert [g.lease_id for g in again.leases] == [g.lease_id for g in first.leases]
    assert len(service.request_work("w0", 2, request_id="r2").leases) == 2


def test_all_members_diverged_fails_the_search(local_store):
    service = open_service(local_store, tiny_config(population=2))
    for grant in service.request_work("w0", 2).leases:
        service.report(fake_train(local_store, grant, "w0", metric=math.nan))
    state = service.snapshot()
    assert state.status == "failed" and "diverged" in state.message


def test_a_generation_whose_segments_all_failed_says_why_not_diverged(local_store):
    """Every trainer went silent (a lease timeout shorter than an epoch,
    trainers killed for memory): the search failed saying every member
    diverged and to lower lr_init, which sends the user tuning settings
    that never ran."""
    from autolfads.coordinator.search.service import MAX_LEASE_EXPIRIES

    clock = ManualClock()
    service = open_service(local_store, tiny_config(population=2), clock=clock, lease_timeout_s=30)
    for attempt in range(MAX_LEASE_EXPIRIES):
        assert len(service.request_work(f"w{attempt}", 2).leases) == 2
        clock.advance(31)
    assert service.request_work("w9", 2).action == "done"
    state = service.snapshot()
    assert state.status == "failed"
    assert "every segment of generation 0 failed without a result" in state.message
    assert f"lease expired {MAX_LEASE_EXPIRIES} times" in state.message
    assert "lr_init" not in state.message and "diverged" not in state.message


def test_async_a_member_diverged_with_nobody_to_copy_restarts_sensibly(local_store):
    """The first member to finish diverges while the others still train: it
    used to start again from scratch with the same seed and the settings that
    diverged, for one generation's epochs, so it was ranked with its KL/L2
    ramps below full weight."""
    cfg = tiny_config(mode="async", population=3, burn_in_epochs=4, generation_epochs=1)
    service = open_service(local_store, cfg)
    first = {g.member: g for g in service.request_work("w0", 3).leases}
    diverged = first["m000"]
    service.report(fake_train(local_store, diverged, "w0", metric=math.nan))
    restart = service.snapshot().segments["m000"]
    assert restart.generation == 1 and restart.start.fresh
    assert restart.epochs == cfg.pbt.burn_in_epochs  # the whole burn-in again
    assert restart.start.seed != diverged.start.seed
    searched = set(cfg.pbt.search_space)
    assert all(restart.hparams[k] != diverged.hparams[k] for k in searched)


def test_async_search_without_a_finite_result_ends_failed(local_store):
    """Every segment diverged until max_generations: the search used to end
    'finished' with no best member (exit status 0; finalize then failed)."""
    service = open_service(local_store, tiny_config(mode="async", population=2, max_generations=2))
    while (reply := service.request_work("w0", 2)).action == "train":
        for grant in reply.leases:
            service.report(fake_train(local_store, grant, "w0", metric=math.nan))
    state = saved_state(local_store, "search")
    assert state.best is None and len(state.best_history) == 2
    assert state.status == "failed" and service.exit_status == "failed"
    assert "without a finite result" in state.message
    assert local_store.get_json(LAYOUT.best("search.json"))["status"] == "failed"


def test_async_a_diverged_member_goes_back_to_its_own_last_good_checkpoint(local_store):
    service = open_service(local_store, tiny_config(mode="async", population=3))
    first = {g.member: g for g in service.request_work("w0", 3).leases}
    service.report(fake_train(local_store, first["m000"], "w0", metric=1.0))
    (second,) = service.request_work("w0", 1).leases  # m000, generation 1
    assert second.member == "m000" and second.generation == 1
    service.report(fake_train(local_store, second, "w0", metric=math.nan))
    again = service.snapshot().segments["m000"]
    assert again.generation == 2 and not again.start.fresh
    assert again.start.checkpoint == first["m000"].checkpoint_key
    # Its diverged checkpoint is no fallback.
    assert second.checkpoint_key not in [f.checkpoint for f in again.fallbacks]


def test_async_the_best_includes_results_of_generations_still_open(local_store):
    """The plateau stop fires as a generation closes; a member that ran ahead
    may already hold a better result of a later generation, whose
    checkpoint is kept. best/search.json used to name a worse one."""
    cfg = tiny_config(
        mode="async", max_generations=10, stop_patience_generations=2, stop_improvement=0.5
    )
    service = open_service(local_store, cfg)
    first = {g.member: g for g in service.request_work("w0", 4).leases}
    queued: dict = {}

    def next_of(member):
        queued.update({g.member: g for g in service.request_work("w0", 8).leases})
        return queued.pop(member)

    def report(grant, metric):
        service.report(fake_train(local_store, grant, "w0", metric=metric))

    report(first["m000"], 1.0)
    report(next_of("m000"), 0.95)
    report(next_of("m000"), 0.20)  # generation 2: the best result of the search
    for member in ("m001", "m002", "m003"):
        report(first[member], 1.0)  # generation 0 closes
    for member in ("m001", "m002", "m003"):
        report(next_of(member), 0.96)  # generation 1 closes: the plateau stop
    state = service.snapshot()
    assert state.status == "finished"
    assert state.best is not None
    assert (state.best.member, state.best.generation, state.best.metric) == ("m000", 2, 0.2)
    assert local_store.exists(state.best.checkpoint)


def test_async_mode_finishes_every_member(local_store):
    service = open_service(local_store, tiny_config(mode="async", max_generations=3))
    assert run_search(service, local_store, workers=3, seed=3) == 12
    state = service.snapshot()
    assert state.status == "finished" and len(state.best_history) == 3
    doc = local_store.get_json(LAYOUT.generation(1))
    assert doc["mode"] == "async" and doc["complete"] and len(doc["members"]) == 4
    # Each member with its decision (the record was first written before
    # the other members' decisions were taken); retention may have deleted
    # a checkpoint since the generation's last report.
    for member, shown in doc["members"].items():
        entry = state.entry(member, 1)
        assert entry is not None and entry.next_parent
        expected = {**asdict(entry), "metric": entry.metric}
        assert {**shown, "checkpoint_deleted": None} == {**expected, "checkpoint_deleted": None}


def test_plateau_stops_before_max_generations(local_store):
    cfg = tiny_config(max_generations=20, stop_patience_generations=2, stop_improvement=1.0)
    service = open_service(local_store, cfg)
    assert run_search(service, local_store) == 8
    assert "plateau" in service.snapshot().message


# ------------------------------------------------------------------ capacity


# Every state write is one journal entry.
STATE_KEY = f"^{re.escape(LAYOUT.journal_prefix())}"


def slow_state_store(root) -> FaultyStore:
    """A real local store whose state writes take a while, so concurrent
    changes pile up behind one write."""
    store = FaultyStore(LocalStore(root))
    store.inject("put", STATE_KEY, delay_s=0.02, times=None)
    return store


def persisted(store) -> SearchState:
    return saved_state(store, "search")


def test_concurrent_changes_share_writes_and_are_persisted_before_the_answer(tmp_path):
    store = slow_state_store(tmp_path)
    service = open_service(store, tiny_config(population=24, max_generations=2))
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while (reply := service.request_work(name, 1)).action != "done":
                for grant in reply.leases:
                    # Answered, so already in storage (not just in memory).
                    assert persisted(store).leases[grant.lease_id].status == "active"
                    service.report(fake_train(store, grant, name))
                    assert persisted(store).leases[grant.lease_id].status == "accepted"
                if reply.action == "wait":
                    time.sleep(0.005)
        except BaseException as err:  # re-raised in the test thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    state = persisted(store)
    assert state.status == "finished" and all(len(h) == 2 for h in state.history.values())
    # 48 grants + 48 reports (+ the start) in far fewer writes.
    assert (
        service._commit.changes >= 97
        and store.count("put", STATE_KEY) < service._commit.changes * 0.8
    )


def test_failed_state_write_rolls_back_and_the_retry_counts_once(tmp_path):
    store = FaultyStore(LocalStore(tmp_path))
    service = open_service(store)
    grant = service.request_work("w0", 1).leases[0]
    report = fake_train(store, grant, "w0")
    before = persisted(store).to_json()
    store.inject("put", STATE_KEY, fail="disk full")
    with pytest.raises(StorageError, match="not saved"):
        service.report(report)
    # Memory agrees with storage: the report never happened.
    assert persisted(store).to_json() == before
    assert service.snapshot().leases[grant.lease_id].status == "active"
    assert service.snapshot().history == {}
    ack = service.report(report)
    assert ack.accepted and not ack.duplicate
    assert len(persisted(store).history[grant.member]) == 1


def test_a_write_that_fails_in_the_tick_is_logged_and_the_tick_goes_on(tmp_path, caplog):
    # The server calls tick() every second; a storage hiccup in the write it
    # leads must not stop the server (before: the error escaped serve()).
    store = FaultyStore(LocalStore(tmp_path))
    service = open_service(store)
    reply, ticket = service.request_work_staged("w0", 1, "r0")  # nobody waits for it yet
    assert reply.action == "train" and ticket is not None and not ticket.settled
    store.inject("put", STATE_KEY, fail="503 SlowDown", times=1)
    service.tick()  # leads the write, which fails
    assert ticket.settled and isinstance(ticket.error, StorageError)  # the caller's error
    assert "not saved this tick" in caplog.text
    # Rolled back, and the service goes on: the worker asks again and is granted.
    assert service.snapshot().leases == {}
    service.tick()
    assert service.request_work("w0", 1, "r1").action == "train"
    assert len(persisted(store).leases) == 1


def test_after_a_lost_write_what_is_on_record_is_not_given_its_error(tmp_path):
    # A lost change is rolled back; a caller whose own change is on record
    # (a flush, a resent report) must not get that loss's error, nor the
    # server's tick, which then writes the histories still pending.
    store = FaultyStore(LocalStore(tmp_path))
    service = open_service(store, tiny_config(population=2, mode="async"))  # histories at once
    first, second = (service.request_work(w, 1).leases[0] for w in ("w0", "w1"))
    report = fake_train(store, first, "w0")
    # Its history fails twice: after its answer, and after the lost write below.
    store.inject("put", r"history\.jsonl$", fail="slow disk", times=2)
    assert service.report(report).accepted
    history = LAYOUT.history(first.member)
    assert not store.exists(history)
    store.inject("put", STATE_KEY, fail="503 SlowDown", times=1)
    with pytest.raises(StorageError, match="not saved"):
        service.report(fake_train(store, second, "w1"))  # lost: its caller retries
    service.flush()  # nothing is pending
    ack = service.report(report)  # the first worker resends (its ack was lost)
    assert ack.accepted and ack.duplicate
    assert not store.exists(history)
    service.tick()
    assert store.exists(history)


def test_a_retry_whose_leases_have_expired_is_answered_afresh(local_store):
    # A client retries a RequestWork with the same request_id until it hears
    # back. While its first answer's leases live, a retry gets them again;
    # once they have expired, it must be served like a new request (it was
    # answered WAIT, and held, with that very work queued).
    clock = ManualClock()
    service = open_service(local_store, clock=clock, lease_timeout_s=10)
    first = service.request_work("y", 1, "R").leases
    assert service.request_work("y", 1, "R").leases == first  # its answer was lost: again
    clock.advance(11)
    service.tick()  # expired: queued again
    retry = service.request_work("y", 1, "R")
    assert retry.action == "train" and retry.leases[0].lease_id != first[0].lease_id
    assert service.request_work("y", 1, "R").leases == retry.leases  # and that one replays


def test_best_search_json_appears_only_once_the_end_is_on_record(tmp_path):
    # Finalize takes best/search.json as the end of the search: a cancel
    # whose write is lost must not leave one behind, and an end whose
    # result could not be written gets it from the resumed coordinator.
    store = FaultyStore(LocalStore(tmp_path))
    service = open_service(store)
    for grant in service.request_work("w0", 4).leases:  # generation 0 closes: a best exists
        service.report(fake_train(store, grant, "w0"))
    result = LAYOUT.best("search.json")
    store.inject("put", STATE_KEY, fail="503 SlowDown", times=1)
    with pytest.raises(StorageError, match="not saved"):
        service.cancel("operator")
    assert persisted(store).status == "running" and not store.exists(result)
    store.inject("put", re.escape(result), fail="disk full", times=None)
    assert service.cancel("operator") == "cancelled"  # on record; its result is not
    assert persisted(store).status == "cancelled" and not store.exists(result)
    del service  # "kill -9"
    store.clear()
    resumed = open_service(store)
    resumed.drain()
    assert store.get_json(result)["status"] == "cancelled"


def test_state_is_pruned_and_a_pruned_state_resumes_exactly(tmp_path):
    # No plateau stop: the test needs all six generations whatever the fake metrics do.
    cfg = tiny_config(max_generations=6, stop_patience_generations=10)
    reference = LocalStore(tmp_path / "ref")
    run_search(open_service(reference, cfg), reference)
    store = LocalStore(tmp_path / "run")
    clock = ManualClock()
    first = open_service(store, cfg, clock=clock, lease_timeout_s=30)
    old = first.request_work("w9", 1).leases[0]
    old_report = fake_train(store, old, "w9")
    first.report(old_report)
    run_search(first, store, workers=2, stop_after=4 * 3 - 1)  # generation 3 opens
    state = persisted(store)
    assert state.generation == 3
    # Only leases of the current and the previous generation are remembered.
    assert {x.generation for x in state.leases.values()} <= {2, 3}
    assert all(set(r.lease_ids) <= set(state.leases) for r in state.requests.values())
    with pytest.raises(UnknownLease):  # generation 0's lease is forgotten
        first.report(old_report)
    del first  # "kill -9"
    resumed = open_service(store, cfg, clock=ManualClock(), lease_timeout_s=30)
    run_search(resumed, store, workers=3, seed=5)
    assert outcome(store, generations=6) == outcome(reference, generations=6)
    assert all(len(h) == 6 for h in persisted(store).history.values())


def test_idle_workers_are_asked_to_wait_longer(local_store):
    clock = ManualClock()
    service = open_service(local_store, clock=clock, retry_after_s=1.0)
    for grant in service.request_work("busy", 4).leases:
        assert grant.lease_id
    few = service.request_work("idle-0", 1)
    assert few.action == "wait" and few.retry_after_s == 1.0
    # A crowd arriving in the same instant hears longer hints as it grows,
    # so it does not all come back in the same instant either.
    hints = [service.request_work(f"idle-{i}", 1).retry_after_s for i in range(1000)]
    assert hints[:200] == [1.0] * 200 and 4.0 <= hints[-1] <= 10.0
    assert hints == sorted(hints)
    clock.advance(2.0)  # and once a second from all who waited lately
    crowd = service.request_work("idle-0", 1)
    assert crowd.action == "wait" and 4.0 <= crowd.retry_after_s <= 10.0


def test_lease_ids_are_random_hex_read_from_the_os_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = []
    real = os.urandom

    def counted(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(ids_module.os, "urandom", counted)
    ids = ids_module.RandomIds()
    drawn = [ids.next() for _ in range(600)]
    assert len(set(drawn)) == 600
    assert all(len(x) == 32 and int(x, 16) >= 0 and x == x.lower() for x in drawn)
    assert len(reads) == 3  # 256 ids per read


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_hand_out_its_parents_lease_ids() -> None:
    ids = ids_module.RandomIds()
    ids.next()  # the buffer holds 255 more
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without pytest's teardown
        os.write(write, ids.next().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != ids.next()  # without a fresh read, both would be the same
