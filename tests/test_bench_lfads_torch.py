"""benchmarks/bench_lfads_torch.py without lfads-torch: what it says about a bad
`--peer-python` (the lfads-torch comparison itself needs a prepared peer
interpreter and runs outside CI; see benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_lfads_torch.py"
HOWTO = "shared/reference/lfads-torch-peer.md"


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bench_lfads_torch: --peer-python ")
    for needle in (*needles, HOWTO):
        assert needle in lines[0]
    assert proc.stdout == ""  # no figures, no data generated


@pytest.mark.skipif(
    importlib.util.find_spec("lfads_torch") is not None,
    reason="this interpreter has lfads_torch; the case needs one without it",
)
def test_interpreter_without_lfads_torch_is_named_in_one_line(tmp_path: Path) -> None:
    proc = bench(tmp_path, "--peer-python", sys.executable)
    assert_one_line(proc, sys.executable, "No module named 'lfads_torch'")
    assert list(tmp_path.iterdir()) == []


def test_missing_interpreter_is_named_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "venv" / "bin" / "python"
    proc = bench(tmp_path, "--peer-python", str(missing))
    assert_one_line(proc, str(missing), "no such file")


def test_file_that_is_not_a_program_is_named_in_one_line(tmp_path: Path) -> None:
    not_a_program = tmp_path / "python"
    not_a_program.write_text("not an interpreter\n")  # no execute bit
    proc = bench(tmp_path, "--peer-python", str(not_a_program))
    assert_one_line(proc, str(not_a_program), "cannot run it")
