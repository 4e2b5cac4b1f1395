"""Progress of a running search, for people (one line) and scripts (JSON lines).

Pure formatting over the coordinator's `StatusView`; the clock is passed in.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import TextIO

from autolfads.coordinator.search.messages import StatusView


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass(frozen=True)
class ProgressSnapshot:
    run: str
    state: str
    generation: int
    max_generations: int
    members_done: int
    population: int
    best_metric: float
    trend: float  # relative change of the best metric over the last generation
    elapsed_s: float
    eta_s: float  # to max_generations; early stopping may end sooner

    def line(self) -> str:
        best = f"{self.best_metric:.5g}" if math.isfinite(self.best_metric) else "-"
        trend = f" ({self.trend:+.2%}/gen)" if math.isfinite(self.trend) else ""
        return (
            f"{self.run}: generation {self.generation + 1}/{self.max_generations} | "
            f"members done {self.members_done}/{self.population} | best {best}{trend} | "
            f"elapsed {_clock(self.elapsed_s)} | ETA <= {_clock(self.eta_s)}"
        )

    def json(self) -> str:
        doc = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in vars(self).items()
        }
        return json.dumps(doc, sort_keys=True)


def _members_done(status: StatusView) -> int:
    g = status.generation
    return sum(1 for m in status.members if m.generation > g or m.phase in ("reported", "finished"))


def _epochs_before(generation: int, burn_in_epochs: int, generation_epochs: int) -> int:
    return 0 if generation <= 0 else burn_in_epochs + (generation - 1) * generation_epochs


def epochs_done(status: StatusView, burn_in_epochs: int = 1, generation_epochs: int = 1) -> float:
    """Epochs of one member the search has trained so far (generation 0 is
    the burn-in, usually longer; a generation counts its members done)."""
    g = status.generation
    current = burn_in_epochs if g == 0 else generation_epochs
    done = _members_done(status) / max(status.population, 1)
    return _epochs_before(g, burn_in_epochs, generation_epochs) + current * done


def snapshot(
    status: StatusView,
    elapsed_s: float,
    burn_in_epochs: int = 1,
    generation_epochs: int = 1,
    epochs_at_start: float = 0.0,
) -> ProgressSnapshot:
    """Progress so far; the ETA weighs generations by their epochs and assumes
    the search runs to max_generations. `epochs_at_start` is `epochs_done` when
    `elapsed_s` began: a resumed search's earlier epochs took none of it."""
    history = [v for v in status.best_history if math.isfinite(v)]
    trend = float("nan")
    if len(history) >= 2 and history[-2] != 0:
        trend = (history[-1] - history[-2]) / abs(history[-2])
    best = status.best.metric if status.best is not None else float("nan")
    done = epochs_done(status, burn_in_epochs, generation_epochs)
    total = _epochs_before(status.max_generations, burn_in_epochs, generation_epochs)
    remaining = max(total - done, 0.0)
    trained = done - epochs_at_start
    eta = elapsed_s / trained * remaining if trained > 0 else float("nan")
    return ProgressSnapshot(
        run=status.run,
        state=status.state,
        generation=status.generation,
        max_generations=status.max_generations,
        members_done=_members_done(status),
        population=status.population,
        best_metric=best,
        trend=trend,
        elapsed_s=elapsed_s,
        eta_s=0.0 if status.terminal else eta,
    )


@dataclass
class ProgressPrinter:
    """mode: 'auto' (one live line on a terminal, else as 'plain'), 'plain' (a
    line per change), 'jsonl' (one JSON object per change), or 'quiet'."""

    mode: str = "auto"
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    _last: str = ""

    def show(self, snap: ProgressSnapshot) -> None:
        if self.mode == "quiet":
            return
        key = f"{snap.state}/{snap.generation}/{snap.members_done}/{snap.best_metric}"
        live = self.mode == "auto" and self.stream.isatty()
        if key == self._last and not live:
            return
        self._last = key
        if self.mode == "jsonl":
            self.stream.write(snap.json() + "\n")
        elif live:
            self.stream.write("\r\033[K" + snap.line())
        else:
            self.stream.write(snap.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.mode == "auto" and self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()
