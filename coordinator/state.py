"""The coordinator's whole state as one serialisable object.

There is exactly one copy of the population state (Katib's in-memory PBT
state, lost on every restart, is the failure mode this avoids). The service
mutates a `SearchState` under its lock and persists it atomically to
`<run>/coordinator/state.json` after every change that matters; `from_json`
rebuilds it, so a restarted coordinator resumes where it stopped.

Vocabulary: a *segment* is one member training for one generation (the unit
of work); a *lease* grants a segment to a worker until a deadline.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from autolfads.coordinator.errors import CoordinatorError

STATE_FORMAT = 1

SearchStatusName = Literal["running", "finished", "cancelled", "failed"]
SegmentPhase = Literal["queued", "leased", "reported", "finished"]
LeaseStatus = Literal["active", "accepted", "expired", "revoked", "abandoned"]


@dataclass
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


@dataclass
class SegmentResult:
    """What a worker reported for a segment (the accepted report only)."""

    metric: float  # smoothed validation NLL; NaN = diverged or failed
    checkpoint: str  # "" if the segment failed
    sha256: str
    size: int
    lease_id: str
    worker_id: str
    outcome: Literal["succeeded", "failed"]
    started_from: str = ""  # checkpoint key actually loaded ("" = fresh init)


@dataclass
class Segment:
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
    result: SegmentResult | None = None


@dataclass
class HistoryEntry:
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
class LeaseRecord:
    lease_id: str
    member: str
    generation: int
    worker_id: str
    granted_at: float
    deadline: float
    status: LeaseStatus = "active"


@dataclass
class WorkerRequest:
    """The last RequestWork of a worker, so a retried request is answered alike."""

    request_id: str
    lease_ids: list[str]


@dataclass
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
    history: dict[str, list[HistoryEntry]] = field(default_factory=dict)
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    requests: dict[str, WorkerRequest] = field(default_factory=dict)  # worker_id ->
    best: BestRecord | None = None
    best_history: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

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
        for h in self.history.get(member, []):
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

    def to_json(self) -> str:
        doc = {"format": STATE_FORMAT, **asdict(self)}
        return json.dumps(_encode_floats(doc), indent=1, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> SearchState:
        try:
            doc = _decode_floats(json.loads(text))
            if doc.pop("format", None) != STATE_FORMAT:
                raise ValueError(f"unsupported state format (expected {STATE_FORMAT})")
            return _state_from_dict(doc)
        except (ValueError, KeyError, TypeError) as err:
            raise CoordinatorError(f"coordinator state is unreadable: {err}") from None


def _encode_floats(value: Any) -> Any:
    """JSON has no NaN/inf: store non-finite floats as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, dict):
        return {k: _encode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode_floats(v) for v in value]
    return value


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
    d["result"] = SegmentResult(**d["result"]) if d["result"] else None
    return Segment(**d)


def _state_from_dict(d: dict[str, Any]) -> SearchState:
    d = dict(d)
    d["segments"] = {m: _segment_from_dict(s) for m, s in d["segments"].items()}
    d["history"] = {m: [HistoryEntry(**h) for h in hs] for m, hs in d["history"].items()}
    d["leases"] = {k: LeaseRecord(**v) for k, v in d["leases"].items()}
    d["requests"] = {k: WorkerRequest(**v) for k, v in d["requests"].items()}
    d["best"] = BestRecord(**d["best"]) if d["best"] else None
    return SearchState(**d)
