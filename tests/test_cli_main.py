"""The `autolfads` front door: behaviour shared by every subcommand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autolfads.cli import build_parser
from autolfads.trainer.data.lfads_h5 import write_lfads_h5
from autolfads.trainer.data.synth import make_synthetic

COMMANDS = ("run", "train", "data", "status", "report", "finalize", "stage",
            "coordinator", "trainer", "cancel", "argo", "apply")  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    assert f"autolfads {command}" in capsys.readouterr().out


def test_output_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "small.h5"
    write_lfads_h5(make_synthetic("lorenz", seed=0, n_conditions=4, n_trials_per_condition=5), path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "autolfads", "data", "check", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # like `| head` that already exited
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_a_spawned_child_of_python_m_autolfads_runs_no_second_command():
    # multiprocessing's `spawn` re-imports the parent's main module in the
    # child under the name `__mp_main__` (runpy, as below): an unguarded
    # `python -m autolfads` would run its command again there.
    code = (
        "import runpy; runpy.run_module('autolfads', run_name='__mp_main__', alter_sys=True);"
        " print('imported')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "imported"), done.stderr
