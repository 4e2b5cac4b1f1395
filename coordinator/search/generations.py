"""How a search moves forward: closing generations, planning the next
segments, stopping, and writing every decision to storage.

Called by the service inside a transaction (lock held), so everything here
either happens completely and is persisted with the state, or is rolled
back. Nothing here touches storage: documents and checkpoint deletions go
to the group commit's `Outbox`, which writes the documents before the state
and deletes after it. Documents are pure functions of the state: writing
them again after a crash rewrites the same bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial

import numpy as np

from autolfads.config import RunConfig
from autolfads.coordinator.search import population as pop
from autolfads.coordinator.search import records
from autolfads.coordinator.search.commit import Outbox
from autolfads.coordinator.search.policy import (
    MemberPlan,
    PolicyError,
    explore,
    generation_rng,
    plan_generation,
    plan_member_async,
    ranking_key,
    should_stop,
)
from autolfads.coordinator.search.state import (
    BestRecord,
    HistoryEntry,
    SearchState,
    Segment,
    StartPoint,
)
from autolfads.storage.keys import RunLayout
from autolfads.storage.retention import select_checkpoints_to_delete

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, cfg: RunConfig, outbox: Outbox, layout: RunLayout) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.layout = layout
        # Shortcuts, never state: a segment last seen unreported (sync mode),
        # a member last seen without its entry of the oldest open generation
        # (async mode).
        self._blocker: Segment | None = None
        self._unfinished: str | None = None

    # ------------------------------------------------------------- sync mode

    def advance_sync(self, state: SearchState) -> None:
        """If every member reported generation g: rank, exploit/explore, log,
        then open generation g + 1 or finish the search."""
        g = state.generation
        if not self._all_reported(state, g):
            return
        entries = {m: state.entry(m, g) for m in state.members}
        scores = [pop.score_of(e) for e in entries.values() if e is not None]
        try:
            plan = plan_generation(scores, self.cfg.pbt, generation_rng(self.cfg.pbt.seed, g))
        except PolicyError as err:
            self.finish(state, "failed", _nothing_to_copy(state, g, entries, err))
            return
        state.best_history.append(plan.best_metric)
        self._update_best(state, entries[plan.best_member])
        stop = self._stop_reason(state, g + 1)
        if not stop:
            for member, entry in entries.items():
                _record_decision(entry, plan.plans[member])
        self._put(
            self.layout.generation(g), partial(records.sync_generation_doc, state, plan, stop)
        )
        for member in state.members:
            self.view_history(state, member)
        if stop:
            self.finish(state, "finished", stop)
            return
        state.segments = {
            m: pop.next_segment(self.cfg, state, plan.plans[m], g + 1) for m in state.members
        }
        state.generation = g + 1
        self._collect_garbage(state)

    def _all_reported(self, state: SearchState, g: int) -> bool:
        """Has every member reported generation `g`? A segment found
        unreported is kept as the witness while it still is one (the same
        object in the state), so most reports cost a lookup instead of a
        scan of the population. The scan runs from the last member, which
        members granted in order report last."""
        held = self._blocker
        if held is not None and state.segments.get(held.member) is held and _unreported(held, g):
            return False
        self._blocker = next(
            (s for s in reversed(state.segments.values()) if _unreported(s, g)), None
        )
        return self._blocker is None

    def _all_finished(self, state: SearchState, g: int) -> bool:
        """Has every member finished generation `g` (async mode)? As in
        `_all_reported`, a member found without its entry stays the witness
        while it still lacks it."""
        held = self._unfinished
        if held is not None and held in state.segments and state.entry(held, g) is None:
            return False
        missing = (m for m in reversed(state.segments) if state.entry(m, g) is None)
        self._unfinished = next(missing, None)
        return self._unfinished is None

    # ------------------------------------------------------------ async mode

    def advance_async(self, state: SearchState, member: str) -> None:
        """`member` just reported: decide its next segment now, then close
        every generation all members have finished."""
        segment = state.segments[member]
        entry = state.entry(member, segment.generation)
        assert entry is not None, "advance_async before the report was recorded"
        g = segment.generation
        others = [pop.score_of(h[-1]) for m, h in state.history.items() if m != member and h]
        try:
            rng = generation_rng(self.cfg.pbt.seed, g, member)
            plan = plan_member_async(pop.score_of(entry), others, self.cfg.pbt, rng)
        except PolicyError as err:
            plan = self._restart_plan(state, member, entry, rng)
            state.events.append(
                {
                    "kind": "member_restarted",
                    "member": member,
                    "generation": g,
                    "reason": str(err),
                    "start": plan.checkpoint or "fresh init",
                }
            )
        if g + 1 >= self.cfg.pbt.max_generations:
            segment.phase = "finished"  # no next generation: no decision to record
        else:
            _record_decision(entry, plan)
            state.segments[member] = pop.next_segment(self.cfg, state, plan, g + 1)
        self.view_history(state, member)
        self._put(self.layout.generation(g), partial(records.async_generation_doc, state, g))
        self._close_async_generations(state)

    def _restart_plan(
        self, state: SearchState, member: str, entry: HistoryEntry, rng: np.random.Generator
    ) -> MemberPlan:
        """A diverged member with nobody to copy yet: back to its own newest
        finite checkpoint with perturbed settings; without one, from fresh
        init (a full burn-in, a new seed: `pop.next_segment`) with settings
        drawn afresh, since the ones it had diverged."""
        pbt = self.cfg.pbt
        good = next((h for h in state.published(member) if math.isfinite(h.metric)), None)
        if good is not None:
            hparams = explore(entry.hparams, pbt.search_space, rng, pbt.resample_probability)
            return MemberPlan(member, member, good.checkpoint, hparams, exploited=False)
        hparams = explore(entry.hparams, pbt.search_space, rng, resample_probability=1.0)
        return MemberPlan(member, member, "", hparams, exploited=False)

    def _close_async_generations(self, state: SearchState) -> None:
        while not state.terminal:
            g = state.generation
            if not self._all_finished(state, g):
                return
            finished = [e for m in state.members if (e := state.entry(m, g)) is not None]
            best = min(finished, key=_rank_key)
            state.best_history.append(best.metric)
            self._update_best(state, best)
            state.generation = g + 1
            stop = self._stop_reason(state, g + 1)
            if stop:
                # Members that ran ahead have results of open generations
                # (pinned, so still stored): the best may be one of them.
                for member in state.members:
                    for entry in state.history.get(member, []):
                        if entry.generation > g:
                            self._update_best(state, entry)
                if state.best is None:
                    # Every segment diverged or failed: nothing to finalize,
                    # as a sync search whose members all diverged fails.
                    stop = f"{stop} without a finite result: every segment diverged or failed"
                self.finish(state, "finished" if state.best else "failed", stop)
                return
            self._collect_garbage(state)

    # ------------------------------------------------------------- common

    def _stop_reason(self, state: SearchState, next_generation: int) -> str:
        if should_stop(state.best_history, self.cfg.pbt):
            k = self.cfg.pbt.stop_patience_generations
            return f"plateau: best metric improved <= {self.cfg.pbt.stop_improvement:g} over {k} generations"
        if next_generation >= self.cfg.pbt.max_generations:
            return f"max_generations {self.cfg.pbt.max_generations} reached"
        return ""

    def _update_best(self, state: SearchState, entry: HistoryEntry | None) -> None:
        if entry is None or not math.isfinite(entry.metric) or not entry.checkpoint:
            return
        if state.best is None or entry.metric < state.best.metric:
            state.best = BestRecord(
                member=entry.member,
                generation=entry.generation,
                metric=entry.metric,
                checkpoint=entry.checkpoint,
                sha256=entry.sha256,
                hparams=dict(entry.hparams),
            )

    def finish(self, state: SearchState, status: str, message: str) -> None:
        """End the search: revoke every lease, record why, write best/search.json."""
        state.status = status  # type: ignore[assignment]
        state.message = message
        for lease in state.leases.values():
            if lease.status == "active":
                lease.status = "revoked"
        for segment in state.segments.values():
            segment.lease_id = ""
            segment.phase = "finished"
        state.events.append(
            {"kind": f"search_{status}", "generation": state.generation, "message": message}
        )
        self.view_result(state)
        log.info("search %s: %s", status, message)

    def view_result(self, state: SearchState) -> None:
        """Write best/search.json (how the search ended, and its best) as a
        view: after the end is on record. Finalize takes the file as the end
        of the search; written before the state, a crash or a failed write
        in between left it saying so while the recorded search ran on."""
        self.outbox.view(self.layout.best("search.json"), partial(records.best_doc, state))

    def view_history(self, state: SearchState, member: str) -> None:
        """Rewrite `member`'s history.jsonl after the change is answered (a view)."""
        self.outbox.view(self.layout.history(member), partial(records.history_doc, state, member))

    def _put(self, key: str, render: Callable[[], bytes]) -> None:
        """Write `render()` before the state (rendered when the write is batched)."""
        self.outbox.put(key, render)

    def _collect_garbage(self, state: SearchState) -> None:
        """Retire checkpoints no segment can start from any more: storage's
        retention rule (each member's newest `keep_generations`) over the live
        checkpoints, sparing every start point, fallback and the best. They are
        deleted after the state that marks them is written (best effort: a
        failed or interrupted delete leaves an extra object, never a missing
        one)."""
        live = [
            h
            for entries in state.history.values()
            for h in entries
            if h.checkpoint and not h.checkpoint_deleted
        ]
        doomed = set(
            select_checkpoints_to_delete(
                [h.checkpoint for h in live],
                self.cfg.pbt.keep_generations,
                _pinned_checkpoints(state),
            )
        )
        for entry in live:
            if entry.checkpoint in doomed:
                # The key stays in the history: lineage still names it.
                entry.checkpoint_deleted = True
                self.outbox.delete(entry.checkpoint)
        if doomed:
            state.events.append(
                {
                    "kind": "checkpoints_deleted",
                    "generation": state.generation,
                    "count": len(doomed),
                }
            )


