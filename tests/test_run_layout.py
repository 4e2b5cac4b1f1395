"""The run layout users browse, identifier validation, and checkpoint
garbage collection."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autolfads.storage import (
    InvalidKey,
    LocalStore,
    RunLayout,
    StorageError,
    gc_checkpoints,
    select_checkpoints_to_delete,
    validate_identifier,
    validate_key,
)

SHA = hashlib.sha256(b"data").hexdigest()


def test_documented_keys() -> None:
    layout = RunLayout("chaotic-rnn-demo")
    assert layout.config() == "chaotic-rnn-demo/config.yaml"
    assert layout.data(SHA) == f"chaotic-rnn-demo/data/{SHA}.h5"
    assert layout.member_dir("m007") == "chaotic-rnn-demo/members/m007/"
    assert layout.checkpoint("m007", 7) == "chaotic-rnn-demo/members/m007/gen-0007/checkpoint.pt"
    assert layout.member_metrics("m007", 7) == "chaotic-rnn-demo/members/m007/gen-0007/metrics.json"
    assert layout.member_file("m007", 12345, "lfads_output.h5") == (
        "chaotic-rnn-demo/members/m007/gen-12345/lfads_output.h5"
    )
    assert layout.history("m007") == "chaotic-rnn-demo/members/m007/history.jsonl"
    assert layout.generation(7) == "chaotic-rnn-demo/generations/gen-0007.json"
    assert layout.state() == "chaotic-rnn-demo/coordinator/state.json"
    assert layout.best("checkpoint.pt") == "chaotic-rnn-demo/best/checkpoint.pt"
    assert layout.best("report/index.html") == "chaotic-rnn-demo/best/report/index.html"
    # Zero padding keeps the console's alphabetical order chronological.
    gens = [layout.generation(g) for g in (10, 2, 0, 100)]
    assert sorted(gens) == [layout.generation(g) for g in (0, 2, 10, 100)]


def test_parse_helpers_round_trip() -> None:
    layout = RunLayout("demo")
    assert layout.parse_checkpoint_key(layout.checkpoint("m003", 7)) == ("m003", 7)
    assert layout.parse_generation_key(layout.generation(42)) == 42
    for not_a_checkpoint in (
        "other/members/m003/gen-0007/checkpoint.pt",  # another run
        "demo/members/m003/gen-0007/metrics.json",
        "demo/members/m003/gen-7/checkpoint.pt",
        "demo/members/m003/gen-00007/checkpoint.pt",  # not the canonical spelling
        "demo/members/../gen-0007/checkpoint.pt",
        "demo/best/checkpoint.pt",
    ):
        with pytest.raises(InvalidKey, match="not a checkpoint key"):
            layout.parse_checkpoint_key(not_a_checkpoint)
    with pytest.raises(InvalidKey):
        layout.parse_generation_key("demo/generations/latest.json")


HOSTILE_NAMES = [
    "../x",
    "..",
    ".",
    "/etc",
    "a/b",
    "a\\b",
    "",
    "-starts-with-dash",
    ".hidden",
    "tab\there",
    "nul\x00",
    "newline\n",
    "esc\x1b[31m",
    "x" * 65,
    "caf\u00e9",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_rejected_naming_kind_and_value(name: str) -> None:
    with pytest.raises(InvalidKey, match="invalid run name") as caught:
        RunLayout(name)
    assert "\n" not in str(caught.value)
    with pytest.raises(InvalidKey, match="invalid member id"):
        RunLayout("demo").checkpoint(name, 1)
    with pytest.raises(InvalidKey, match="invalid member id"):
        RunLayout("demo").history(name)


@pytest.mark.parametrize("generation", [-1, 1.5, "7", True, None])
def test_bad_generations_are_rejected(generation) -> None:
    with pytest.raises(InvalidKey, match="invalid generation"):
        RunLayout("demo").checkpoint("m001", generation)


def test_best_and_data_names_cannot_escape() -> None:
    layout = RunLayout("demo")
    for name in ("../../other/config.yaml", "/abs", "report/../../x", ""):
        with pytest.raises(InvalidKey):
            layout.best(name)
    with pytest.raises(InvalidKey, match="SHA-256"):
        layout.data("../../etc/passwd")
    with pytest.raises(InvalidKey, match="suffix"):
        layout.data(SHA, suffix="/../x")


@given(run=st.text(max_size=70), member=st.text(max_size=70), generation=st.integers(0, 10**6))
def test_any_accepted_name_stays_inside_its_run(run: str, member: str, generation: int) -> None:
    try:
        layout = RunLayout(run)
        key = layout.checkpoint(member, generation)
    except InvalidKey:
        return
    assert key.startswith(f"{run}/members/{member}/")
    assert validate_key(key) == key
    assert ".." not in key.split("/") and not key.startswith("/")
    assert layout.parse_checkpoint_key(key) == (member, generation)


@given(st.text(max_size=80))
def test_identifier_is_validated_or_rejected_never_altered(value: str) -> None:
    try:
        assert validate_identifier("member id", value) == value
    except InvalidKey as err:
        assert "member id" in str(err)
        return
    assert "/" not in value and not value.startswith(".")
    assert all(ch.isascii() and ch.isprintable() for ch in value)


# ---- retention -----------------------------------------------------------------------


def ckpts(layout: RunLayout, member: str, generations) -> list[str]:
    return [layout.checkpoint(member, g) for g in generations]


def test_keeps_newest_generations_per_member() -> None:
    layout = RunLayout("demo")
    existing = ckpts(layout, "m001", range(6)) + ckpts(layout, "m002", [0, 3])
    doomed = select_checkpoints_to_delete(existing, keep_generations=2, protected=[])
    assert doomed == ckpts(layout, "m001", range(4))


def test_protected_checkpoints_survive() -> None:
    layout = RunLayout("demo")
    existing = ckpts(layout, "m001", range(6)) + ckpts(layout, "m002", range(6))
    # m002 copied m001's generation-1 weights; the best is m002 at generation 2.
    protected = [
        layout.checkpoint("m001", 1),
        layout.checkpoint("m002", 2),
        "demo/best/checkpoint.pt",
    ]
    doomed = select_checkpoints_to_delete(existing, keep_generations=1, protected=protected)
    assert doomed == sorted(
        ckpts(layout, "m001", [0, 2, 3, 4]) + ckpts(layout, "m002", [0, 1, 3, 4])
    )


def test_generation_order_is_numeric_and_runs_are_separate() -> None:
    a, b = RunLayout("run-a"), RunLayout("run-b")
    existing = ckpts(a, "m001", [9, 10, 11]) + ckpts(b, "m001", [1])
    assert select_checkpoints_to_delete(existing, 2, []) == [a.checkpoint("m001", 9)]
    assert select_checkpoints_to_delete(existing, 5, []) == []


def test_retention_input_errors() -> None:
    with pytest.raises(StorageError, match=">= 1"):
        select_checkpoints_to_delete([], 0, [])
    with pytest.raises(InvalidKey, match="not a checkpoint key"):
        select_checkpoints_to_delete(["demo/members/m001/gen-0001/metrics.json"], 1, [])


def test_gc_deletes_only_old_unprotected_checkpoints(local_store: LocalStore) -> None:
    layout = RunLayout("demo")
    for member in ("m001", "m002"):
        for generation in range(4):
            local_store.put_bytes(layout.checkpoint(member, generation), b"weights")
            local_store.put_json(layout.member_metrics(member, generation), {"valid_nll": 1.0})
        local_store.put_bytes(layout.history(member), b"{}\n")
    local_store.put_bytes(layout.best("checkpoint.pt"), b"weights")
    protected = [layout.checkpoint("m002", 0)]
    deleted = gc_checkpoints(local_store, layout, keep_generations=2, protected=protected)
    assert deleted == ckpts(layout, "m001", [0, 1]) + ckpts(layout, "m002", [1])
    remaining = {i.key for i in local_store.list(layout.prefix())}
    assert not remaining & set(deleted)
    # Metrics, histories and the best are the record of the search: kept.
    assert layout.member_metrics("m001", 0) in remaining
    assert layout.history("m001") in remaining and layout.best("checkpoint.pt") in remaining
    assert gc_checkpoints(local_store, layout, 2, protected) == []  # idempotent
