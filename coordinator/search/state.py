"""The coordinator's whole state as one serialisable object.

There is exactly one copy of the population state (Katib's in-memory PBT
state, lost on every restart, is the failure mode this avoids). The service
mutates a `SearchState` under its lock and persists what changed (group
commits, before any caller is answered; `journal`); `recovery.load_state`
rebuilds it, so a restarted coordinator resumes where it stopped.

Size: history grows with population x generations in memory (the lineage
needs it); on storage closed generations are archived once. Leases, request
records and events are pruned (`prune`), so they stay proportional to the
population. Each record caches its JSON and the maps holding segments,
leases, request records and histories remember which keys changed
(`tracked`), so a write visits and re-encodes only what changed.

Vocabulary: a *segment* is one member training for one generation (the unit
of work); a *lease* grants a segment to a worker until a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Literal

from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.search.tracked import Encoded, HistoryMap, RecordMap, dumps

STATE_FORMAT = 1

SearchStatusName = Literal["running", "finished", "cancelled", "failed"]
SegmentPhase = Literal["queued", "leased", "reported", "finished"]
LeaseStatus = Literal["active", "accepted", "expired", "revoked", "abandoned"]
# The fields holding records in a `RecordMap` (the journal's record kinds).
RECORD_MAPS = ("segments", "leases", "requests")


@dataclass(frozen=True)
class StartPoint:
    """Where a segment starts: a published checkpoint, or fresh init with `seed`."""

    checkpoint: str = ""  # storage key; "" means fresh init
    sha256: str = ""
    member: str = ""  # member whose segment produced the checkpoint
    generation: int = -1
    seed: int = 0

    @property
    def fresh(self) -> bool:
        return not self.checkpoint


@dataclass(frozen=True)
class SegmentResult:
    """What a worker reported for a segment (the accepted report only)."""

    metric: float  # smoothed validation NLL; NaN = diverged or failed
    checkpoint: str  # "" if the segment failed
    sha256: str
    size: int
    lease_id: str
    worker_id: str
    outcome: Literal["succeeded", "failed"]
    start_checkpoint: str = ""  # checkpoint key actually loaded ("" = fresh init)


@dataclass
class Segment(Encoded):
    """One member training for one generation."""

    member: str
    generation: int
    epochs: int
    hparams: dict[str, float]
    start: StartPoint
    fallbacks: list[StartPoint] = field(default_factory=list)
    parent: str = ""  # member whose checkpoint `start` is (itself if kept)
    exploited: bool = False
    phase: SegmentPhase = "queued"
    lease_id: str = ""
    attempts: int = 0
    # Leases of it that expired: its worker went silent (killed, lost).
    expired: int = 0
    result: SegmentResult | None = None


@dataclass
class HistoryEntry(Encoded):
    """A finished segment plus the decision taken after it (history.jsonl)."""

    generation: int
    member: str
    parent: str
    start_checkpoint: str
    start_generation: int
    hparams: dict[str, float]
    metric: float
    checkpoint: str
    sha256: str
    exploited: bool
    next_parent: str = ""
    next_hparams: dict[str, float] = field(default_factory=dict)
    next_exploited: bool = False
    checkpoint_deleted: bool = False  # removed by retention; the key stays for lineage


@dataclass
class LeaseRecord(Encoded):
    lease_id: str
    member: str
    generation: int
    worker_id: str
    granted_at: float
    deadline: float
    status: LeaseStatus = "active"


@dataclass
class WorkerRequest(Encoded):
    """The last RequestWork of a worker, so a retried request is answered alike."""

    request_id: str
    lease_ids: list[str]


@dataclass(frozen=True)
class BestRecord:
    member: str
    generation: int
    metric: float
    checkpoint: str
    sha256: str
    hparams: dict[str, float]


@dataclass
class SearchState:
    run: str
    mode: str
    data_key: str
    data_sha256: str
    config_key: str
    status: SearchStatusName = "running"
    message: str = ""
    generation: int = 0  # sync: generation in progress; async: oldest unfinished
    revision: int = 0
    segments: dict[str, Segment] = field(default_factory=dict)  # member -> current
    # member -> entries (a tuple), oldest first; add with `history.append(member, entry)`
    history: HistoryMap = field(default_factory=HistoryMap)
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    requests: dict[str, WorkerRequest] = field(default_factory=dict)  # worker_id ->
    best: BestRecord | None = None
    best_history: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def __setattr__(self, name: str, value: Any) -> None:
        # Whatever is assigned, the record maps track their changes.
        if name in RECORD_MAPS and not isinstance(value, RecordMap):
            value = RecordMap(value)
        elif name == "history" and not isinstance(value, HistoryMap):
            value = HistoryMap(value)
        object.__setattr__(self, name, value)

    @property
    def terminal(self) -> bool:
        return self.status != "running"

    @property
    def members(self) -> list[str]:
        return sorted(self.segments)

    def published(self, member: str) -> list[HistoryEntry]:
        """The member's segments whose checkpoint still exists, newest first."""
        return [
            h
            for h in reversed(self.history.get(member, []))
            if h.checkpoint and not h.checkpoint_deleted
        ]

    def entry(self, member: str, generation: int) -> HistoryEntry | None:
        for h in reversed(self.history.get(member, [])):  # recent ones are asked most
            if h.generation == generation:
                return h
        return None

    def lineage(self, member: str, generation: int) -> list[HistoryEntry]:
        """The chain of segments that produced (member, generation), newest first."""
        chain: list[HistoryEntry] = []
        entry = self.entry(member, generation)
        while entry is not None:
            chain.append(entry)
            if not entry.start_checkpoint:
                break
            entry = self.entry(entry.parent, entry.start_generation)
        return chain

    def prune(self, keep_from_generation: int, max_ended_leases: int, max_events: int) -> None:
        """Keep the state bounded: forget ended leases of generations before
        `keep_from_generation` (and beyond `max_ended_leases`, the oldest ended
        ones), the request records naming only forgotten leases, and all but
        the newest `max_events` events.

        Ended leases are kept only to tell a duplicate report (acknowledged)
        from a late one (rejected as stale): a report of a forgotten lease is
        rejected as unknown. Every decision is already in history.jsonl and
        the generation records, so nothing else is lost.
        """
        ended = [x for x in self.leases.values() if x.status != "active"]
        drop = {x.lease_id for x in ended if x.generation < keep_from_generation}
        kept = [x for x in ended if x.lease_id not in drop]
        if len(kept) > max_ended_leases:
            kept.sort(key=lambda x: x.granted_at)
            drop.update(x.lease_id for x in kept[: len(kept) - max_ended_leases])
        for lease_id in drop:
            del self.leases[lease_id]
        if drop:
            gone = [
                worker
                for worker, r in self.requests.items()
                if not any(i in self.leases for i in r.lease_ids)
            ]
            for worker in gone:
                del self.requests[worker]
        if len(self.events) > max_events:
            del self.events[: len(self.events) - max_events]

    def to_json(self) -> str:
        """Compact JSON assembled from each record's cached text, in field
        order, so that `from_json(text).to_json() == text`."""
        parts = [f'"format":{STATE_FORMAT}']
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("segments", "leases", "requests"):
                text = _join_object(value.items(), Encoded.encoded)
            elif f.name == "history":
                text = _join_object(value.items(), _join_entries)
            else:
                text = dumps(value)
            parts.append(f"{json.dumps(f.name)}:{text}")
        return "{" + ",".join(parts) + "}"

    @classmethod
    def from_json(cls, text: str | bytes) -> SearchState:
        """Decode `to_json`'s text (format 1: also the whole-file state.json
        of runs written before the journal)."""
        try:
            doc = json.loads(text)
            if doc.pop("format", None) != STATE_FORMAT:
                raise ValueError(f"unsupported state format (expected {STATE_FORMAT})")
        except (ValueError, TypeError, AttributeError) as err:
            raise CoordinatorError(f"coordinator state is unreadable: {err}") from None
        return cls.from_doc(doc)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SearchState:
        """The state from parsed JSON (every field, records as plain dicts)."""
        try:
            return _state_from_dict(_decode_floats(doc))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CoordinatorError(f"coordinator state is unreadable: {err!r}") from None


