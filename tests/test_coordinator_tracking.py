"""Writes cost what changed: the record maps (and the history, by member)
collect the keys changed since the last journal entry, and the entry built from them must be exactly the
one a comparison of every record gives, whatever the coordinator went
through (leases, retries, heartbeats, expiries, failures, duplicate
reports, pruning, a failed write and its rollback, sync and async). The
same drive checks RequestWork's indexes, kept up to date call by call,
against indexes rebuilt from the state."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from typing import Any

import pytest
from coordinator_helpers import fake_train, open_tiny_search, saved_state, tiny_config

from autolfads.coordinator.search import population as pop
from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.search.journal import RECORD_KINDS
from autolfads.coordinator.search.state import HistoryEntry, LeaseRecord
from autolfads.coordinator.search.tracked import Encoded, HistoryMap, RecordMap, dumps
from autolfads.coordinator.search.views import status_view
from autolfads.coordinator.wire.convert import MemberProtos, status_to_proto
from autolfads.storage import FaultyStore, LocalStore
from autolfads.storage.errors import StorageError


def _lease(lease_id: str) -> LeaseRecord:
    return LeaseRecord(lease_id, "m000", 0, "w0", 0.0, 1.0)


@dataclasses.dataclass
class _Loose(Encoded):
    """A record whose floats the encoder cannot find from the types."""

    name: str
    extra: Any
    pair: int | float


@dataclasses.dataclass
class _Typed(Encoded):
    name: str
    scores: dict[str, float]
    best: float | None = None
    seen: tuple[float, ...] = ()


@pytest.mark.parametrize(
    "record",
    [
        _Loose("a", {"x": math.nan}, 1),
        _Loose("b", [math.inf], -math.inf),
        _Typed("c", {"x": 1.5, "y": math.nan}),
        _Typed("d", {}, -math.inf),
        _Typed("e", {}, None, (0.5, math.nan)),
    ],
)
def test_a_non_finite_float_is_never_written_as_null(record):
    """orjson writes NaN as null and would lose a diverged member's metric:
    a record holding one anywhere (a typed field, a dict, a tuple, a field
    typed Any or a union the checks cannot tell apart) is encoded by the
    walk, which keeps the format's {"$float": ...}."""
    text = record.encoded()
    assert text == dumps(record)  # the walk's text
    assert '{"$float":"' in text


def test_a_record_of_finite_floats_is_spelled_alike_by_both_encoders():
    record = _Typed("f", {"x": 5e-05, "y": 1e22}, 0.1, (2.5e-06,))
    assert record.encoded() == dumps(record)
    assert json.loads(record.encoded()) == {
        "name": "f", "scores": {"x": 5e-05, "y": 1e22}, "best": 0.1, "seen": [2.5e-06]
    }  # fmt: skip


def test_every_way_of_changing_a_map_marks_the_key():
    records = RecordMap({"a": _lease("a"), "b": _lease("b")})
    assert records.touched is None  # new: anything may have changed
    records.touched = {}
    records["c"] = _lease("c")
    held = records["a"]
    held.status = "expired"  # in place, through the record
    del records["b"]
    records.pop("c")
    records.pop("missing", None)  # nothing changed
    records.setdefault("d", _lease("d"))
    records.setdefault("a", _lease("x"))  # present: nothing changed
    records.update(e=_lease("e"))
    records |= {"f": _lease("f")}
    key, _ = records.popitem()
    assert list(records.touched) == ["c", "a", "b", "d", "e", "f"] and key == "f"
    records.clear()
    assert records.touched is None


def _history_entry(member: str, generation: int) -> HistoryEntry:
    return HistoryEntry(generation, member, member, "", -1, {}, 1.0, "ck", "sha", False)


def test_a_remembered_score_follows_its_entry():
    entry = _history_entry("m0", 0)
    first = pop.score_of(entry)
    assert pop.score_of(entry) is first  # remembered, not rebuilt
    entry.metric = 0.5  # any assignment forgets it
    entry.hparams = {"lr_init": 1e-3}
    assert (pop.score_of(entry).metric, pop.score_of(entry).hparams) == (0.5, {"lr_init": 1e-3})
    clone = dataclasses.replace(entry)  # a new record starts with nothing remembered
    clone.checkpoint = "other"
    assert pop.score_of(clone).checkpoint == "other" != pop.score_of(entry).checkpoint


def test_appending_or_changing_history_marks_the_member():
    history = HistoryMap({"m0": [_history_entry("m0", 0)]})
    assert history.touched is None
    history.touched = {}
    history.append("m1", _history_entry("m1", 0))  # a new member
    history.append("m2", _history_entry("m2", 0))
    history.touched = {}
    history.append("m2", _history_entry("m2", 1))
    history["m0"][0].checkpoint_deleted = True  # an old entry, in place
    history["m1"][-1].next_parent = "m0"  # a decision
    assert list(history.touched) == ["m2", "m0", "m1"]
    assert [e.generation for e in history["m2"]] == [0, 1]
    with pytest.raises(AttributeError):  # only `append` adds: never unseen
        history["m2"].append(_history_entry("m2", 2))
    copy = HistoryMap(history)  # a map rebuilt from another's lists
    assert copy.touched is None
    copy.touched = {}
    copy["m2"][0].exploited = True  # its entries now report to it
    assert list(copy.touched) == ["m2"]


