"""Read-only views of the search state for status displays and clients."""

from __future__ import annotations

import math

from autolfads.coordinator.search.messages import (
    BestView,
    Lease,
    LineageStepView,
    MemberView,
    StatusView,
)
from autolfads.coordinator.search.state import LeaseRecord, SearchState, Segment
from autolfads.storage.keys import RunLayout

_PHASES = {"queued": "queued", "leased": "training", "reported": "reported", "finished": "finished"}


def status_view(state: SearchState, max_generations: int) -> StatusView:
    """The search at a glance; `max_generations` is the config's (0 when the
    config is unknown, shown as '?')."""
    members = tuple(_member_view(state, seg) for _, seg in sorted(state.segments.items()))
    best = state.best
    return StatusView(
        run=state.run,
        state=state.status,
        mode=state.mode,
        generation=state.generation,
        population=len(state.segments),
        members=members,
        best=None
        if best is None
        else BestView(
            best.member, best.generation, best.metric, best.checkpoint, dict(best.hparams)
        ),
        best_history=tuple(state.best_history),
        revision=state.revision,
        max_generations=max_generations,
        message=state.message,
    )


def _member_view(state: SearchState, seg: Segment) -> MemberView:
    history = state.history.get(seg.member, [])
    latest = history[-1] if history else None
    lease = state.leases.get(seg.lease_id) if seg.lease_id else None
    lineage = (
        tuple(
            LineageStepView(e.generation, e.member, e.checkpoint)
            for e in state.lineage(latest.member, latest.generation)
        )
        if latest is not None
        else ()
    )
    return MemberView(
        member=seg.member,
        generation=seg.generation,
        hparams=dict(seg.hparams),
        metric=latest.metric if latest is not None else math.nan,
        parent=seg.parent,
        phase=_PHASES[seg.phase],  # type: ignore[arg-type]
        worker_id=lease.worker_id if lease is not None else "",
        checkpoint_key=latest.checkpoint if latest is not None else "",
        lineage=lineage,
        attempts=seg.attempts,
    )


def lease_view(
    state: SearchState, lease: LeaseRecord, layout: RunLayout, lease_timeout_s: float
) -> Lease:
    """What a worker is told about an active lease: the whole work unit."""
    seg = state.segments[lease.member]
    return Lease(
        lease_id=lease.lease_id,
        member=seg.member,
        generation=seg.generation,
        hparams=dict(seg.hparams),
        epochs=seg.epochs,
        start=seg.start,
        fallbacks=tuple(seg.fallbacks),
        checkpoint_key=layout.checkpoint(seg.member, seg.generation),
        metrics_key=layout.member_metrics(seg.member, seg.generation),
        data_key=state.data_key,
        data_sha256=state.data_sha256,
        config_key=state.config_key,
        deadline=lease.deadline,
        heartbeat_interval_s=lease_timeout_s / 4,
        parent=seg.parent,
        run=state.run,
    )