def encode_value(value: Any) -> str:
    """Compact JSON of a plain value, non-finite floats included (as records are)."""
    return dumps(value)


def _join_object(items: Iterable[tuple[str, Any]], encode: Callable[[Any], str]) -> str:
    # encode_basestring_ascii: what json.dumps does to a str, minus its overhead.
    return "{" + ",".join([f"{_quote(key)}:{encode(value)}" for key, value in items]) + "}"


def _join_entries(entries: list[HistoryEntry]) -> str:
    return "[" + ",".join([e.encoded() for e in entries]) + "]"


def _decode_floats(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$float"}:
            return float(value["$float"])
        return {k: _decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_floats(v) for v in value]
    return value


def _segment_from_dict(d: dict[str, Any]) -> Segment:
    d = dict(d)
    d["start"] = StartPoint(**d["start"])
    d["fallbacks"] = [StartPoint(**f) for f in d["fallbacks"]]
    d["result"] = SegmentResult(**_renamed(d["result"])) if d["result"] else None
    return Segment(**d)


def _state_from_dict(d: dict[str, Any]) -> SearchState:
    d = dict(d)
    d["segments"] = {m: _segment_from_dict(s) for m, s in d["segments"].items()}
    d["history"] = {m: [HistoryEntry(**h) for h in hs] for m, hs in d["history"].items()}
    d["leases"] = {k: LeaseRecord(**v) for k, v in d["leases"].items()}
    d["requests"] = {k: WorkerRequest(**v) for k, v in d["requests"].items()}
    d["best"] = BestRecord(**d["best"]) if d["best"] else None
    return SearchState(**d)


def _renamed(result: dict[str, Any]) -> dict[str, Any]:
    """A segment result as written before `started_from` was renamed
    `start_checkpoint` (one name per concept) still loads."""
    if "started_from" in result:
        result = dict(result)
        result["start_checkpoint"] = result.pop("started_from")
    return result
