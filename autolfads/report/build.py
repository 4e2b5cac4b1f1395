"""Build the static report of a run from its layout in storage.

Everything shown is read from the run layout (members' history, best/), so
`autolfads report s3://bucket/prefix/run` works on a run searched anywhere.
Output: `<run>/best/report/index.html` plus one PNG per figure, in storage and
optionally in a local folder.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from autolfads.errors import AutolfadsError
from autolfads.report import figures
from autolfads.report.html import render_html
from autolfads.storage import ObjectNotFound, RunLayout, Store
from autolfads.trainer.evaluation.metrics import summary_names


class ReportError(AutolfadsError):
    """The run lacks what the report needs."""


@dataclass(frozen=True)
class BestOutputs:
    """Validation-split arrays of the best model, (trials, bins, neurons)."""

    spikes: np.ndarray
    rates: np.ndarray
    cond_idx: np.ndarray | None
    truth: np.ndarray | None


def _json(store: Store, key: str) -> Any:
    try:
        return json.loads(store.get_bytes(key))
    except ObjectNotFound:
        raise ReportError(
            f"{store.url}/{key} is missing; finish the search and run "
            "`autolfads finalize` before the report"
        ) from None


def read_records(store: Store, layout: RunLayout) -> list[figures.MemberRecord]:
    """Every finished segment of every member, from members/*/history.jsonl."""
    records = []
    prefix = f"{layout.run}/members/"
    for info in store.list(prefix):
        if not info.key.endswith("/history.jsonl"):
            continue
        for line in store.get_bytes(info.key).decode().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            metric = entry.get("metric")
            records.append(
                figures.MemberRecord(
                    generation=int(entry["generation"]),
                    member=str(entry["member"]),
                    metric=float("nan") if metric is None else float(metric),
                    hparams={k: float(v) for k, v in entry["hparams"].items()},
                    parent=str(entry.get("parent") or entry["member"]),
                )
            )
    if not records:
        raise ReportError(f"run {layout.run!r} in {store.url} has no member history yet")
    return sorted(records, key=lambda r: (r.generation, r.member))


def read_best_outputs(store: Store, key: str) -> BestOutputs:
    with h5py.File(io.BytesIO(store.get_bytes(key)), "r") as f:
        truth = None
        if "valid_truth" in f:
            factor = float(f["conversion_factor"][()]) if "conversion_factor" in f else 1.0
            truth = f["valid_truth"][()] / factor
        return BestOutputs(
            spikes=f["valid_recon_data"][()],
            rates=f["valid_output_params"][()],
            cond_idx=f["valid_cond_idx"][()] if "valid_cond_idx" in f else None,
            truth=truth,
        )


def _example_neurons(outputs: BestOutputs, n: int = 4) -> list[int]:
    """The most active neurons: their PSTHs are the most readable."""
    mean = np.nanmean(outputs.spikes, axis=(0, 1))
    return [int(i) for i in np.argsort(-mean)[:n]]


def _example_conditions(cond_idx: np.ndarray, n: int = 3) -> list[int]:
    """The conditions with the most trials; -1 (no condition) is none."""
    ids, counts = np.unique(cond_idx[cond_idx >= 0], return_counts=True)
    return [int(i) for i in ids[np.argsort(-counts, kind="stable")][:n]]


def _reference_lines(metrics: dict[str, Any]) -> dict[str, float]:
    """Floor and ceiling in the fitness's units, where baseline.json has them
    (the held-out NLL fitness; the all-element NLL has no meaningful floor)."""
    if metrics.get("fitness_metric") != "valid_heldout_recon_smth":
        return {}
    lines = {}
    for label, ref in (("smoothing baseline", "floor"), ("true rates", "ceiling")):
        value = (metrics.get(ref) or {}).get("valid_heldout_recon")
        if isinstance(value, int | float) and math.isfinite(value):
            lines[label] = float(value)
    return lines


def build_report(store: Store, run: str, out_dir: Path | None = None) -> dict[str, str]:
    """Render the report into `<run>/best/report/` (and `out_dir`); return name -> key."""
    layout = RunLayout(run)
    search = _json(store, layout.best("search.json"))
    metrics = _json(store, layout.best("metrics.json"))
    records = read_records(store, layout)
    lineage = [(int(e["generation"]), str(e["member"])) for e in search.get("lineage", [])]
    outputs = read_best_outputs(store, metrics["lfads_output"])
    cond = outputs.cond_idx
    if cond is None or not (cond >= 0).any():  # no conditions: all trials as one, PSTH = mean
        cond = np.zeros(outputs.rates.shape[0], dtype=int)
    pngs = {
        "Hyperparameter progression": ("hparams.png", figures.hparam_progression(records)),
        "Validation metric per generation": (
            "metric.png",
            figures.metric_per_generation(records, _reference_lines(metrics)),
        ),
        "Lineage": ("lineage.png", figures.lineage_plot(records, lineage)),
        "Inferred rates vs trial-averaged PSTHs": (
            "psth.png",
            figures.psth_panels(
                outputs.rates,
                outputs.spikes,
                cond,
                _example_neurons(outputs),
                _example_conditions(cond),
                truth=outputs.truth,
            ),
        ),
        "Spike raster vs inferred rates": (
            "raster.png",
            figures.raster_vs_rates(outputs.rates, outputs.spikes, [0, min(1, len(cond) - 1)]),
        ),
    }
    metric_values = {
        k: float(v)
        for k, v in metrics.items()
        if k in summary_names(metrics) and isinstance(v, (int, float)) and math.isfinite(v)
    }
    best_member = str(metrics.get("member", search.get("best", {}).get("member", "?")))
    page = render_html(
        run,
        metric_values,
        metrics,
        {caption: name for caption, (name, _) in pngs.items()},
        records,
        lineage,
        best_member,
        notes=[f"Read from {store.url}/{layout.run}/"],
    )
    files = {name: data for name, data in pngs.values()}
    files["index.html"] = page.encode("utf-8")
    return _write_report(store, layout, files, out_dir)


def _write_report(
    store: Store, layout: RunLayout, files: dict[str, bytes], out_dir: Path | None
) -> dict[str, str]:
    """Each file to `<run>/best/report/` (and atomically into `out_dir`)."""
    keys = {}
    for name, data in files.items():
        kind = "text/html" if name.endswith(".html") else "image/png"
        keys[name] = store.put_bytes(layout.best(f"report/{name}"), data, content_type=kind).key
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / f".{name}.partial"
            tmp.write_bytes(data)
            tmp.replace(out_dir / name)
    return keys
