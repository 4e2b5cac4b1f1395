"""The journal's images share what a write did not change (`Layered`): each
map must read exactly as a dict changed in place would (values, length,
membership, and the order a snapshot lists them in), and every older map
must stay as it was, since a failed write rolls back to one and a snapshot
encodes one while later writes go on."""

from __future__ import annotations

import gc
import random
import weakref

import pytest

from autolfads.coordinator.search.layered import MAX_DEPTH, Layered


@pytest.mark.parametrize("seed", range(20))
def test_a_layered_map_reads_as_a_dict_changed_in_place_and_older_ones_stay(seed):
    rng = random.Random(seed)
    start = {f"k{i}": f"v{i}" for i in range(rng.randrange(0, 30))}
    model, layered = dict(start), Layered(start)
    older: list[tuple[dict[str, str], Layered[str, str]]] = [(dict(model), layered)]
    for step in range(3 * MAX_DEPTH):  # flattened along the way, more than once
        put = {f"k{rng.randrange(60)}": f"s{step}.{j}" for j in range(rng.randrange(0, 6))}
        drop = [f"k{rng.randrange(60)}" for _ in range(rng.randrange(0, 6))]
        layered = layered.changed(put, drop)
        model.update(put)
        for key in drop:
            model.pop(key, None)
        assert list(layered) == list(model)  # the order a snapshot lists
        assert dict(layered.items()) == model and len(layered) == len(model)
        assert all((f"k{i}" in layered) == (f"k{i}" in model) for i in range(60))
        assert all(layered.get(f"k{i}") == model.get(f"k{i}") for i in range(60))
        older.append((dict(model), layered))
    for expected, kept in older:
        assert list(kept.items()) == list(expected.items())


def test_a_key_dropped_then_put_again_goes_last():
    layered = Layered({"a": "1", "b": "2"}).changed({}, ["a"]).changed({"a": "3"}, [])
    assert list(layered.items()) == [("b", "2"), ("a", "3")]
    assert len(layered) == 2


def test_a_layered_map_is_taken_as_is_and_a_dict_is_copied():
    base = {"a": "1"}
    copied = Layered.of(base)
    base["b"] = "2"  # the caller's dict changes later
    assert dict(copied.items()) == {"a": "1"}
    assert Layered.of(copied) is copied
    assert copied.changed({}, []) is copied  # no empty layers to walk or copy


def test_older_layers_are_freed_once_copied_into_one():
    # Every MAX_DEPTH-th change copies the map into one layer, so a long
    # search keeps no chain of every change it ever made.
    first = Layered({"a": "0"}).changed({"a": "1"}, [])
    ref = weakref.ref(first)
    layered = first
    for i in range(MAX_DEPTH):
        layered = layered.changed({"a": str(i + 2)}, [])
    del first
    gc.collect()
    assert ref() is None
    assert dict(layered.items()) == {"a": str(MAX_DEPTH + 1)}
