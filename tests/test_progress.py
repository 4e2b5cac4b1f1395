"""Progress display of `autolfads run`: pure formatting over a status snapshot."""

from __future__ import annotations

import io
import json
import math

from autolfads.coordinator.search.messages import BestView, MemberPhase, MemberView, StatusView
from autolfads.progress_display import ProgressPrinter, snapshot


def _status(
    generation: int, phases: list[MemberPhase], best_history: tuple[float, ...]
) -> StatusView:
    members = tuple(
        MemberView(f"m{i:03d}", generation, {}, 0.5, f"m{i:03d}", p, "", "", (), 0)
        for i, p in enumerate(phases)
    )
    best = BestView("m001", generation - 1, best_history[-1], "k", {}) if best_history else None
    return StatusView("demo", "running", "sync", generation, len(phases), members, best,
                      best_history, 7, 10, "")  # fmt: skip


def test_snapshot_counts_done_members_and_trend() -> None:
    snap = snapshot(_status(2, ["reported", "training", "queued", "reported"], (0.50, 0.40)), 120.0)
    assert snap.members_done == 2 and snap.population == 4
    assert abs(snap.trend + 0.2) < 1e-12
    # 2.5 of 10 generations took 120 s -> 7.5 remaining take 360 s
    assert abs(snap.eta_s - 360.0) < 1e-9
    assert "generation 3/10" in snap.line() and "members done 2/4" in snap.line()
    assert "-20.00%/gen" in snap.line()


def test_printer_modes() -> None:
    snap = snapshot(_status(0, ["queued", "queued"], ()), 1.0)
    out = io.StringIO()
    printer = ProgressPrinter(mode="jsonl", stream=out)
    printer.show(snap)
    printer.show(snap)  # unchanged: not repeated
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["best_metric"] is None and doc["members_done"] == 0
    quiet = io.StringIO()
    ProgressPrinter(mode="quiet", stream=quiet).show(snap)
    assert quiet.getvalue() == ""


def test_eta_weighs_the_longer_burn_in() -> None:
    status = _status(1, ["queued"] * 4, (0.5,))
    status = StatusView(**{**vars(status), "max_generations": 3})
    # burn-in (20 epochs) done in 100 s; 2 generations of 5 epochs remain -> 50 s
    snap = snapshot(status, 100.0, burn_in_epochs=20, generation_epochs=5)
    assert abs(snap.eta_s - 50.0) < 1e-9


def test_a_resumed_search_times_only_what_it_trained_since(tmp_path) -> None:
    # Generation 0 (the burn-in) and generation 1 done before a restart, with
    # the real coordinator; the resumed run's clock starts at the restart.
    # Counting the earlier epochs as trained in its first seconds made the
    # ETA ("<=") a small fraction of what remained.
    from coordinator_helpers import fake_train, open_tiny_search, tiny_config

    from autolfads.launcher import progress_source
    from autolfads.storage import LocalStore

    cfg = tiny_config(max_generations=4)
    store = LocalStore(tmp_path)
    service = open_tiny_search(store, cfg)
    while service.status().generation < 2:
        for grant in service.request_work("w0", 4).leases:
            service.report(fake_train(store, grant, "w0"))
    service.flush()
    resumed = open_tiny_search(store, cfg)
    progress = progress_source(resumed, cfg)
    first = progress()
    assert first.generation == 2 and first.members_done == 0
    assert math.isnan(first.eta_s)  # nothing trained since the restart: unknown
    assert "ETA <= ?" in first.line()
    grants = resumed.request_work("w0", 1).leases
    resumed.report(fake_train(store, grants[0], "w0"))
    after = progress()
    # A quarter of generation 2 (1 epoch of 4 members) took `elapsed`; 1.75
    # epochs remain: 7 times as long.
    assert after.members_done == 1
    assert abs(after.eta_s - 7 * after.elapsed_s) <= 1e-6 * after.elapsed_s
