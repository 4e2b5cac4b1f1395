"""`autolfads run` end to end: real coordinator, real trainer processes, real storage.

One tiny search (examples/tiny_search.yaml) on local storage is shared by
several tests; the others check that interruption + resume and S3 storage
reach the very same best model, and that bad input fails with one line.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from coordinator_helpers import saved_state
from run_helpers import RUN, Workspace, autolfads, make_workspace, one_line_error, run_args
from s3_proxy import Hold, ScriptedS3Proxy

from autolfads.storage import LocalStore, open_store
from autolfads.trainer.timing import PHASES, TIMING_PREFIX

METRICS = ("co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(local_run: tuple[Workspace, dict]) -> tuple[Workspace, dict]:
    return local_run


def test_run_layout_best_metrics_and_report(finished: tuple[Workspace, dict]) -> None:
    ws, result = finished
    run = ws.runs / RUN
    assert (run / "config.yaml").is_file()
    assert len(list((run / "data").glob("*.h5"))) == 1
    visible = [p.name for p in (run / "generations").iterdir() if not p.name.startswith(".")]
    assert sorted(visible) == [
        "gen-0000.json",
        "gen-0001.json",
        "gen-0002.json",
    ]
    state = saved_state(LocalStore(run.parent), run.name)
    assert state is not None and state.status == "finished"
    members = sorted(p.name for p in (run / "members").iterdir())
    assert members == ["m000", "m001", "m002", "m003"]
    for member in members:
        lines = (run / "members" / member / "history.jsonl").read_text().splitlines()
        assert [json.loads(x)["generation"] for x in lines] == [0, 1, 2]

    best = run / "best"
    assert (best / "checkpoint.pt").stat().st_size > 0
    assert len(list(best.glob("lfads_output_*.h5"))) == 1
    metrics = result["metrics"]
    for name in METRICS:
        assert isinstance(metrics[name], float), name
    # The table printed at the end shows the same numbers, beside the data's
    # floor (smoothing baseline) and ceiling (true rates) and the model's place.
    floor, ceiling = metrics["floor"], metrics["ceiling"]
    for name in METRICS:
        row = rf"^  {name} +{metrics[name]:.4f} +{floor[name]:.4f} +{ceiling[name]:.4f} +"
        assert re.search(row, result["stdout"], re.MULTILINE), name
    co = (metrics["co_bps"] - floor["co_bps"]) / (ceiling["co_bps"] - floor["co_bps"])
    assert metrics["fraction_of_range"]["co_bps"] == pytest.approx(co)
    assert re.search(rf"^  co_bps .* {100 * co:.0f} %$", result["stdout"], re.MULTILINE)
    # The stored floor and ceiling are the run's baseline.json, computed at staging.
    baseline = json.loads((ws.runs / RUN / "baseline.json").read_text())
    assert {k: floor[k] for k in METRICS} == {k: baseline["floor"][k] for k in METRICS}
    assert str(best / "report" / "index.html") in result["stdout"]
    # Progress lines went to stderr while the search ran.
    assert "generation 3/3" in result["stderr"]

    report = best / "report"
    html = (report / "index.html").read_text()
    assert "<th>smoothing</th><th>true rates</th>" in html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for png in ("hparams.png", "metric.png", "lineage.png", "psth.png", "raster.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{png}"' in html


def test_status_of_the_finished_run_places_the_model(finished: tuple[Workspace, dict]) -> None:
    ws, result = finished
    metrics = result["metrics"]
    proc = autolfads(ws, "status", str(ws.runs / RUN))
    assert proc.returncode == 0, proc.stderr
    assert f"evaluation of {metrics['member']}" in proc.stdout
    floor, ceiling = metrics["floor"]["co_bps"], metrics["ceiling"]["co_bps"]
    row = rf"^  co_bps +{metrics['co_bps']:.4f} +{floor:.4f} +{ceiling:.4f} +-?\d+ %$"
    assert re.search(row, proc.stdout, re.MULTILINE), proc.stdout


def test_best_member_matches_generation_logs(finished: tuple[Workspace, dict]) -> None:
    ws, result = finished
    run = ws.runs / RUN
    last = json.loads((run / "generations" / "gen-0002.json").read_text())
    assert result["metrics"]["member"] == last["best_member"]
    assert result["metrics"]["valid_heldout_recon_smth"] == pytest.approx(last["best_metric"])


def test_members_are_ranked_by_the_heldout_nll_they_ended_with(
    finished: tuple[Workspace, dict],
) -> None:
    ws, result = finished
    run = ws.runs / RUN
    assert result["metrics"]["fitness_metric"] == "valid_heldout_recon_smth"
    for g in range(3):
        log = json.loads((run / "generations" / f"gen-{g:04d}.json").read_text())
        ended = {}
        for member in log["ranking"]:
            doc = json.loads(
                (run / "members" / member / f"gen-{g:04d}" / "metrics.json").read_text()
            )
            assert doc["fitness_metric"] == "valid_heldout_recon_smth"
            assert doc["fitness"] == doc["epochs"][-1]["valid_heldout_recon_smth"]
            assert doc["fitness"] != doc["epochs"][-1]["valid_recon_smth"]
            ended[member] = doc["fitness"]
        assert log["ranking"] == sorted(ended, key=lambda m: (ended[m], m))
        assert log["best_metric"] == pytest.approx(ended[log["ranking"][0]])
    # pbt.first_member: training: m000 started at the config's training values.
    first = json.loads((run / "members" / "m000" / "gen-0000" / "metrics.json").read_text())
    assert first["hparams"]["lr_init"] == 4e-3 and first["hparams"]["cd_rate"] == 0.3


def test_trainer_logs_tell_where_its_time_went(finished: tuple[Workspace, dict]) -> None:
    # benchmarks/worker_breakdown.py reads these lines; the trainer was forked
    # from a template that imported its modules before its environment
    # (which asks for them) was set.
    log = (finished[0].root / "logs" / "worker-0.log").read_text()
    lines = [x for x in log.splitlines() if TIMING_PREFIX + "{" in x]
    last = json.loads(lines[-1].split(TIMING_PREFIX, 1)[1])
    assert last["event"] == "exit" and last["worker"] == f"{RUN}-local-0"
    assert last["train"] > 0 and all(last[phase] >= 0 for phase in PHASES)


def test_existing_run_is_refused_and_left_alone(finished: tuple[Workspace, dict]) -> None:
    ws, _ = finished
    folder = ws.runs / RUN / "coordinator"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    proc = autolfads(ws, *run_args(ws))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0] and "--resume" in lines[0]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def shell_words(command: str) -> list[str]:
    """The words of `command` as a POSIX shell reads them: what a pasted command runs."""
    out = subprocess.run(
        ["sh", "-c", f"printf '%s\\0' {command}"], capture_output=True, check=True
    ).stdout
    return out.decode().split("\0")[:-1]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_then_resume_reaches_the_same_best(
    finished: tuple[Workspace, dict],
    tmp_path: Path,
    s3_server,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    stop: signal.Signals,
) -> None:
    # SIGTERM (kill, timeout, a batch scheduler) stops the run as Ctrl-C does;
    # it used to end the run's process alone, its trainers training on.
    # The trainers' uploads of generation 1 are held in a proxy in front of the
    # S3 server, so Ctrl-C certainly lands while generation 1 is open; after it,
    # those uploads fail, so the search cannot close generation 1 whichever
    # process runs first. Nothing here races the search.
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    hold = Hold("PUT", r"/members/m\d+/gen-0001/")
    proxy = ScriptedS3Proxy(s3_server.endpoint_url, hold).start()
    # Two URL options: the `&` must reach the resumed run through the shell.
    url = f"s3://{s3_bucket}/test?endpoint={proxy.endpoint_url}&region=us-east-1"
    ws = make_workspace(tmp_path)
    try:
        # As from a terminal: Ctrl-C reaches the run even when these tests were
        # started where SIGINT is ignored (a background job of a script).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "autolfads",
                    *run_args(ws, "--workers", "2", "--storage", url),
                ],
                cwd=ws.root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        hold.wait_held()
        assert proc.poll() is None
        proc.send_signal(stop)
        hold.release("503:SlowDown")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        # The command it prints is what the shell gets when pasted (it was
        # printed unquoted: the `&` cut the URL and ran the run in the background).
        resume = shell_words(err.rsplit("Resume with: ", 1)[1].splitlines()[0])
        assert resume[:5] == ["autolfads", "run", str(ws.config), "--resume", "--storage"]
        assert resume[5:] == [url]
        store = open_store(url)
        saved = saved_state(store, RUN)
        assert saved.status == "running" and saved.generation == 1
        # `run` ended its own trainers, so it handed their leases back: the
        # resumed run need not wait for them to expire.
        assert not [x for x in saved.leases.values() if x.status == "active"]
        assert not store.exists(f"{RUN}/best/metrics.json")

        proxy.rule = lambda n, method, path: None  # storage is healthy again
        resumed = autolfads(ws, *resume[1:], "--workers", "2", "--threads", "1")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        metrics = json.loads(store.get_bytes(f"{RUN}/best/metrics.json"))
    finally:
        hold.release()
        proxy.stop()
    expected = finished[1]["metrics"]
    assert metrics["member"] == expected["member"]
    assert metrics["valid_heldout_recon_smth"] == expected["valid_heldout_recon_smth"]
    assert metrics["co_bps"] == expected["co_bps"]


def test_s3_storage_and_four_workers_reach_the_same_best(
    finished: tuple[Workspace, dict], tmp_path: Path, s3_store_url: str, s3_server
) -> None:
    # The same seed on local storage with 1 worker and on S3 with 4 workers:
    # neither the deployment path nor the worker count changes the science.
    # And on IPv6 loopback: the trainers dial the address the coordinator is
    # bound to (they always dialled 127.0.0.1 and were refused).
    ws = make_workspace(tmp_path)
    listen = ["--listen", "[::1]:0"] if ipv6_loopback() else []
    proc = autolfads(ws, *run_args(ws, "--workers", "4", "--storage", s3_store_url, *listen))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not ws.runs.exists()  # nothing went to local storage
    bucket = s3_store_url.split("/")[2]
    client = s3_server.raw_client()
    keys = {o.object_name for o in client.list_objects(bucket, prefix="test/", recursive=True)}
    assert f"test/{RUN}/best/metrics.json" in keys
    assert f"test/{RUN}/best/report/index.html" in keys
    metrics = json.loads(client.get_object(bucket, f"test/{RUN}/best/metrics.json").read())
    expected = finished[1]["metrics"]
    assert metrics["member"] == expected["member"]
    assert metrics["valid_heldout_recon_smth"] == expected["valid_heldout_recon_smth"]
    assert metrics["co_bps"] == expected["co_bps"]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---- bad input: one line, non-zero exit, nothing created ------------------------


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    ws.config.write_text(ws.config.read_text().replace("population: 4", "population: four"))
    proc = autolfads(ws, *run_args(ws))
    one_line_error(proc, "pbt.population", "four")
    assert not ws.runs.exists()


def test_missing_data_file_is_one_line(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    ws.config.write_text("name: nodata\ndata: {path: missing.h5}\n")
    proc = autolfads(ws, *run_args(ws))
    one_line_error(proc, "missing.h5", "not found")
    assert not ws.runs.exists()


def test_heldout_fitness_on_data_without_heldout_parts_is_one_line(tmp_path: Path) -> None:
    from dataclasses import replace

    from autolfads.trainer.data.lfads_h5 import write_lfads_h5
    from autolfads.trainer.data.synth import make_chaotic_rnn

    ws = make_workspace(tmp_path)
    data = make_chaotic_rnn(seed=1, n_conditions=4, n_replications=5, n_bins=10, n_fp_bins=2)
    held_in = {
        s: replace(getattr(data, s), recon_data=getattr(data, s).encod_data, truth=None)
        for s in ("train", "valid")
    }
    write_lfads_h5(replace(data, **held_in, attrs={}), ws.root / "held_in.h5")
    ws.config.write_text(
        "name: held-in\ndata: {path: ../held_in.h5}\npbt: {fitness: valid_heldout_recon_smth}\n"
    )
    proc = autolfads(ws, *run_args(ws))
    one_line_error(proc, "pbt.fitness", "needs held-out neurons")
    assert not ws.runs.exists()
    # `autolfads stage` (the path to other machines and Argo) refuses it too.
    proc = autolfads(ws, "stage", str(ws.config), "--storage", str(ws.runs))
    one_line_error(proc, "pbt.fitness", "needs held-out neurons")
    assert not ws.runs.exists()


def test_unreachable_storage_is_one_line(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "AWS_ACCESS_KEY_ID": "someone",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-printed",
        "AUTOLFADS_S3_MAX_ATTEMPTS": "2",
        "AUTOLFADS_S3_BASE_DELAY_S": "0.01",
        "AUTOLFADS_S3_CONNECT_TIMEOUT_S": "1",
    }
    url = f"s3://bucket/runs?endpoint=http://127.0.0.1:{port}"
    proc = autolfads(ws, *run_args(ws, "--storage", url), env=env, timeout=60)
    one_line_error(proc, f"127.0.0.1:{port}")
    assert "s3cr3t-never-printed" not in proc.stderr + proc.stdout


def test_port_in_use_is_one_line_and_stages_nothing(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = autolfads(ws, *run_args(ws, "--listen", f"127.0.0.1:{port}"))
    one_line_error(proc, f"127.0.0.1:{port}")
    assert not (ws.runs / RUN).exists()


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--log-dir", "taken"], ["--log-dir", "is a file"]),
        (["--log-dir", "taken/logs"], ["--log-dir taken/logs", "is a file"]),
        (["--lease-timeout", "inf"], ["--lease-timeout", "> 0 seconds"]),
        pytest.param(
            ["--device", "cuda"],
            ["'cuda'", "no CUDA GPU"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        (["--trainer-gpus", "1"], ["--trainer-gpus are for --ray"]),
    ],
    ids=[
        "log-dir is a file",
        "log-dir under a file",
        "lease-timeout inf",
        "cuda without a GPU",
        "trainer-gpus without ray",
    ],
)
def test_options_that_cannot_work_are_one_line_and_stage_nothing(
    tmp_path: Path, flags: list[str], needles: list[str]
) -> None:
    # Each used to fail after the run was staged (a traceback for the log
    # folder), so the rerun said the run already existed.
    ws = make_workspace(tmp_path)
    (ws.root / "taken").write_text("a file, not a folder")
    proc = autolfads(ws, *run_args(ws, *flags))
    one_line_error(proc, *needles)
    assert not (ws.runs / RUN).exists()
