"""Building segments: the population's first generation and the next segment
of a member once the policy has decided (pure functions of config + state).

Seeds and hyperparameters derive only from `pbt.seed` and member indices, so
a search is reproducible from its config alone.
"""

from __future__ import annotations

import math

import numpy as np

from autolfads.config import RunConfig
from autolfads.coordinator.search.policy import (
    MemberPlan,
    MemberScore,
    generation_rng,
    sample_initial_hparams,
)
from autolfads.coordinator.search.state import HistoryEntry, SearchState, Segment, StartPoint

# A segment carries at most this many fallback start points.
MAX_FALLBACKS = 2


def member_id(index: int) -> str:
    """'m000', 'm001', ...: sorts like the index for populations up to 1000."""
    return f"m{index:03d}"


def member_seed(pbt_seed: int, index: int) -> int:
    """Fresh-init seed of member `index` (uint32, derived from the search seed)."""
    return int(np.random.SeedSequence([pbt_seed, index]).generate_state(1)[0])


def segment_epochs(cfg: RunConfig, generation: int) -> int:
    return cfg.pbt.burn_in_epochs if generation == 0 else cfg.pbt.generation_epochs


def initial_segments(cfg: RunConfig) -> dict[str, Segment]:
    """Generation 0: every member from fresh init with sampled hyperparameters
    (m000 at the `training:` values if `pbt.first_member` is "training")."""
    pbt = cfg.pbt
    # A stream of its own, so later generations' draws never shift it.
    rng = generation_rng(pbt.seed, 0, "initial-hparams")
    sampled = sample_initial_hparams(pbt.search_space, pbt.population, rng)
    base = cfg.initial_hparams()
    if pbt.first_member == "training":
        # Drawn anyway, then replaced: the other members' values do not change.
        sampled[0] = {name: base[name] for name in sampled[0]}
    segments = {}
    for index, values in enumerate(sampled):
        member = member_id(index)
        segments[member] = Segment(
            member=member,
            generation=0,
            epochs=segment_epochs(cfg, 0),
            hparams={**base, **values},
            start=StartPoint(seed=member_seed(pbt.seed, index)),
            parent=member,
        )
    return segments


def member_index(member: str) -> int:
    return int(member[1:])


def score_of(entry: HistoryEntry) -> MemberScore:
    """The policy's view of `entry`. Remembered by the entry: in async mode
    every report looks at every other member's latest score."""
    return entry.derived("score", _score)


def _score(entry: HistoryEntry) -> MemberScore:
    return MemberScore(
        member=entry.member,
        metric=entry.metric,
        hparams=entry.hparams,
        checkpoint=entry.checkpoint,
        generation=entry.generation,
    )


def next_segment(cfg: RunConfig, state: SearchState, plan: MemberPlan, generation: int) -> Segment:
    """The segment `plan` asks for, in `generation`, with verified fallbacks.

    The start point is the parent's checkpoint the plan names (with the
    checksum it was published with). Fallbacks are the member's own earlier
    checkpoints (newest first): used, and recorded, only if the start fails
    its checksum.
    """
    parent_entry = next(
        (h for h in state.published(plan.parent) if h.checkpoint == plan.checkpoint), None
    )
    start = _start_point(cfg, plan.member, parent_entry, generation)
    fallbacks = [
        _start_point(cfg, plan.member, h, generation)
        for h in state.published(plan.member)
        # A diverged segment's checkpoint is no place to fall back to.
        if h.checkpoint != start.checkpoint and math.isfinite(h.metric)
    ][:MAX_FALLBACKS]
    return Segment(
        member=plan.member,
        generation=generation,
        # A fresh start runs the whole burn-in: its ramps reach full weight
        # before it is ranked, as every other member's did.
        epochs=cfg.pbt.burn_in_epochs if start.fresh else segment_epochs(cfg, generation),
        hparams=dict(plan.hparams),
        start=start,
        fallbacks=fallbacks,
        parent=plan.parent if not start.fresh else plan.member,
        exploited=plan.exploited,
    )


def _start_point(
    cfg: RunConfig, member: str, entry: HistoryEntry | None, generation: int
) -> StartPoint:
    if entry is None or not entry.checkpoint:
        # Only reachable when a member has nothing (finite) to start from:
        # fresh init rather than stall the search, with a seed of its own
        # (the member's first one led where it did).
        index = member_index(member)
        seed = member_seed(cfg.pbt.seed, index)
        if generation > 0:
            seed = int(
                np.random.SeedSequence([cfg.pbt.seed, index, generation]).generate_state(1)[0]
            )
        return StartPoint(seed=seed)
    return StartPoint(
        checkpoint=entry.checkpoint,
        sha256=entry.sha256,
        member=entry.member,
        generation=entry.generation,
    )
