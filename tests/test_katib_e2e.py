"""Katib end to end, without Kubernetes: the real suggestion service process
(`autolfads katib suggestion`), the fake Katib controller, and each trial's
container command (`autolfads trainer --katib-trial NAME ...`) as a real
process whose `fitness=` line is collected as Katib's StdOut collector does.

The suggestion service is killed -9 mid-search and started again; the final
best (member, generation, metric) equals `autolfads run` on the same config
and seed in the same (async) mode with one trainer.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from coordinator_helpers import saved_state
from katib_fake import Condition, FakeKatib, FakeTrial, experiment_proto
from run_helpers import write_tiny_config

from autolfads.config import load_config
from autolfads.katib.experiment import searched_parameters
from autolfads.storage import RunLayout, open_store

pytestmark = pytest.mark.slow
RUN = "tiny-katib"
# The trial template's command (what `autolfads katib render` writes), with
# the storage URL filled in by the test.
TRIAL_COMMAND = [
    "trainer",
    "--katib-trial",
    "${trialSpec.Name}",
    "--threads",
    "1",
    "--device",
    "cpu",
]
FITNESS = re.compile(r"^fitness=(\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("katib-e2e"), RUN, population=3, mode="async")


def cli(*args: str, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "autolfads", "--log-level", "INFO", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def best_of(url: str) -> tuple:
    store = open_store(url, create_bucket=False)
    state = json.loads(saved_state(store, RUN).to_json())
    assert state["status"] == "finished", state["message"]
    best = state["best"]
    return best["member"], best["generation"], best["metric"]


class SuggestionProcess:
    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.proc: subprocess.Popen | None = None
        self.target = ""

    def start(self) -> None:
        port_file = self.tmp / "port"
        port_file.unlink(missing_ok=True)
        self.proc = cli(
            "katib",
            "suggestion",
            "--storage",
            self.url,
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            log=self.tmp / "suggestion.log",
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():  # the process writes it once it serves
            assert self.proc.poll() is None, (self.tmp / "suggestion.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def trial_runner(url: str, tmp: Path):
    """Runs each trial's container command; collects fitness= from stdout."""

    def run(trials: list[FakeTrial]) -> None:
        procs = []
        for trial in trials:
            command = [trial.name if a == "${trialSpec.Name}" else a for a in TRIAL_COMMAND]
            log = tmp / f"{trial.name}.log"
            with open(log, "ab") as err:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "autolfads",
                            *command,
                            "--storage",
                            url,
                            "--cache-dir",
                            str(tmp / "cache"),
                        ],
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    )
                )
        for trial, proc in zip(trials, procs, strict=True):
            out, _ = proc.communicate(timeout=300)
            values = FITNESS.findall(out)
            if proc.returncode == 0 and values:
                trial.condition = Condition.SUCCEEDED
                trial.metrics = {"fitness": values[-1]}  # metricStrategy: latest
            else:
                trial.condition = Condition.FAILED

    return run


def test_katib_search_survives_a_kill_9_and_equals_autolfads_run(config_path, tmp_path):
    reference_url = f"file://{tmp_path / 'reference'}"
    run = cli(
        "run",
        str(config_path),
        "--storage",
        reference_url,
        "--workers",
        "1",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--no-report",
        log=tmp_path / "run.log",
    )
    katib_url = f"file://{tmp_path / 'katib'}"
    assert cli("stage", str(config_path), "--storage", katib_url).wait(120) == 0
    service = SuggestionProcess(tmp_path, katib_url)
    service.start()
    try:
        cfg = load_config(config_path)
        pbt = cfg.pbt
        exp = experiment_proto(
            RUN,
            searched_parameters(cfg),
            pbt.population,
            pbt.population * (pbt.max_generations + 1),
        )
        katib = FakeKatib(service.target, exp, trial_runner(katib_url, tmp_path))
        katib.validate()
        rounds = 0
        while katib.step():
            rounds += 1
            if rounds == 2:  # generation 1 has run; its results are not yet read
                service.kill9()
                service.start()
                katib.target = service.target
        assert run.wait(300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        service.stop()
    assert best_of(katib_url) == best_of(reference_url)
    segments = [t for t in katib.trials if "-end-" not in t.name]
    assert len(segments) == 9 and all(t.condition == Condition.SUCCEEDED for t in katib.trials)
    # Each trial published its checkpoint and metrics where every trainer does.
    store = open_store(katib_url, create_bucket=False)
    assert store.exists(RunLayout(RUN).checkpoint("m002", 2))
    assert store.exists(RunLayout(RUN).member_metrics("m002", 2))
