"""What a trainer holds between leases: its leased segments and their sessions.

A `LeasedSegment` is a segment this worker holds a lease on plus its progress
here; `SessionPool` keeps training sessions of the same run for the next
lease; `metrics_doc` is the segment's `metrics.json`, the marker that its
checkpoint is complete. `worker.py` is the loop that uses them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from autolfads.config import RunConfig
from autolfads.coordinator.search.messages import Lease
from autolfads.coordinator.search.state import StartPoint
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.model.session import TrainingSession


@dataclass
class LeasedSegment:
    """A segment this worker holds a lease on, and its progress here."""

    lease: Lease
    session: TrainingSession | None = None
    corrupt: list[StartPoint] = field(default_factory=list)
    epochs: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    failure: str = ""
    stopped: bool = False  # the coordinator told us to drop it

    @property
    def training(self) -> bool:
        return not self.stopped and not self.failure and len(self.epochs) < self.lease.epochs


class SessionPool:
    """Idle training sessions of the run this trainer works for.

    Building a session (model, optimizer, the data as device tensors) costs
    about as much as an epoch of a small model; a lease of the same run and
    data takes an idle one instead. A lease of another run drops them all.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._key: tuple[str, str] | None = None
        self._idle: list[TrainingSession] = []

    def take(self, key: tuple[str, str], cfg: RunConfig, data: LfadsData) -> TrainingSession:
        """An idle session for (config key, data SHA-256), or a new one."""
        if key != self._key:
            self._key, self._idle = key, []
        return self._idle.pop() if self._idle else TrainingSession(cfg, data, self.device)

    def put_back(self, key: tuple[str, str], session: TrainingSession) -> None:
        if key == self._key:
            self._idle.append(session)


def last_short_round(segs: list[LeasedSegment]) -> bool:
    """Every leased segment still training is on its last epoch, and their
    previous epochs together took under half a heartbeat interval: a lease
    granted now, first heartbeated after that round, is heartbeated well
    before it can expire (each epoch short is not enough with many leases)."""
    training = [seg for seg in segs if seg.training]
    last_round_s = sum(seg.epochs[-1][1]["seconds"] for seg in training if seg.epochs)
    return (
        bool(training)
        and all(1 <= len(seg.epochs) == seg.lease.epochs - 1 for seg in training)
        and last_round_s < min(seg.lease.heartbeat_interval_s for seg in training) / 2
    )


def exploit_generator_seed(pbt_seed: int, member: str, generation: int) -> int:
    """The generator seed of `member`'s segment of `generation` when it starts
    from another member's checkpoint (an exploit, or a fallback to one). A
    copy that kept the winner's generator would draw the same batches,
    dropout masks and posterior samples as the winner and, a perturbation
    apart in its hyperparameters, follow it closely: the population would
    lose a member's worth of search. Derived only from the search seed, the
    member and the generation, so a search stays reproducible."""
    key = f"exploit/{pbt_seed}/{member}/{generation}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def copied(lease: Lease, point: StartPoint) -> bool:
    """The segment starts from another member's checkpoint."""
    return not point.fresh and point.member != lease.member


def session_key(lease: Lease) -> tuple[str, str]:
    """Leases with the same key can share a training session: same config and data."""
    return lease.config_key, lease.data_sha256


def metrics_doc(seg: LeasedSegment, fitness_metric: str, metric: float, sha256: str) -> bytes:
    g = seg.lease

    def clean(v: float) -> float | None:
        return v if math.isfinite(v) else None

    doc = {
        "member": g.member,
        "generation": g.generation,
        "lease_id": g.lease_id,
        "hparams": g.hparams,
        "fitness_metric": fitness_metric,
        "fitness": clean(metric),
        "checkpoint": {"key": g.checkpoint_key, "sha256": sha256},
        "start_checkpoint": next(
            (p.checkpoint for p in (g.start, *g.fallbacks) if p not in seg.corrupt), ""
        ),
        "corrupt_start_points": [p.checkpoint for p in seg.corrupt],
        "epochs": [{k: clean(v) for k, v in values.items()} for _, values in seg.epochs],
    }
    return (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