def _pinned_checkpoints(state: SearchState) -> set[str]:
    """Checkpoints a segment may still start from (start points, fallbacks),
    the best, and every result of a generation not closed yet: in async mode
    a fast member runs generations ahead, and one of those results may
    become the best when its generation closes."""
    keep: set[str] = set()
    for segment in state.segments.values():
        points: list[StartPoint] = [segment.start, *segment.fallbacks]
        keep.update(p.checkpoint for p in points if p.checkpoint)
    if state.best is not None:
        keep.add(state.best.checkpoint)
    for entries in state.history.values():
        for entry in reversed(entries):  # newest first: stop at the closed ones
            if entry.generation < state.generation:
                break
            if entry.checkpoint:
                keep.add(entry.checkpoint)
    return keep


def _nothing_to_copy(
    state: SearchState, g: int, entries: dict[str, HistoryEntry | None], err: PolicyError
) -> str:
    """Why the search fails at generation `g`: the policy's reason (members
    diverged: tune the settings) unless no segment produced a result at all,
    when its advice would mislead: then the failures' own reason (leases
    that kept expiring, no usable start point)."""
    if any(e is not None and e.checkpoint for e in entries.values()):
        return str(err)
    failed = (
        e for e in state.events if e.get("kind") == "segment_failed" and e.get("generation") == g
    )
    first = next(failed, None)
    example = f"; {first['member']}: {first.get('message') or 'no message'}" if first else ""
    return (
        f"every segment of generation {g} failed without a result, so no member has one "
        f"to copy{example}"
    )


def _record_decision(entry: HistoryEntry | None, plan: MemberPlan) -> None:
    assert entry is not None
    entry.next_parent = plan.parent
    entry.next_hparams = dict(plan.hparams)
    entry.next_exploited = plan.exploited


def _rank_key(entry: HistoryEntry | None) -> tuple[bool, float, str]:
    assert entry is not None
    return ranking_key(entry.member, entry.metric)


def _unreported(segment: Segment, generation: int) -> bool:
    return segment.phase != "reported" or segment.generation != generation
