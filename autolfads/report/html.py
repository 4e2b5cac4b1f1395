"""The static HTML report: one page, figures as separate PNG files beside it.

Readable offline (no scripts, no remote assets); every value is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from autolfads.report.figures import MemberRecord

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.muted { color: #777; }
"""

METRIC_LABELS = {
    "co_bps": "co-bps (held-out neurons)",
    "fp_bps": "fp-bps (forward prediction)",
    "vel_r2": "velocity R\u00b2",
    "psth_r2": "PSTH R\u00b2",
    "rate_r2": "rate R\u00b2 vs ground truth",
    "bps": "bits/spike (held-in)",
}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    def cell(tag: str, i: int, v: object) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{html.escape(_fmt(v))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>\n{body}</table>"


def render_html(
    run: str,
    metrics: Mapping[str, float],
    placement: Mapping[str, Any],
    figures: Mapping[str, str],
    records: Sequence[MemberRecord],
    lineage: Sequence[tuple[int, str]],
    best_member: str,
    notes: Sequence[str] = (),
) -> str:
    """figures: caption -> PNG file name (relative to the HTML file);
    placement: best/metrics.json's floor, ceiling and fraction_of_range."""
    floor = placement.get("floor") or {}
    ceiling = placement.get("ceiling") or {}
    fractions = placement.get("fraction_of_range") or {}
    metric_rows = [
        (
            METRIC_LABELS.get(k, k),
            v,
            floor.get(k, "-"),
            ceiling.get(k, "-"),
            f"{100 * fractions[k]:.0f} %" if k in fractions else "-",
        )
        for k, v in metrics.items()
        if isinstance(v, (int, float))
    ]
    by_key = {(r.generation, r.member): r for r in records}
    hp_names = sorted({k for r in records for k in r.hparams})
    lineage_rows = []
    for gen, member in lineage:
        rec = by_key.get((gen, member))
        if rec is None:
            continue
        lineage_rows.append(
            [gen, member, rec.parent, rec.metric]
            + [rec.hparams.get(h, float("nan")) for h in hp_names]
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>autolfads report: {html.escape(run)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>AutoLFADS report: {html.escape(run)}</h1>",
        f"<p>Best member: <b>{html.escape(best_member)}</b>; "
        f"{len({r.generation for r in records})} generations, "
        f"{len({r.member for r in records})} members.</p>",
        "<h2>Evaluation of the best model (validation split)</h2>",
        _table(["metric", "model", "smoothing", "true rates", "floor to ceiling"], metric_rows),
    ]
    parts += [f'<p class="muted">{html.escape(n)}</p>' for n in notes]
    for caption, filename in figures.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(f'<img src="{html.escape(filename)}" alt="{html.escape(caption)}">')
    parts.append("<h2>Lineage of the best member</h2>")
    parts.append(
        _table(["generation", "member", "parent", "metric", *hp_names], lineage_rows, left=3)
    )
    parts.append("</body></html>")
    return "\n".join(parts)
