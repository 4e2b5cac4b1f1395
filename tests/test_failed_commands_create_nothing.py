"""A command that fails leaves no trace: every command taking a store, given
one that does not exist, fails with one line and creates no folder.

Each command is run for real (`python -m autolfads ...`) with the store as a
bare path and as a file:// URL; commands that only read (status, report) and
commands that need a staged run (coordinator, trainer, finalize) must never
create the store, and `run`/`stage` must not create it when they are refused
before staging.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tiny_search.yaml"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def workspace(root: Path) -> Path:
    (root / "cfg").mkdir()
    config = root / "cfg" / "tiny.yaml"
    shutil.copy(EXAMPLE, config)
    return config


# command -> argv after `autolfads`, given the store URL, the config and a busy port.
Args = Callable[[str, Path, int], list[str]]
COMMANDS: dict[str, Args] = {
    "status": lambda store, cfg, port: ["status", f"{store}/nothing"],
    "report": lambda store, cfg, port: ["report", f"{store}/nothing"],
    "finalize": lambda store, cfg, port: ["finalize", "--storage", store, "--run", "nothing"],
    "coordinator": lambda store, cfg, port: [
        "coordinator", "--storage", store, "--run", "nothing", "--listen", "127.0.0.1:0",
    ],
    "trainer": lambda store, cfg, port: [
        "trainer", "--storage", store, "--run", "nothing", "--threads", "1",
        "--coordinator", f"127.0.0.1:{closed_port()}", "--unavailable-wait", "0",
    ],
    # Refused after the config and data were checked: the port is taken.
    "run": lambda store, cfg, port: [
        "run", str(cfg), "--storage", store, "--listen", f"127.0.0.1:{port}", "--threads", "1",
    ],
    # Refused before staging: its data file is missing.
    "stage": lambda store, cfg, port: ["stage", str(cfg.with_name("nodata.yaml")), "--storage", store],
}  # fmt: skip


@pytest.mark.parametrize("form", ["bare", "file"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_failed_command_creates_no_store(command: str, form: str, tmp_path: Path) -> None:
    config = workspace(tmp_path)
    config.with_name("nodata.yaml").write_text("name: nodata\ndata: {path: missing.h5}\n")
    target = tmp_path / "nostore"
    store = str(target) if form == "bare" else target.as_uri()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "autolfads",
                *COMMANDS[command](store, config, busy.getsockname()[1]),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "AUTOLFADS_LOG_LEVEL": "ERROR"},
        )
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), proc.stderr
    assert not target.exists(), f"`autolfads {command}` created {target}"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