def _entry(batch) -> dict:
    return json.loads(batch.entry.partition(b"\n")[2])


def _check_incremental_equals_full(service) -> None:
    """Take the next entry both ways from the same base; leave the service
    as it was (its own next write still sees every change)."""
    state, base, writer = service._state, service._commit.image, service._commit.writer
    maps = [getattr(state, kind) for kind in RECORD_KINDS] + [state.history]
    saved = [None if m.touched is None else dict(m.touched) for m in maps]
    quick = writer.take(state, base, ())
    for m in maps:
        m.touched = None  # anything may have changed: every record compared
    slow = writer.take(state, base, ())
    for m, touched in zip(maps, saved, strict=True):
        m.touched = touched
    a, b = _entry(quick), _entry(slow)
    for kind in RECORD_KINDS:
        assert dict(quick.image.records[kind]) == dict(slow.image.records[kind]), kind
        assert a[f"put_{kind}"] == b[f"put_{kind}"], kind
        assert sorted(a[f"drop_{kind}"]) == sorted(b[f"drop_{kind}"]), kind
    assert dict(quick.image.history) == dict(slow.image.history)
    assert a["put_history"] == b["put_history"]


def _check_dispatch_matches_the_state(service) -> None:
    """The RequestWork indexes, kept up to date call by call, equal the
    ones rebuilt from the state."""
    dispatch = service._dispatch
    state = service._state
    kept = (dispatch._queue, dispatch._held)
    dispatch.invalidate()
    rebuilt = ([s.member for s in dispatch.queued(state)], dispatch.held(state, "w0"))
    if kept[0] is not None:
        assert kept[0] == rebuilt[0]
    if kept[1] is not None:
        assert _nonzero(kept[1]) == _nonzero(dispatch._held)
    dispatch._queue, dispatch._held = kept


def _check_status_matches_a_fresh_view(service, protos: MemberProtos) -> None:
    """The cached status (lineages built on the previous view's, members'
    messages reused) equals one built from scratch."""
    cached = service.status()
    fresh = status_view(service._state, service.cfg.pbt.max_generations)
    assert cached == fresh
    assert status_to_proto(cached, protos) == status_to_proto(fresh)


def _nonzero(counts) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v != 0}


def _drive(service, store, clock, rng: random.Random) -> dict[str, int]:
    """Random calls of three workers until the search ends; how often each
    kind of event happened. The status is looked at after some calls (its
    own generator: the calls stay those of `rng`), so some views build on
    the last one and some on a view several generations old."""
    looks = random.Random(7)
    protos = MemberProtos()
    seen = {"rolled back": 0, "refused": 0, "expired": 0, "duplicate": 0}
    held: dict[str, list] = {f"w{i}": [] for i in range(3)}
    sent: list = []
    last_request: dict[str, str] = {}
    for step in range(2000):
        worker = rng.choice(sorted(held))
        action = rng.random()
        try:
            if action < 0.3:
                retry = worker in last_request and rng.random() < 0.2
                request_id = last_request[worker] if retry else f"{worker}-{step}"
                last_request[worker] = request_id
                reply = service.request_work(worker, rng.choice([1, 2]), request_id)
                if reply.action == "done" and service.terminal:
                    return seen
                held[worker] += [g for g in reply.leases if g not in held[worker]]
            elif action < 0.65 and held[worker]:
                grant = held[worker].pop(rng.randrange(len(held[worker])))
                metric = math.nan if rng.random() < 0.1 else None
                report = fake_train(store, grant, worker, metric=metric)
                if rng.random() < 0.1:
                    report = dataclasses.replace(report, outcome="failed", checkpoint_key="")
                sent.append(report)
                service.report(report)
            elif action < 0.75 and sent:
                service.report(rng.choice(sent))  # a duplicate or a late one
                seen["duplicate"] += 1
            elif action < 0.85 and held[worker]:
                grant = rng.choice(held[worker])
                service.heartbeat(grant.lease_id, worker, 1)
            elif action < 0.9:
                clock.advance(service.lease_timeout_s + 1)  # every lease held expires
                service.tick()
                held = {w: [] for w in held}
                seen["expired"] += 1
            elif action < 0.93:
                store.inject("put", "/coordinator/journal/", fail="disk full")  # the next write
            else:
                service.tick()
        except StorageError:
            seen["rolled back"] += 1  # the write failed and was rolled back; carry on
        except CoordinatorError:
            seen["refused"] += 1  # e.g. a report of a lease that expired
        _check_incremental_equals_full(service)
        _check_dispatch_matches_the_state(service)
        if looks.random() < 0.3:
            _check_status_matches_a_fresh_view(service, protos)
    pytest.fail("the search did not end")


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_incremental_entry_equals_a_full_comparison(tmp_path, mode, seed):
    store = FaultyStore(LocalStore(tmp_path))
    clock = ManualClock()
    cfg = tiny_config(mode=mode, population=3, max_generations=4, keep_generations=1)
    service = open_tiny_search(store, cfg, clock=clock, lease_timeout_s=5, snapshot_every=4)
    seen = _drive(service, store, clock, random.Random(seed))
    assert min(seen.values()) > 0, seen
    assert service._commit.writes > 20
    service.tick()
    recovered = saved_state(store, "search")
    assert json.loads(recovered.to_json()) == json.loads(service.snapshot().to_json())
