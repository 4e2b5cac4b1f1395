"""Running the `autolfads` command on the tiny example search, for the
end-to-end tests (local, S3 and Ray paths compare against one local run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
