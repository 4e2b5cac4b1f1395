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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "{runs}/search", "--out", "{file}"], "--out {file}: is a file, not a folder"),
        (["report", "{runs}/search", "--out", "{file}/sub"], "{file} is a file, not a folder"),
        (
            ["finalize", "--storage", "{runs}", "--run", "search", "--metrics-out", "{folder}"],
            "--metrics-out {folder}: is a folder; give a file name",
        ),
        (
            [
                "finalize",
                "--storage",
                "{runs}",
                "--run",
                "search",
                "--metrics-out",
                "{file}/m.json",
            ],
            "{file} is a file, not a folder",
        ),
    ],
    ids=["report into a file", "report under a file", "metrics into a folder", "under a file"],
)
def test_an_output_path_that_cannot_be_written_is_one_line_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    # Checked before the run is even read: these used to end in a traceback
    # after the report's first figure was stored, or after the sampling.
    from autolfads.cli import main

    paths = {"runs": tmp_path / "runs", "file": tmp_path / "taken", "folder": tmp_path / "dir"}
    paths["file"].write_text("x")
    paths["folder"].mkdir()
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autolfads: error: ") and err.count("\n") == 1
    assert message.format(**paths) in err
    assert not paths["runs"].exists()


def test_finalize_of_a_run_never_staged_names_the_fix_it_can_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It suggested `--config`, which only `autolfads coordinator` has.
    from autolfads.cli import main

    (tmp_path / "runs").mkdir()
    assert main(["finalize", "--storage", str(tmp_path / "runs"), "--run", "nothing"]) == 2
    err = capsys.readouterr().err
    assert "stage it first (autolfads stage CONFIG.yaml --storage URL)" in err
    assert "--config" not in err
