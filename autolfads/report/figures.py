"""Report figures, drawn from plain data (no storage, no torch).

Each function takes numpy arrays / records and returns PNG bytes, so the
report can be rebuilt from any run layout, local or in a bucket.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MemberRecord:
    """One member's finished segment in one generation."""

    generation: int
    member: str
    metric: float  # smoothed validation NLL (lower is better)
    hparams: Mapping[str, float]
    parent: str  # member whose checkpoint this segment started from


def _pyplot():
    # Imported lazily: matplotlib is an optional extra, and Agg needs no display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def hparam_progression(
    records: Sequence[MemberRecord], log_scale: Mapping[str, bool] | None = None
) -> bytes:
    """Every member's hyperparameters per generation, coloured by its metric."""
    plt = _pyplot()
    names = sorted({k for r in records for k in r.hparams})
    ncols = 2
    nrows = max(1, math.ceil(len(names) / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(10, 2.6 * nrows), squeeze=False, constrained_layout=True
    )
    metrics = _finite([r.metric for r in records])
    vmin, vmax = (metrics.min(), metrics.max()) if metrics.size else (0.0, 1.0)
    members = sorted({r.member for r in records})
    scatter = None
    for ax, name in zip(axes.flat, names, strict=False):
        for member in members:
            rows = sorted((r for r in records if r.member == member), key=lambda r: r.generation)
            gens = [r.generation for r in rows if name in r.hparams]
            vals = [r.hparams[name] for r in rows if name in r.hparams]
            ax.plot(gens, vals, color="0.8", lw=0.7, zorder=1)
        gens = [r.generation for r in records if name in r.hparams]
        vals = [r.hparams[name] for r in records if name in r.hparams]
        colours = [
            r.metric if math.isfinite(r.metric) else vmax for r in records if name in r.hparams
        ]
        scatter = ax.scatter(
            gens, vals, c=colours, cmap="viridis_r", vmin=vmin, vmax=vmax, s=14, zorder=2
        )
        # Log axes for values spanning decades (L2/KL scales), linear for rates.
        spans_decades = min(vals, default=0.0) > 0 and max(vals) / min(vals) > 20
        if (log_scale or {}).get(name, spans_decades):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("generation", fontsize=8)
        _integer_x(ax)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, label="smoothed valid NLL", shrink=0.8)
    fig.suptitle("Hyperparameter progression (colour: validation metric)")
    return _png(fig)


def metric_per_generation(
    records: Sequence[MemberRecord], references: Mapping[str, float] | None = None
) -> bytes:
    """Population spread and best validation metric per generation; with
    `references` (label -> value in the metric's units, e.g. the smoothing
    baseline and the true rates), one horizontal line each."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    gens = sorted({r.generation for r in records})
    best = []
    for g in gens:
        vals = _finite([r.metric for r in records if r.generation == g])
        ax.scatter(np.full(vals.size, g), vals, s=10, color="tab:blue", alpha=0.5)
        best.append(vals.min() if vals.size else np.nan)
    ax.plot(gens, best, color="tab:red", marker="o", label="best")
    styles = ("--", ":", "-.")
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, color="0.3", linestyle=styles[i % len(styles)], label=label)
    ax.set_xlabel("generation")
    ax.set_ylabel("smoothed valid NLL")
    ax.set_title("Validation metric per generation (dots: members)")
    _integer_x(ax)
    ax.legend()
    return _png(fig)


def lineage_plot(records: Sequence[MemberRecord], lineage: Sequence[tuple[int, str]]) -> bytes:
    """Who copied whom: every exploit as a line, the best member's ancestry highlighted."""
    plt = _pyplot()
    members = sorted({r.member for r in records})
    row = {m: i for i, m in enumerate(members)}
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(members) + 1)))
    for r in records:
        if r.generation > 0 and r.parent != r.member:
            ax.plot(
                [r.generation - 1, r.generation],
                [row[r.parent], row[r.member]],
                color="0.75",
                lw=0.8,
            )
    if lineage:
        xs = [g for g, _ in lineage]
        ys = [row[m] for _, m in lineage]
        ax.plot(xs, ys, color="tab:red", marker="o", lw=2, label="best member's lineage")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_yticks(range(len(members)), members, fontsize=7)
    ax.set_xlabel("generation")
    _integer_x(ax)
    ax.set_title("Lineage (grey: exploits; each segment starts from its parent's checkpoint)")
    return _png(fig)


def psth_panels(
    rates: np.ndarray,
    spikes: np.ndarray,
    cond_idx: np.ndarray,
    neurons: Sequence[int],
    conditions: Sequence[int],
    truth: np.ndarray | None = None,
) -> bytes:
    """Inferred rates vs trial-averaged spikes for example neurons, per condition.

    rates, spikes, truth: (trials, bins, neurons) in counts per bin.
    cond_idx: (trials,) condition id per trial.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(neurons), 1, figsize=(8, 2.2 * len(neurons)), squeeze=False)
    colours = plt.get_cmap("tab10")
    t = np.arange(rates.shape[1])
    for ax, n in zip(axes[:, 0], neurons, strict=False):
        for k, c in enumerate(conditions):
            sel = cond_idx == c
            if not np.any(sel):
                continue
            col = colours(k % 10)
            mean = rates[sel, :, n].mean(axis=0)
            spread = rates[sel, :, n].std(axis=0)
            ax.plot(t, mean, color=col, lw=1.5, label=f"cond {c}")
            ax.fill_between(t, mean - spread, mean + spread, color=col, alpha=0.2)
            ax.plot(t, spikes[sel, :, n].mean(axis=0), color=col, lw=0.7, ls=":")
            if truth is not None:
                ax.plot(t, truth[sel, :, n].mean(axis=0), color=col, lw=0.8, ls="--")
        ax.set_ylabel(f"neuron {n}\ncounts/bin", fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=len(conditions))
    axes[-1, 0].set_xlabel("bin")
    style = "solid: inferred (band: spread over trials); dotted: spike PSTH"
    fig.suptitle(style + ("; dashed: true rates" if truth is not None else ""), fontsize=9)
    return _png(fig)


def raster_vs_rates(rates: np.ndarray, spikes: np.ndarray, trials: Sequence[int]) -> bytes:
    """Spike raster over inferred rates (heat map) for example trials."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(trials), 2, figsize=(10, 2.4 * len(trials)), squeeze=False)
    for row, trial in enumerate(trials):
        spk = spikes[trial]  # (bins, neurons)
        b, n = np.nonzero(spk > 0)
        axes[row, 0].scatter(b, n, s=3, marker="|", color="black")
        axes[row, 0].set_xlim(-0.5, spk.shape[0] - 0.5)
        axes[row, 0].set_ylim(-0.5, spk.shape[1] - 0.5)
        axes[row, 0].set_ylabel(f"trial {trial}\nneuron", fontsize=8)
        im = axes[row, 1].imshow(rates[trial].T, aspect="auto", origin="lower", cmap="magma")
        fig.colorbar(im, ax=axes[row, 1], label="counts/bin")
    axes[0, 0].set_title("spikes")
    axes[0, 1].set_title("inferred rates")
    axes[-1, 0].set_xlabel("bin")
    axes[-1, 1].set_xlabel("bin")
    return _png(fig)
