"""The report: figures from plain data, the HTML page, and building from a run layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autolfads.report import figures
from autolfads.report.build import ReportError, build_report, read_records
from autolfads.report.html import render_html
from autolfads.storage import RunLayout

PNG = b"\x89PNG\r\n\x1a\n"


def _records(n_members: int = 4, n_gens: int = 3) -> list[figures.MemberRecord]:
    rng = np.random.default_rng(0)
    out = []
    for g in range(n_gens):
        for m in range(n_members):
            metric = float("nan") if (g, m) == (1, 2) else float(rng.uniform(0.3, 0.5))
            parent = f"m{(m + 1) % n_members:03d}" if g and m == 0 else f"m{m:03d}"
            hp = {
                "lr_init": float(rng.uniform(1e-4, 1e-2)),
                "dropout_rate": float(rng.uniform(0, 0.5)),
            }
            out.append(figures.MemberRecord(g, f"m{m:03d}", metric, hp, parent))
    return out


def test_figures_are_pngs_even_with_diverged_members() -> None:
    recs = _records()
    assert any(math.isnan(r.metric) for r in recs)
    rng = np.random.default_rng(1)
    rates = rng.uniform(0.01, 0.3, (12, 20, 6))
    spikes = rng.poisson(rates).astype(float)
    cond = np.repeat(np.arange(3), 4)
    pngs = [
        figures.hparam_progression(recs),
        figures.metric_per_generation(recs, {"smoothing baseline": 1.2, "true rates": 0.8}),
        figures.lineage_plot(recs, [(0, "m001"), (1, "m000"), (2, "m000")]),
        figures.psth_panels(rates, spikes, cond, [0, 1], [0, 2], truth=rates),
        figures.raster_vs_rates(rates, spikes, [0, 3]),
    ]
    for png in pngs:
        assert png[:8] == PNG and len(png) > 2000


def test_html_escapes_names_and_lists_lineage() -> None:
    recs = _records()
    page = render_html(
        "run<script>",
        {"co_bps": 0.31},
        {
            "floor": {"co_bps": 0.154},
            "ceiling": {"co_bps": 0.342},
            "fraction_of_range": {"co_bps": 0.83},
        },
        {"Lineage": "lineage.png"},
        recs,
        [(0, "m001"), (1, "m001")],
        "m001",
    )
    assert "<script>" not in page and "run&lt;script&gt;" in page
    assert 'src="lineage.png"' in page
    assert "0.31" in page
    # the model beside its floor and ceiling, and where it lies between them
    assert "<td>0.31</td><td>0.154</td><td>0.342</td><td>83 %</td>" in page
    # one row per lineage step, with generation, member and parent
    assert page.count('<tr><td class="l">0</td><td class="l">m001</td>') == 1


def test_report_of_unfinished_run_is_a_clear_error(local_store) -> None:
    layout = RunLayout("not-done")
    local_store.put_bytes(layout.config(), b"name: not-done\n")
    with pytest.raises(ReportError, match="best/search.json is missing"):
        build_report(local_store, "not-done")


def test_records_are_read_from_member_histories(local_store) -> None:
    layout = RunLayout("r")
    local_store.put_bytes(
        layout.history("m001"),
        b'{"generation": 0, "member": "m001", "parent": "m001", "metric": null, "hparams": {"lr_init": 0.01}}\n'
        b'{"generation": 1, "member": "m001", "parent": "m000", "metric": 0.4, "hparams": {"lr_init": 0.02}}\n',
    )
    recs = read_records(local_store, layout)
    assert [(r.generation, r.parent) for r in recs] == [(0, "m001"), (1, "m000")]
    assert math.isnan(recs[0].metric) and recs[1].metric == 0.4


def test_trials_without_a_condition_are_not_drawn_as_one():
    # -1 marks a trial without a condition (NLB index lists covering part of
    # the trials); as the most common "condition" it became a PSTH panel
    # averaging unrelated trials.
    from autolfads.report.build import _example_conditions

    assert _example_conditions(np.array([-1, -1, -1, -1, 2, 2, 0, 1, 1])) == [1, 2, 0]
    assert _example_conditions(np.array([-1, -1])) == []
