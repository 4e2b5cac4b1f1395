"""The evaluation table printed by `run`, `status` (finished runs) and `baseline`.

Each NLB metric of the model beside the data's floor (the smoothing baseline)
and ceiling (true rates, when known), and where the model lies between them:

      metric                       model  smoothing  true rates  floor->ceiling
      co_bps                      0.2190     0.1540      0.3420            35 %
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

HEADER = ("metric", "model", "smoothing", "true rates", "floor->ceiling")


def _num(value: Any) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.4f}"
    return "-"


def metrics_table(doc: Mapping[str, Any], names: Sequence[str], *, model: bool = True) -> list[str]:
    """Lines of the table for `names` found in `doc` (a best/metrics.json, or
    a baseline.json with `model=False`), indented by two spaces."""
    floor = doc.get("floor") or {}
    ceiling = doc.get("ceiling") or {}
    fractions = doc.get("fraction_of_range") or {}
    header = [HEADER[0], *(HEADER[1:] if model else HEADER[2:4])]
    rows = []
    for name in names:
        if model and doc.get(name) is None:
            continue
        if not model and name not in floor and name not in ceiling:
            continue
        cells = [name]
        if model:
            cells.append(_num(doc.get(name)))
        cells += [_num(floor.get(name)), _num(ceiling.get(name))]
        if model:
            frac = fractions.get(name)
            cells.append("-" if frac is None else f"{100 * frac:.0f} %")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  "
        + "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        for r in [header, *rows]
    ]
