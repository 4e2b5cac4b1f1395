"""Train one stored segment of a finished search again, in this new process.

    python tests/segment_replay.py STORE RUN MEMBER GENERATION OUT_DIR

Reads the segment's metrics.json (its hyperparameters, start checkpoint and
epoch count), builds a new `TrainingSession` at that start (a fresh member's
seed comes from the search seed, as the coordinator derives it; a copy of
another member's checkpoint gets its generator seed as the trainer derives it), trains the
same number of epochs on one CPU thread and writes `checkpoint.pt` and
`epochs.json` to OUT_DIR. tests/test_trainer_reuse.py compares them with what
a long-lived trainer stored for the same segment.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch

from autolfads.coordinator.search.population import member_index, member_seed
from autolfads.coordinator.search.staging import load_run
from autolfads.storage import DataCache, RunLayout, open_store
from autolfads.trainer.data.lfads_h5 import load_lfads_h5
from autolfads.trainer.leased import exploit_generator_seed
from autolfads.trainer.model.session import TrainingSession


def replay(store_url: str, run: str, member: str, generation: int, out: Path) -> None:
    torch.set_num_threads(1)
    store = open_store(store_url, create_bucket=False)
    cfg, data_key, data_sha = load_run(store, run)
    with tempfile.TemporaryDirectory() as cache:
        data = load_lfads_h5(DataCache(store, Path(cache)).fetch(data_key, data_sha))
    doc = store.get_json(RunLayout(run).member_metrics(member, generation))
    layout = RunLayout(run)
    if doc["start_checkpoint"]:
        start = store.get_bytes(doc["start_checkpoint"])
        # A copy of another member's checkpoint draws from a stream of its own.
        seed = None
        if not doc["start_checkpoint"].startswith(layout.member_dir(member)):
            seed = exploit_generator_seed(cfg.pbt.seed, member, generation)
        session = TrainingSession.from_checkpoint(cfg, data, start, doc["hparams"], "cpu", seed)
    else:
        seed = member_seed(cfg.pbt.seed, member_index(member))
        session = TrainingSession.fresh(cfg, data, doc["hparams"], seed, "cpu")
    epochs = [session.train_epoch() for _ in doc["epochs"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint.pt").write_bytes(session.checkpoint())
    # As the worker writes them into metrics.json (non-finite values as null).
    rows = [{k: float(v) if math.isfinite(v) else None for k, v in e.items()} for e in epochs]
    (out / "epochs.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    url, run_name, member_name, gen, out_dir = sys.argv[1:]
    replay(url, run_name, member_name, int(gen), Path(out_dir))
