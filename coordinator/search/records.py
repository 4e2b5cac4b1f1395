"""The search's decisions, written to the run layout for people to read.

    <run>/generations/gen-0003.json     ranking, who copied whom, old/new hparams
    <run>/members/<member>/history.jsonl one line per finished segment
    <run>/best/search.json              the best member when the search ends

Together with the checkpoints these reconstruct the search from the bucket
alone. Every document is a pure function of the state, so writing one again
after a coordinator restart produces the same bytes. JSON has no NaN: a
diverged member's metric is written as null.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from json.encoder import encode_basestring_ascii as _quote  # the keys of the outer levels
from typing import Any

import orjson

from autolfads.coordinator.search.policy import GenerationPlan, ranking_key
from autolfads.coordinator.search.state import HistoryEntry, SearchState


def json_metric(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _line(value: Any) -> str:
    """One compact line of sorted JSON.

    orjson, not json's C encoder: generation records and member histories
    are rendered under the service lock when a generation closes, most of
    that time in the encoder. With orjson, taking a 1,024-member close's
    batch holds the lock 61-129 ms instead of 110-206 ms
    (benchmarks/bench_state_write.py, `close_under_the_lock_ms`). numpy
    scalars pass as their values; a non-finite float becomes null (the
    documents never hold one: `json_metric`)."""
    return orjson.dumps(value, option=_LINE_OPTIONS).decode()


_LINE_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
_ENTRY_FIELDS = tuple(f.name for f in fields(HistoryEntry))


def _dumps(doc: dict[str, Any]) -> bytes:
    """Readable JSON: one line per field, and one per key of a nested
    object (a member under "members"), each line compact."""
    return (_lines(doc, 0) + "\n").encode()


class _Encoded(str):
    """JSON text already rendered as `_lines` would at its depth."""


def _lines(value: Any, depth: int) -> str:
    if isinstance(value, _Encoded):
        return value
    if not isinstance(value, dict) or not value or depth == 2:
        return _line(value)
    pad = " " * (depth + 1)
    items = [f"{pad}{_quote(k)}: {_lines(v, depth + 1)}" for k, v in sorted(value.items())]
    return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"


def _entry_doc(entry: HistoryEntry) -> dict[str, Any]:
    # Not dataclasses.asdict: its deep copy is most of a history line's cost.
    doc = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    doc["metric"] = json_metric(entry.metric)
    return doc


def _events_of(state: SearchState, generation: int) -> list[dict[str, Any]]:
    return [e for e in state.events if e.get("generation") == generation]


def sync_generation_doc(state: SearchState, plan: GenerationPlan, stop_reason: str) -> bytes:
    """gen-NNNN.json of a synchronous generation, after `plan_generation`."""
    g = plan.generation
    members: dict[str, Any] = {}
    for member in state.members:
        entry = state.entry(member, g)
        assert entry is not None, f"{member} has no result for generation {g}"
        step = plan.plans[member]
        members[member] = {
            "metric": json_metric(entry.metric),
            "checkpoint": entry.checkpoint,
            "sha256": entry.sha256,
            "start": {"member": entry.parent, "generation": entry.start_generation},
            "hparams": entry.hparams,
            # The search's last generation has no next one: nothing is copied.
            "next": None
            if stop_reason
            else {
                "parent": step.parent,
                "exploited": step.exploited,
                "checkpoint": step.checkpoint,
                "old_hparams": entry.hparams,
                "new_hparams": step.hparams,
            },
        }
    doc = {
        "run": state.run,
        "mode": "sync",
        "generation": g,
        "ranking": plan.ranking,
        "best_member": plan.best_member,
        "best_metric": json_metric(plan.best_metric),
        "copies": {}
        if stop_reason
        else {m: p.parent for m, p in sorted(plan.plans.items()) if p.exploited},
        "members": members,
        "stop": stop_reason,
        "events": _events_of(state, g),
    }
    return _dumps(doc)


def async_generation_doc(state: SearchState, generation: int) -> bytes:
    """gen-NNNN.json in async mode: each member's decision as it was taken."""
    entries = [e for m in state.members if (e := state.entry(m, generation)) is not None]
    ranked = sorted(entries, key=lambda e: ranking_key(e.member, e.metric))
    doc = {
        "run": state.run,
        "mode": "async",
        "generation": generation,
        "complete": len(entries) == len(state.members),
        "ranking": [e.member for e in ranked],
        "copies": {e.member: e.next_parent for e in entries if e.next_exploited},
        # Re-rendered at every write while the generation is open: each
        # member's text is its history line, remembered until it changes.
        "members": {e.member: _Encoded(e.derived("history_line", _history_line)) for e in entries},
        "events": _events_of(state, generation),
    }
    return _dumps(doc)


def history_doc(state: SearchState, member: str) -> bytes:
    """history.jsonl: S3 cannot append, so the whole object is rewritten
    (from each entry's remembered line: a generation's close re-renders only
    the entries that changed, not population x generations of them)."""
    lines = [e.derived("history_line", _history_line) for e in state.history.get(member, [])]
    return ("\n".join(lines) + "\n").encode()


def _history_line(entry: HistoryEntry) -> str:
    return _line(_entry_doc(entry))


def best_doc(state: SearchState) -> bytes:
    best = state.best
    doc: dict[str, Any] = {
        "run": state.run,
        "status": state.status,
        "message": state.message,
        "best_history": [json_metric(v) for v in state.best_history],
    }
    if best is not None:
        doc["best"] = {**asdict(best), "metric": json_metric(best.metric)}
        doc["lineage"] = [
            {"generation": e.generation, "member": e.member, "checkpoint": e.checkpoint}
            for e in state.lineage(best.member, best.generation)
        ]
    return _dumps(doc)
