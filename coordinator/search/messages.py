"""Domain messages of the coordinator protocol (plain frozen dataclasses).

The service speaks these; `convert` turns them into protobuf messages and back,
so the servicer stays thin and the client hands users typed objects rather
than generated classes. Field meanings are documented in coordinator.proto.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from autolfads.coordinator.search.state import StartPoint

WorkAction = Literal["train", "wait", "done"]
HeartbeatAction = Literal["continue", "stop"]
StopReason = Literal["", "lease_expired", "lease_revoked", "search_cancelled", "search_finished"]
Outcome = Literal["succeeded", "failed", "abandoned"]
MemberPhase = Literal["queued", "training", "reported", "finished"]


@dataclass(frozen=True)
class Lease:
    """A lease: train `member` for `epochs` epochs of `generation`."""

    lease_id: str
    member: str
    generation: int
    hparams: dict[str, float]
    epochs: int
    start: StartPoint
    fallbacks: tuple[StartPoint, ...]
    checkpoint_key: str
    metrics_key: str
    data_key: str
    data_sha256: str
    config_key: str
    deadline: float  # seconds since the epoch, coordinator clock
    heartbeat_interval_s: float
    parent: str
    run: str


@dataclass(frozen=True)
class WorkReply:
    action: WorkAction
    leases: tuple[Lease, ...] = ()
    retry_after_s: float = 0.0
    search_state: str = "running"
    held_s: float = 0.0  # how long the coordinator held the call for work


@dataclass(frozen=True)
class HeartbeatReply:
    action: HeartbeatAction
    reason: StopReason = ""
    deadline: float = 0.0


@dataclass(frozen=True)
class SegmentReport:
    """A worker's result for one lease."""

    lease_id: str
    worker_id: str
    member: str
    generation: int
    outcome: Outcome
    hparams: dict[str, float] = field(default_factory=dict)
    epochs: tuple[tuple[int, dict[str, float]], ...] = ()
    fitness: float = math.nan  # the metric pbt.fitness names; lower is better
    checkpoint_key: str = ""
    checkpoint_sha256: str = ""
    checkpoint_size: int = 0
    corrupt: tuple[StartPoint, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class ReportAck:
    accepted: bool
    duplicate: bool = False


@dataclass(frozen=True)
class LineageStepView:
    generation: int
    member: str
    checkpoint_key: str


@dataclass(frozen=True)
class MemberView:
    member: str
    generation: int
    hparams: dict[str, float]
    metric: float
    parent: str
    phase: MemberPhase
    worker_id: str
    checkpoint_key: str
    lineage: tuple[LineageStepView, ...]
    attempts: int


@dataclass(frozen=True)
class BestView:
    member: str
    generation: int
    metric: float
    checkpoint_key: str
    hparams: dict[str, float]


@dataclass(frozen=True)
class StatusView:
    run: str
    state: str  # running / finished / cancelled / failed
    mode: str
    generation: int
    population: int
    members: tuple[MemberView, ...]
    best: BestView | None
    best_history: tuple[float, ...]
    revision: int
    max_generations: int
    message: str

    @property
    def terminal(self) -> bool:
        return self.state != "running"
