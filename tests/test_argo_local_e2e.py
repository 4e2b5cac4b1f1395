"""The rendered Workflow, run step by step as local processes, finishes a search.

tests/argo_localrun.py executes the exact command lines of the Workflow's
containers in Argo's order (stage; coordinator and N trainers concurrently;
then finalize and report) against moto's S3 server, emulating only Argo's
scheduling, artifacts and the coordinator's Service. The second test kills a
trainer and the coordinator mid-search; the retryStrategy restarts them and
the search still ends Succeeded with its results in the bucket.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_localrun import ArtifactRepo, Fault, LocalWorkflowRun
from s3_proxy import Hold, ScriptedS3Proxy

from autolfads.argo.manifests import load_documents
from autolfads.argo.render import RenderOptions, render_workflow
from autolfads.config import loads_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
RUN = "e2e-run"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autolfads.trainer.data.lfads_h5 import write_lfads_h5
    from autolfads.trainer.data.synth import make_chaotic_rnn

    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    data = make_chaotic_rnn(
        seed=2, n_conditions=8, n_replications=4, n_neurons=10, n_heldout=3, n_bins=16, n_fp_bins=4
    )
    write_lfads_h5(data, path)
    return path


def config_text(data: Path) -> str:
    return yaml.safe_dump(
        {
            "name": RUN,
            "data": {"path": str(data)},
            "model": {
                "ic_enc_dim": 8,
                "ci_enc_dim": 4,
                "con_dim": 4,
                "co_dim": 1,
                "ic_dim": 4,
                "gen_dim": 8,
                "fac_dim": 4,
            },
            "training": {
                "batch_size": 8,
                "l2_increase_epochs": 1,
                "kl_increase_epochs": 1,
                "posterior_samples": 2,
                "num_threads": 1,
            },
            "pbt": {
                "population": 3,
                "generation_epochs": 1,
                "burn_in_epochs": 2,
                "max_generations": 3,
            },
        }
    )


def artifact_key_format() -> str:
    cm = load_documents(ROOT / "deploy" / "k8s" / "artifact-repositories.yaml")[0]
    return yaml.safe_load(cm["data"]["minio"])["s3"]["keyFormat"]


def prepared_workflow(bucket: str, endpoint: str, data: Path) -> dict[str, Any]:
    """`autolfads argo render` output with the parameters a user would pass."""
    text = config_text(data)
    cfg = loads_config(text)
    opts = RenderOptions(
        storage=f"s3://{bucket}/runs",
        s3_endpoint=endpoint,
        n_trainers=2,
        trainer_threads=1,
        lease_timeout=4,
        stage=False,
    )
    workflow = render_workflow(cfg, opts)
    # Stage in the "cluster" from the config parameter (as `argo submit -p
    # stage=true -p config=...` would), so the stage step runs too.
    params = workflow["spec"]["arguments"]["parameters"]
    for param in params:
        if param["name"] == "stage":
            param["value"] = "true"
    params.append({"name": "config", "value": text})
    return workflow


def set_parameter(workflow: dict[str, Any], name: str, value: str) -> None:
    """As `argo submit -p NAME=VALUE` would."""
    params = workflow["spec"]["arguments"]["parameters"]
    params[:] = [p for p in params if p["name"] != name] + [{"name": name, "value": value}]


def run_locally(
    workflow: dict[str, Any],
    s3_server,
    bucket: str,
    workdir: Path,
    faults: list[Fault],
    deadline_s: float = 200,
):
    run = LocalWorkflowRun(
        workflow,
        workdir=workdir,
        artifacts=ArtifactRepo(s3_server.raw_client(), bucket, artifact_key_format()),
        secrets={
            "autolfads-s3": {
                "AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            }
        },
        faults=faults,
        deadline_s=deadline_s,
        extra_env={"OMP_NUM_THREADS": "1", "AUTOLFADS_S3_CONNECT_TIMEOUT_S": "2"},
    )
    return run.run()


def keys(s3_server, bucket: str, prefix: str = "") -> list[str]:
    client = s3_server.raw_client()
    return [o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True)]


def explain(result) -> str:
    lines = [f"{result.phase}: {result.message}"]
    for pod in result.pods:
        tail = pod.log.read_text(errors="replace")[-1500:] if pod.log and pod.log.exists() else ""
        lines.append(
            f"--- {pod.task}[{pod.item}] attempt {pod.attempt} exit {pod.exit_code}\n{tail}"
        )
    return "\n".join(lines)


def assert_finished_search(result, s3_server, bucket: str) -> None:
    assert result.phase == "Succeeded", explain(result)
    for task in ("stage", "coordinator-service", "coordinator", "trainer", "finalize", "report"):
        assert "Succeeded" in result.results[task], explain(result)
    metrics = json.loads(result.outputs["best-metrics"])
    for name in ("co_bps", "fp_bps"):
        assert isinstance(metrics[name], float)
    stored = keys(s3_server, bucket)
    assert f"runs/{RUN}/config.yaml" in stored
    assert f"runs/{RUN}/best/checkpoint.pt" in stored
    assert f"runs/{RUN}/best/metrics.json" in stored
    assert any(k.startswith(f"runs/{RUN}/best/report/") for k in stored)
    for name in ("report", "best-model"):
        key = result.artifacts[name]
        assert key.startswith(f"artifacts/{result.name}/") and key in stored


def test_rendered_workflow_runs_to_a_finished_search(
    s3_server, s3_bucket: str, tiny_data: Path, tmp_path: Path
) -> None:
    s3_server.raw_client().make_bucket(s3_bucket)
    workflow = prepared_workflow(s3_bucket, s3_server.endpoint_url, tiny_data)
    result = run_locally(workflow, s3_server, s3_bucket, tmp_path, faults=[])
    assert_finished_search(result, s3_server, s3_bucket)
    trainers = [p for p in result.pods if p.task == "trainer"]
    assert sorted(p.item for p in trainers) == ["0", "1"]
    coordinator = next(p for p in result.pods if p.task == "coordinator")
    assert coordinator.args[1:] == [
        "coordinator",
        "--storage",
        f"s3://{s3_bucket}/runs",
        "--run",
        RUN,
        "--listen",
        coordinator.args[7],
        "--lease-timeout",
        "4",
        "--relays",
        "0",
        "--health-listen",
        coordinator.args[13],
    ]
    assert coordinator.args[7].startswith("127.0.0.1:")
    # The probes' port: the pod's own, here a free loopback port of its own.
    assert coordinator.args[13].startswith("127.0.0.1:")
    assert coordinator.args[13] != coordinator.args[7]
    assert trainers[0].args[trainers[0].args.index("--coordinator") + 1] == coordinator.args[7]


def test_search_survives_a_killed_trainer_and_a_restarted_coordinator(
    s3_server, s3_bucket: str, tiny_data: Path, tmp_path: Path
) -> None:
    s3_server.raw_client().make_bucket(s3_bucket)
    # The pods reach S3 through a proxy that holds generation 1's checkpoint
    # uploads: the search is certainly under way (generation 0 done, nothing
    # can finish) when the trainer and then the coordinator are killed; the
    # uploads go through once the coordinator is down.
    hold = Hold("PUT", r"/members/m\d+/gen-0001/")
    proxy = ScriptedS3Proxy(s3_server.endpoint_url, hold).start()
    workflow = prepared_workflow(s3_bucket, proxy.endpoint_url, tiny_data)
    trainer_fault = Fault("trainer", item="0", trigger=hold.held.is_set)
    faults = [
        trainer_fault,
        Fault("coordinator", trigger=lambda: trainer_fault.fired, then=hold.release),
    ]
    try:
        result = run_locally(workflow, s3_server, s3_bucket, tmp_path, faults=faults)
    finally:
        hold.release()
        proxy.stop()
    assert all(f.fired for f in faults), explain(result)
    assert_finished_search(result, s3_server, s3_bucket)
    coordinator = [p for p in result.pods if p.task == "coordinator"]
    assert coordinator[0].exit_code == -9 and coordinator[-1].exit_code == 0
    assert len({p.args[7] for p in coordinator}) == 1  # same Service address after restart
    trainer0 = [p for p in result.pods if p.task == "trainer" and p.item == "0"]
    assert trainer0[0].exit_code == -9 and trainer0[-1].exit_code == 0


def test_a_workflow_whose_trainers_all_fail_ends_failed_promptly(
    s3_server, s3_bucket: str, tiny_data: Path, tmp_path: Path
) -> None:
    """Every trainer exits non-zero on every attempt (here `-p trainer-device=cuda`
    on a machine without a GPU): the search is stopped and the workflow ends
    Failed, instead of the coordinator serving nobody until the deadline."""
    s3_server.raw_client().make_bucket(s3_bucket)
    workflow = prepared_workflow(s3_bucket, s3_server.endpoint_url, tiny_data)
    set_parameter(workflow, "trainer-device", "cuda")
    set_parameter(workflow, "trainer-retries", "1")
    started = time.monotonic()
    result = run_locally(workflow, s3_server, s3_bucket, tmp_path, faults=[], deadline_s=120)
    elapsed = time.monotonic() - started
    assert result.phase == "Failed", explain(result)
    assert result.message != "Step exceeded its deadline" and elapsed < 100, explain(result)
    trainers = [p for p in result.pods if p.task == "trainer"]
    assert len(trainers) == 4 and all(p.exit_code not in (0, None) for p in trainers)
    assert result.results["trainer"] >= {"Failed", "AllFailed"}
    # The stop step told the coordinator, which ended the search and exited 0.
    (stop,) = [p for p in result.pods if p.task == "trainers-failed"]
    assert stop.exit_code == 1, explain(result)
    assert stop.log is not None
    reason = stop.log.read_text().strip().splitlines()[-1]
    assert reason.startswith("autolfads: error: every trainer task of the workflow failed")
    assert "the search is now cancelled" in reason
    (coordinator,) = [p for p in result.pods if p.task == "coordinator"]
    assert coordinator.exit_code == 0
    # Nothing is finalized from a search that never trained.
    assert result.results["finalize"] == {"Omitted"} and result.results["report"] == {"Omitted"}
    stored = keys(s3_server, s3_bucket, f"runs/{RUN}/best/")
    assert f"runs/{RUN}/best/checkpoint.pt" not in stored
    assert f"runs/{RUN}/best/metrics.json" not in stored
    assert "best-metrics" not in result.outputs and not result.artifacts
