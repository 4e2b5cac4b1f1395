"""The persisted coordinator state: lossless JSON (NaN included), lineage,
and a deterministic first generation."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
from coordinator_helpers import fake_train, open_tiny_search, tiny_config

from autolfads.config import parse_config
from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.search.population import initial_segments
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.search.state import STATE_FORMAT, SearchState, SegmentResult
from autolfads.errors import ConfigError


def _state_after_two_generations(store) -> SearchState:
    service = CoordinatorService.open_search(
        tiny_config(), store, "search/data/" + "ab" * 32 + ".h5", "ab" * 32
    )
    for _ in range(2):
        grants = service.request_work("w0", 4).leases
        for i, grant in enumerate(grants):
            metric = math.nan if i == 3 else None  # one diverged member
            service.report(fake_train(store, grant, "w0", metric=metric))
    return service.snapshot()


def test_round_trip_is_lossless_including_nan(local_store):
    state = _state_after_two_generations(local_store)
    text = state.to_json()
    assert "NaN" not in text  # strict JSON
    again = SearchState.from_json(text)
    assert again.to_json() == text
    assert any(math.isnan(h.metric) for hs in again.history.values() for h in hs)


def test_a_state_written_with_the_old_result_field_name_still_loads(local_store):
    """Segment results once named the loaded checkpoint `started_from`."""
    service = open_tiny_search(local_store)
    leases = service.request_work("w0", 4).leases
    for lease in leases[:2]:  # two reported, two still training
        service.report(fake_train(local_store, lease, "w0"))
    state = service.snapshot()
    doc = json.loads(state.to_json())
    results = [s["result"] for s in doc["segments"].values() if s["result"]]
    assert results, "the fixture must leave reported segments"
    for result in results:
        result["started_from"] = result.pop("start_checkpoint")
    again = SearchState.from_json(json.dumps(doc))
    assert again.to_json() == state.to_json()


def test_lineage_follows_copies_back_to_fresh_init(local_store):
    state = _state_after_two_generations(local_store)
    for member in state.members:
        chain = state.lineage(member, 1)
        assert [e.generation for e in chain] == [1, 0]
        assert chain[0].parent == chain[1].member
        assert chain[1].start_checkpoint == ""  # generation 0 starts fresh


def test_diverged_member_copies_a_finite_one(local_store):
    state = _state_after_two_generations(local_store)
    diverged = [h for hs in state.history.values() for h in hs if math.isnan(h.metric)]
    assert diverged
    for entry in diverged:
        if entry.generation == 0:
            assert entry.next_exploited and entry.next_parent != entry.member


def test_initial_generation_is_a_function_of_the_seed():
    first, again = initial_segments(tiny_config()), initial_segments(tiny_config())
    other = initial_segments(tiny_config(seed=8))
    assert [s.hparams for s in first.values()] == [s.hparams for s in again.values()]
    assert [s.start.seed for s in first.values()] != [s.start.seed for s in other.values()]
    assert len({s.start.seed for s in first.values()}) == 4
    assert all(s.epochs == 2 and s.start.fresh for s in first.values())


def test_first_member_can_start_at_the_training_values():
    sampled = initial_segments(tiny_config())
    cfg = tiny_config(first_member="training")
    seeded = initial_segments(cfg)
    assert seeded["m000"].hparams == cfg.training.hparams()
    assert sampled["m000"].hparams != cfg.training.hparams()
    # The other members draw exactly what they would have drawn anyway.
    for member in ("m001", "m002", "m003"):
        assert seeded[member].hparams == sampled[member].hparams
        assert seeded[member].start == sampled[member].start


def test_first_member_training_values_must_lie_in_the_search_space():
    with pytest.raises(ConfigError, match=r"training.kl_ic_scale 1e-07, outside"):
        parse_config(
            {
                "data": {"path": "x.h5"},
                "training": {"kl_ic_scale": 1e-7},
                "pbt": {"first_member": "training"},
            }
        )


@pytest.mark.parametrize("text", ["{", "[]", '{"format": 99}', '{"format": 1, "run": "x"}'])
def test_unreadable_state_is_one_clear_error(text):
    with pytest.raises(CoordinatorError, match="coordinator state is unreadable"):
        SearchState.from_json(text)


def test_cached_encoding_tracks_every_change(local_store):
    """Records re-encode only when changed: after leases, expiries, reports,
    decisions and checkpoint retirement the cached JSON must still equal an
    encoding built from scratch."""
    clock = ManualClock()
    service = CoordinatorService.open_search(
        tiny_config(max_generations=4, keep_generations=1),
        local_store,
        "search/data/" + "ab" * 32 + ".h5",
        "ab" * 32,
        clock=clock,
        lease_timeout_s=10,
    )
    lost = service.request_work("w-lost", 1).leases[0]
    clock.advance(11)  # expires, so its segment and lease change in place
    while (reply := service.request_work("w0", 4)).action != "done":
        for grant in reply.leases:
            service.report(fake_train(local_store, grant, "w0"))
        state = service._state
        fresh = {"format": STATE_FORMAT, **asdict(state)}
        assert json.loads(state.to_json()) == json.loads(json.dumps(fresh))
    assert lost.lease_id not in service._state.leases  # ended generations ago: pruned
    assert any(h.checkpoint_deleted for hs in service._state.history.values() for h in hs)


def _reference_doc(value):
    """A record as the format defines it, built independently:
    dataclasses.asdict, non-finite floats as {"$float": repr}."""

    def floats(v):
        if isinstance(v, float) and not math.isfinite(v):
            return {"$float": repr(v)}
        if isinstance(v, dict):
            return {k: floats(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [floats(x) for x in v]
        return float(v) if isinstance(v, float) else v

    return floats(asdict(value))


def _same_json(a, b) -> bool:
    """Equal as parsed JSON, floats bit for bit (no tolerance)."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and a.hex() == b.hex()
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_record_texts_hold_the_format_and_one_spelling_per_record(local_store):
    """A record's journal text parses back to exactly its fields in the
    format (fields in order, every float bit for bit, non-finite ones as
    {"$float": ...}, numpy floats as plain ones), whichever way it was
    encoded: orjson on the record, or the Python walk that records holding
    a non-finite or numpy float take. Both give the same bytes for the same
    record, so a record never changes its text by changing path. Entries
    spelled by json's encoder (versions before orjson) still load."""
    import numpy as np

    from autolfads.coordinator.search.tracked import dumps

    state = _state_after_two_generations(local_store)
    segment = next(iter(state.segments.values()))
    segment.hparams = {"lr_init": np.float64(0.004), "dropout_rate": math.inf, "cd_rate": -math.inf}
    segment.result = SegmentResult(math.nan, "", "", 0, "l1", "w0", "failed")
    small = list(state.segments.values())[1]
    small.hparams = {"kl_ic_scale": 5.217545943649553e-05, "lr_init": 1e-07, "cd_rate": 1e22}
    # A diverged member: finite hyperparameters, NaN only in the nested result.
    diverged = list(state.segments.values())[2]
    diverged.result = SegmentResult(math.nan, "", "", 0, "l2", "w0", "failed")
    entries = [h for hs in state.history.values() for h in hs]
    records = [*state.segments.values(), *state.leases.values(), *state.requests.values(), *entries]
    assert any(math.isnan(h.metric) for h in entries)
    for record in records:
        text = record.encoded()
        assert _same_json(json.loads(text), _reference_doc(record)), text
        assert text == dumps(record)  # the walk's bytes
    assert json.loads(segment.encoded())["hparams"]["lr_init"] == 0.004
    assert '"result":{"metric":{"$float":"nan"}' in diverged.encoded()
    assert state.best is not None
    assert SearchState.from_json(state.to_json()).to_json() == state.to_json()
    old = {"format": STATE_FORMAT, **_reference_doc(state)}
    spelled_by_json = json.dumps(old, separators=(",", ":"), allow_nan=False)
    assert SearchState.from_json(spelled_by_json).to_json() == state.to_json()
