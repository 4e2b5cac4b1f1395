"""A trainer keeps its training session across leases (trainer/worker.py's
`SessionPool`): a segment it trains after other members' segments must equal,
bit for bit, the same segment trained by a new process.

One tiny synchronous search runs with `autolfads run --workers 1`: a single
real trainer process (real coordinator over gRPC, local storage) trains all
4 members x 3 generations. Some of its segments are then trained again, each
in a new process (tests/segment_replay.py), from the start point and with
the hyperparameters the trainer recorded; checkpoints (weights, optimizer
moments and groups, random states, epoch, smoothed metrics) and per-epoch
metrics must be identical.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from run_helpers import REPO, write_tiny_config

from autolfads.storage import RunLayout

pytestmark = pytest.mark.slow
RUN = "reuse"
LAYOUT = RunLayout(RUN)


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> Path:
    """The finished search's store folder (every checkpoint kept)."""
    root = tmp_path_factory.mktemp("reuse")
    config = write_tiny_config(root, RUN, keep_generations=3)
    store = root / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "autolfads", "run", str(config), "--storage", str(store),
         "--workers", "1", "--threads", "1", "--device", "cpu", "--no-report",
         "--progress", "quiet", "--log-dir", str(root / "logs")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return store


def metrics(store: Path, member: str, generation: int) -> dict[str, Any]:
    return json.loads((store / LAYOUT.member_metrics(member, generation)).read_text())


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_identical(a: Any, b: Any, where: str = "checkpoint") -> None:
    """Nested checkpoint values equal bit for bit (tensors: dtype, shape, values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def replays(store: Path, segments: list[tuple[str, int]], out: Path) -> list[Path]:
    """Each segment trained again by a new process (all at once)."""
    dirs = [out / f"{member}-{generation}" for member, generation in segments]
    script = str(REPO / "tests" / "segment_replay.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(store), RUN, member, str(generation), str(folder)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for (member, generation), folder in zip(segments, dirs, strict=True)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return dirs


def test_segments_trained_after_others_equal_new_processes(search: Path, tmp_path: Path) -> None:
    # One process trained every segment, generation by generation, m000 to
    # m003: m003's burn-in followed three other fresh members, its last
    # segment followed all the others; and a member that continued another
    # member's checkpoint (an exploit), where the search copied one.
    exploits = [
        (m, g)
        for g in (1, 2)
        for m in ("m000", "m001", "m002")
        if not metrics(search, m, g)["start_checkpoint"].startswith(LAYOUT.member_dir(m))
    ]
    segments = [("m003", 0), ("m003", 2), *exploits[:1]]
    for (member, generation), replay in zip(
        segments, replays(search, segments, tmp_path), strict=True
    ):
        stored = metrics(search, member, generation)
        assert stored["start_checkpoint"] == "" or generation > 0
        replayed = json.loads((replay / "epochs.json").read_text())
        assert len(replayed) == len(stored["epochs"]) > 0
        for ours, theirs in zip(stored["epochs"], replayed, strict=True):
            ours.pop("seconds"), theirs.pop("seconds")
            assert ours == theirs, (member, generation)
        reused = load(search / LAYOUT.checkpoint(member, generation))
        fresh = load(replay / "checkpoint.pt")
        # Every new process seeds the global RNGs (numpy's, Python's, and in
        # torch 2.13 torch's too) from OS entropy; training draws only from the
        # session's own generator, which must match.
        for ckpt in (reused, fresh):
            del ckpt["global_rng"]
        assert_identical(reused, fresh, f"{member} generation {generation}")
