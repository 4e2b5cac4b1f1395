"""Finish a search: posterior-sample and evaluate the best member into `<run>/best/`.

    <run>/best/checkpoint.pt             the best member's last checkpoint
    <run>/best/lfads_output_<stem>.h5    input data + posterior-averaged outputs
    <run>/best/metrics.json              NLB metrics on the validation split

Reads only the run layout (config, data, best/search.json, checkpoints), so it
works on a run that was searched anywhere: locally, or on Argo with MinIO.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autolfads.config import RunConfig
from autolfads.coordinator.search.staging import load_run
from autolfads.errors import AutolfadsError
from autolfads.storage import DataCache, ObjectNotFound, RunLayout, Store, default_cache_dir
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import load_cached
from autolfads.trainer.evaluation.baseline import place
from autolfads.trainer.evaluation.metrics import evaluate
from autolfads.trainer.evaluation.posterior import posterior_sample, write_lfads_output
from autolfads.trainer.model.session import TrainingSession

log = logging.getLogger(__name__)


class SearchNotFinished(AutolfadsError):
    """The run has no best member yet."""


@dataclass(frozen=True)
class BestMember:
    member: str
    generation: int
    metric: float
    checkpoint: str


def read_best_member(store: Store, layout: RunLayout) -> BestMember:
    """The best member recorded by the coordinator in best/search.json."""
    try:
        doc = json.loads(store.get_bytes(layout.best("search.json")))
    except ObjectNotFound:
        raise SearchNotFinished(
            f"run {layout.run!r} in {store.url} has no best member yet "
            "(best/search.json is written when the search ends)"
        ) from None
    best = doc.get("best")
    if not best:
        raise SearchNotFinished(
            f"run {layout.run!r} ended without a usable member: {doc.get('message', '')}"
        )
    metric = best.get("metric")
    return BestMember(
        member=str(best["member"]),
        generation=int(best["generation"]),
        metric=float("nan") if metric is None else float(metric),
        checkpoint=str(best["checkpoint"]),
    )


def output_name(data_key: str) -> str:
    stem = Path(data_key).name.split(".", 1)[0][:12]
    return f"lfads_output_{stem}.h5"


def sample_checkpoint(
    cfg: RunConfig,
    data: LfadsData,
    checkpoint: bytes,
    *,
    device: str = "auto",
    num_samples: int | None = None,
    seed: int | None = None,
    batch_size: int = 512,
) -> dict[str, np.ndarray]:
    """Posterior-averaged outputs of a checkpoint on `data` (finalize and apply).

    Defaults are the config's: `training.posterior_samples` samples and the
    posterior seed `training.seed`, so the same checkpoint on the same trials
    (same order, same batch size) gives the same outputs on the same kind of
    device; CPU and CUDA generators draw different noise.
    """
    session = TrainingSession.from_checkpoint(cfg, data, checkpoint, device=device)
    return posterior_sample(
        session,
        data,
        num_samples=num_samples or cfg.training.posterior_samples,
        batch_size=batch_size,
        seed=cfg.training.seed if seed is None else seed,
    )


def _placed(store: Store, layout: RunLayout, metrics: dict[str, float]) -> dict[str, Any]:
    """floor / ceiling / fraction_of_range from the run's baseline.json (runs
    staged before it existed have none: then nothing is added)."""
    try:
        baseline = store.get_json(layout.baseline())
    except ObjectNotFound:
        return {}
    return place(metrics, baseline)


def finalize_run(
    store: Store,
    run: str,
    *,
    device: str = "auto",
    num_samples: int | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Sample and evaluate the best member; write best/; return metrics.json's content."""
    layout = RunLayout(run)
    cfg, data_key, data_sha = load_run(store, run)
    best = read_best_member(store, layout)
    cache = DataCache(store, cache_dir or default_cache_dir())
    data = load_cached(cache, data_key, data_sha)
    checkpoint = store.get_bytes(best.checkpoint)
    samples = num_samples or cfg.training.posterior_samples
    log.info("posterior sampling %s (%d samples)", best.checkpoint, samples)
    outputs = sample_checkpoint(cfg, data, checkpoint, device=device, num_samples=samples)
    metrics = evaluate(data, outputs, split="valid")
    doc: dict[str, Any] = {
        "run": run,
        "member": best.member,
        "generation": best.generation,
        # The search's fitness of the best segment, under its own name.
        "fitness_metric": cfg.pbt.fitness,
        cfg.pbt.fitness: best.metric if math.isfinite(best.metric) else None,
        "checkpoint": layout.best("checkpoint.pt"),
        "source_checkpoint": best.checkpoint,
        "posterior_samples": samples,
        "split": "valid",
        # A metric the data cannot give (NaN: e.g. held-out neurons without a
        # spike in the valid split) is null, as in `status --json`; it used
        # to fail the JSON write after the outputs were stored.
        **{k: float(v) if math.isfinite(float(v)) else None for k, v in metrics.items()},
        **_placed(store, layout, metrics),
    }
    out_key = layout.best(output_name(data_key))
    store.put_bytes(layout.best("checkpoint.pt"), checkpoint)
    blob = write_lfads_output(outputs, data=data)
    assert blob is not None  # no destination: the file comes back as bytes
    store.put_bytes(out_key, blob, content_type="application/x-hdf5")
    doc["lfads_output"] = out_key
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"
    # metrics.json last: its presence means best/ is complete.
    store.put_bytes(layout.best("metrics.json"), text.encode(), content_type="application/json")
    return doc
