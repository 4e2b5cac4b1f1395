"""The documents people read from the bucket: a generation record and the
member histories hold exactly the state's values (floats included, a
diverged member's metric as null), one readable line per member or per
generation, and parse as plain JSON."""

from __future__ import annotations

import json
import math

import numpy as np
from coordinator_helpers import fake_train, tiny_config
from test_coordinator_service import LAYOUT, open_service

from autolfads.coordinator.search.records import history_doc
from autolfads.storage import LocalStore

CFG = tiny_config(population=4, max_generations=2)
DIVERGED = "m002"  # its generation-0 segment reports a NaN loss


def run_to_the_end(service, store) -> None:
    while True:
        reply = service.request_work("w0", 4)
        if reply.action == "done":
            return
        for grant in reply.leases:
            nan = grant.member == DIVERGED and grant.generation == 0
            service.report(fake_train(store, grant, "w0", math.nan if nan else None))


def test_a_generation_record_holds_the_state_exactly(tmp_path) -> None:
    store = LocalStore(tmp_path)
    service = open_service(store, CFG)
    run_to_the_end(service, store)
    state = service.snapshot()
    text = store.get_bytes(LAYOUT.generation(0)).decode()
    record = json.loads(text)
    assert set(record["members"]) == set(state.members)
    for member, doc in record["members"].items():
        entry = state.entry(member, 0)
        assert entry is not None
        # Floats come back bit for bit; NaN, which JSON lacks, as null.
        assert doc["metric"] == (None if member == DIVERGED else entry.metric)
        assert doc["hparams"] == doc["next"]["old_hparams"] == entry.hparams
        assert doc["next"]["new_hparams"] == entry.next_hparams
        assert doc["checkpoint"] == entry.checkpoint
    assert DIVERGED not in record["ranking"][:-1]  # a diverged member ranks last
    # Readable: one line per top-level field and one per member.
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    start = lines.index(' "members": {') + 1
    member_lines = lines[start : start + len(state.members)]
    assert lines[start + len(state.members)].startswith(" }")
    for member, line in zip(sorted(state.members), member_lines, strict=True):
        key, value = line.strip().rstrip(",").split(": ", 1)
        assert json.loads(key) == member
        assert json.loads(value) == record["members"][member]


def test_a_member_history_has_one_line_per_generation(tmp_path) -> None:
    store = LocalStore(tmp_path)
    service = open_service(store, CFG)
    run_to_the_end(service, store)
    state = service.snapshot()
    for member in state.members:
        written = store.get_bytes(LAYOUT.history(member))
        assert written == history_doc(state, member)
        lines = [json.loads(line) for line in written.decode().splitlines()]
        assert [x["generation"] for x in lines] == [0, 1]
        for line, entry in zip(lines, state.history[member], strict=True):
            assert line["hparams"] == entry.hparams
            metric = None if math.isnan(entry.metric) else entry.metric
            assert line["metric"] == metric
            assert line["parent"] == entry.parent


def test_numpy_values_are_written_as_numbers(tmp_path) -> None:
    # A hyperparameter computed with numpy (a float64 or int64 scalar) must
    # not fail the write of the whole batch.
    store = LocalStore(tmp_path)
    service = open_service(store, CFG)
    run_to_the_end(service, store)
    state = service.snapshot()
    entry = state.history["m000"][0]
    entry.hparams = {**entry.hparams, "lr_init": np.float64(0.003), "seed": np.int64(7)}
    line = json.loads(history_doc(state, "m000").decode().splitlines()[0])
    assert line["hparams"]["lr_init"] == 0.003 and line["hparams"]["seed"] == 7


def test_the_last_generation_records_no_copies_that_never_happen(tmp_path) -> None:
    # Its record used to list loser -> winner copies (and async histories an
    # exploit) for a next generation the search never runs.
    for mode in ("sync", "async"):
        store = LocalStore(tmp_path / mode)
        cfg = tiny_config(population=4, max_generations=2, mode=mode)
        service = open_service(store, cfg)
        run_to_the_end(service, store)
        state = service.snapshot()
        last = json.loads(store.get_bytes(LAYOUT.generation(1)))
        assert last["copies"] == {}, mode
        for member in state.members:
            entry = state.entry(member, 1)
            assert entry is not None and not entry.next_exploited, (mode, member)
            if mode == "sync":
                assert last["members"][member]["next"] is None, member
        assert json.loads(store.get_bytes(LAYOUT.generation(0)))["copies"], mode  # decided there
