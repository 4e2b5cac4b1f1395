"""Running the `autolfads` command on the tiny example search, for the
end-to-end tests (local, S3 and Ray paths compare against one local run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tiny_search.yaml"
RUN = "tiny-search"


@dataclass(frozen=True)
class Workspace:
    root: Path
    config: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"


def make_workspace(root: Path) -> Workspace:
    """The example config copied so its relative data path lands in `root`."""
    (root / "cfg").mkdir(parents=True)
    config = root / "cfg" / "tiny.yaml"
    shutil.copy(EXAMPLE, config)
    return Workspace(root, config)


def autolfads(ws: Workspace, *args: str, timeout: float = 240, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "autolfads", *args],
        cwd=ws.root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def run_args(ws: Workspace, *extra: str) -> list[str]:
    return ["run", str(ws.config), "--threads", "1", "--progress", "plain", *extra]


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("autolfads: error: ")
    for needle in needles:
        assert needle in lines[0]


def write_tiny_config(root: Path, run: str, **pbt: object) -> Path:
    """A tiny chaotic-RNN data set and a config for it in `root` (the real
    trainer in seconds), for the searches driven by real processes; `pbt`
    overrides the search settings (population, mode, ...)."""
    import yaml

    from autolfads.trainer.data.lfads_h5 import write_lfads_h5
    from autolfads.trainer.data.synth import make_chaotic_rnn

    data = make_chaotic_rnn(
        seed=0, n_conditions=8, n_replications=4, n_neurons=10, n_heldout=2, n_bins=20, n_fp_bins=4
    )
    write_lfads_h5(data, root / "data.h5")
    cfg = {
        "name": run,
        "data": {"path": "data.h5"},
        "model": {
            "ic_enc_dim": 8, "ci_enc_dim": 4, "con_dim": 4, "co_dim": 2,
            "ic_dim": 8, "gen_dim": 8, "fac_dim": 4,
        },
        "training": {"batch_size": 16, "l2_increase_epochs": 1, "kl_increase_epochs": 1},
        "pbt": {
            "population": 4, "burn_in_epochs": 2, "generation_epochs": 1,
            "max_generations": 3, "seed": 1, **pbt,
        },
    }  # fmt: skip
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def stage_tiny_search(root: Path, run: str, **pbt: object):
    """`write_tiny_config`'s run staged in a local store under `root/runs`
    (returns the store), for coordinators and workers run in process."""
    from autolfads.config import load_config
    from autolfads.coordinator.search.staging import stage_run
    from autolfads.storage import LocalStore
    from autolfads.trainer.data.config_data import load_config_data

    cfg = load_config(write_tiny_config(root, run, **pbt))
    data_path, _ = load_config_data(cfg)
    store = LocalStore(root / "runs")
    stage_run(store, cfg, data_path)
    return store


def serve_staged(store, run: str, port: int = 0):
    """A coordinator on loopback for the staged `run`: (server, port)."""
    from autolfads.coordinator.search.service import CoordinatorService
    from autolfads.coordinator.search.staging import load_run
    from autolfads.coordinator.wire.server import create_server

    cfg, key, sha = load_run(store, run)
    return create_server(f"127.0.0.1:{port}", CoordinatorService.open_search(cfg, store, key, sha))


def until(condition, what: str, timeout_s: float = 60.0) -> None:
    """Poll `condition()` until it holds; fail naming `what` after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
