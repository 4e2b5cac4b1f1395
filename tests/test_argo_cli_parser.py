"""The containers of the Workflow run real `autolfads` commands, and `argo render` works.

Each container's command + args, with `{{...}}` filled by sample values, must
be accepted by the very parser the image's entrypoint uses, and mean what the
workflow intends (e.g. the coordinator listens on the Service's target port).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from autolfads.argo.manifests import load_workflow_template, substitute, templates_by_name
from autolfads.argo.render import RenderOptions, render_workflow
from autolfads.argo.semantics import sample_lookup
from autolfads.cli import build_parser, main
from autolfads.config import load_config

CONTAINER_COMMANDS = {
    "stage": "stage",
    "coordinator": "coordinator",
    "trainer": "trainer",
    "finalize": "finalize",
    "report": "report",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return load_workflow_template()["spec"]


def argv_of(spec: dict[str, Any], name: str) -> list[str]:
    template = templates_by_name(spec)[name]
    container = substitute(template["container"], sample_lookup(spec, template))
    argv = [*container.get("command", []), *container["args"]]
    unresolved = [a for a in argv if "{{" in a]
    assert not unresolved, f"{name}: placeholders left after substitution: {unresolved}"
    return argv


def parse(argv: list[str]) -> argparse.Namespace:
    assert argv[0] == "autolfads", "containers must call the autolfads entrypoint"
    return build_parser().parse_args(argv[1:])


def test_every_container_template_is_covered(spec: dict[str, Any]) -> None:
    containers = {t["name"] for t in spec["templates"] if "container" in t}
    assert containers == set(CONTAINER_COMMANDS) | {"stop-search"}


def test_stop_search_runs_a_module_of_the_image_with_the_operator_token(
    spec: dict[str, Any],
) -> None:
    from autolfads.argo import stop_search

    argv = argv_of(spec, "stop-search")
    assert argv[:3] == ["python", "-m", "autolfads.argo.stop_search"]
    args = stop_search.build_parser().parse_args(argv[3:])
    trainer = parse(argv_of(spec, "trainer"))
    assert args.coordinator == trainer.coordinator  # the Service, whichever pod serves
    # Outlasts a coordinator restart (backoff capped at 2 minutes).
    assert args.wait >= 300
    template = templates_by_name(spec)["stop-search"]
    container = template["container"]
    # The same secret as the coordinator's operator token; never the workers'.
    refs = [e["secretRef"]["name"] for e in container["envFrom"]]
    assert refs == ["{{workflow.parameters.grpc-credentials}}"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # Exit 1 is its answer: only a lost pod is tried again.
    assert template["retryStrategy"]["retryPolicy"] == "OnError"


@pytest.mark.parametrize("name", sorted(CONTAINER_COMMANDS))
def test_container_args_are_accepted_by_the_cli(spec: dict[str, Any], name: str) -> None:
    args = parse(argv_of(spec, name))
    assert args.command == CONTAINER_COMMANDS[name]
    assert callable(args.func)


def test_coordinator_and_trainer_meet_at_the_service_port(spec: dict[str, Any]) -> None:
    coordinator = parse(argv_of(spec, "coordinator"))
    trainer = parse(argv_of(spec, "trainer"))
    assert coordinator.listen == "0.0.0.0:50051"
    assert coordinator.relays == 0  # one process unless coordinator-relays says otherwise
    assert trainer.coordinator == "autolfads-autolfads-x7k2p.autolfads.svc:50051"
    assert coordinator.storage == trainer.storage == "s3://autolfads/runs"
    assert coordinator.run == "autolfads"
    assert trainer.device == "auto" and trainer.threads == 2
    assert trainer.worker_id.startswith("autolfads-x7k2p-trainer")


def test_final_steps_read_the_run_and_write_where_outputs_are_collected(
    spec: dict[str, Any],
) -> None:
    finalize = parse(argv_of(spec, "finalize"))
    report = parse(argv_of(spec, "report"))
    outputs = templates_by_name(spec)["finalize"]["outputs"]["parameters"]
    assert str(finalize.metrics_out) == outputs[0]["valueFrom"]["path"]
    artifacts = templates_by_name(spec)["report"]["outputs"]["artifacts"]
    assert str(report.out) == next(a["path"] for a in artifacts if a["name"] == "report")


# -- autolfads argo render ------------------------------------------------------


def write_config(tmp_path: Path, synth: bool = True) -> Path:
    data = tmp_path / "data" / "tiny.h5"
    synth_line = "  synth: {kind: chaotic-rnn, seed: 3}\n" if synth else ""
    path = tmp_path / "run.yaml"
    path.write_text(
        f"name: tiny-run\ndata:\n  path: {data}\n{synth_line}"
        "training: {l2_increase_epochs: 2, kl_increase_epochs: 2}\n"
        "pbt: {population: 2, generation_epochs: 1, burn_in_epochs: 2, max_generations: 2}\n"
    )
    return path


def params_of(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}


def test_render_prints_the_thin_workflow_for_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = write_config(tmp_path)
    code = main(["argo", "render", str(cfg_path), "--storage", "s3://lab-bucket/searches",
                 "--n-trainers", "6", "--deadline-seconds", "3600"])  # fmt: skip
    assert code == 0
    workflow = yaml.safe_load(capsys.readouterr().out)
    assert workflow["spec"]["workflowTemplateRef"] == {"name": "autolfads-pbt"}
    assert workflow["metadata"]["generateName"] == "autolfads-"
    assert workflow["metadata"]["namespace"] == "autolfads"
    assert workflow["spec"]["activeDeadlineSeconds"] == 3600
    params = params_of(workflow)
    assert params["run"] == "tiny-run"
    assert (params["s3-bucket"], params["s3-prefix"]) == ("lab-bucket", "searches")
    assert params["n-trainers"] == "6" and params["pod-deadline-seconds"] == "3600"
    staged = yaml.safe_load(params["config"])
    assert params["stage"] == "true"
    assert staged["data"]["path"] == "/tmp/autolfads/data/tiny.h5"
    assert (staged["data"]["synth"]["kind"], staged["data"]["synth"]["seed"]) == ("chaotic-rnn", 3)


def test_render_grpc_secrets_and_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path)
    code = main(["argo", "render", str(cfg_path), "--storage", "s3://lab-bucket/searches",
                 "--grpc-credentials", "lab-grpc", "--grpc-worker-credentials", "lab-grpc-worker",
                 "--grpc-tls-secret", "lab-tls"])  # fmt: skip
    assert code == 0
    params = params_of(yaml.safe_load(capsys.readouterr().out))
    assert params["grpc-credentials"] == "lab-grpc"
    assert params["grpc-worker-credentials"] == "lab-grpc-worker"
    assert params["grpc-tls-certs"] == "lab-tls"
    assert params["grpc-tls-dir"] == "/etc/autolfads/tls"


def test_render_gpus_selects_the_cuda_image_and_device(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, synth=False))
    params = params_of(render_workflow(cfg, RenderOptions(trainer_gpus=1)))
    assert params["trainer-image"].endswith("autolfads-trainer-cuda:0.1.0")
    assert params["trainer-device"] == "cuda" and params["trainer-gpus"] == "1"
    assert params["stage"] == "false" and "config" not in params
    # The combinations that agree still render.
    for opts in (
        RenderOptions(trainer_gpus=1, trainer_device="cuda"),
        RenderOptions(trainer_gpus=1, trainer_device="auto"),
        RenderOptions(trainer_gpus=0, trainer_device="cpu"),
        RenderOptions(trainer_device="auto"),
    ):
        assert params_of(render_workflow(cfg, opts))["run"] == "tiny-run"


@pytest.mark.parametrize("relays", [0, 1, 8, 64])
def test_render_gives_every_relay_process_its_memory(
    tmp_path: Path, spec: dict[str, Any], relays: int
) -> None:
    from autolfads.argo.validate import validate_k8s_object

    cfg = load_config(write_config(tmp_path))
    workflow = render_workflow(cfg, RenderOptions(coordinator_relays=relays, inline=True))
    params = params_of(workflow)
    coordinator = templates_by_name(workflow["spec"])["coordinator"]
    patch = json.loads(substitute(coordinator["podSpecPatch"], sample_lookup(workflow["spec"])))
    resources = patch["containers"][0]["resources"]
    mib = {"Mi": 1, "Gi": 1024}
    limit = int(resources["limits"]["memory"][:-2]) * mib[resources["limits"]["memory"][-2:]]
    request = int(resources["requests"]["memory"][:-2]) * mib[resources["requests"]["memory"][-2:]]
    # Measured: about 41 MB private memory per relay, 42 MB for the owner;
    # 48 MiB each on top of what one process gets (512Mi request, 2Gi limit).
    assert limit >= 2048 + relays * 48
    assert 512 + relays * 48 <= request <= limit
    assert params.get("coordinator-relays", "0") == str(relays)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "coordinator"},
        "spec": {"containers": [{"name": "main", "image": "x", "resources": resources}]},
    }
    assert validate_k8s_object(pod) == []


def test_render_sizes_the_coordinator(tmp_path: Path, spec: dict[str, Any]) -> None:
    cfg = load_config(write_config(tmp_path))
    opts = RenderOptions(coordinator_relays=3, coordinator_cpu="4")
    params = params_of(render_workflow(cfg, opts))
    assert (params["coordinator-relays"], params["coordinator-cpu"]) == ("3", "4")
    # The template passes them on: --relays to the command, the CPU to the pod.
    coordinator = templates_by_name(spec)["coordinator"]
    relays = coordinator["container"]["args"].index("--relays")
    assert (
        coordinator["container"]["args"][relays + 1] == "{{workflow.parameters.coordinator-relays}}"
    )
    assert "{{workflow.parameters.coordinator-cpu}}" in coordinator["podSpecPatch"]


def test_render_inline_is_self_contained(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path))
    workflow = render_workflow(cfg, RenderOptions(inline=True, parallelism=5, name="wf-1"))
    spec = workflow["spec"]
    assert "workflowTemplateRef" not in spec and spec["entrypoint"] == "search"
    assert spec["parallelism"] == 5 and workflow["metadata"]["name"] == "wf-1"
    params = params_of(workflow)
    assert params["run"] == "tiny-run" and params["n-trainers"] == "4"  # template default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--storage", "s3://bucket"], "give a prefix inside the bucket"),
        (["--storage", "file:///tmp/x"], "Argo runs need an s3://bucket/prefix URL"),
        (["--n-trainers", "0"], "--n-trainers 0: must be at least 1"),
        (["--memory", "lots"], "--memory 'lots': not a Kubernetes quantity"),
        (["--coordinator-cpu", "lots"], "--coordinator-cpu 'lots': not a Kubernetes quantity"),
        (["--coordinator-relays", "-1"], "--coordinator-relays -1: must be 0 or more"),
        (["--coordinator-relays", "65"], "--coordinator-relays 65: at most 64"),
        (["--namespace", "Bad_NS"], "not a valid namespace name"),
        (["--stage", "--storage", "s3://bk1/p"], "only works for generated data"),
        # What the pods would refuse, each of them after the Workflow started.
        (["--storage", "s3://bk1/runs/.hidden"], "--storage: invalid prefix"),
        (["--storage", "s3://bk1/runs/" + "x" * 201], "--storage: invalid prefix"),
        (["--s3-endpoint", "minio:9000"], "--s3-endpoint: must start with http://"),
        (["--s3-endpoint", "ftp://minio:9000"], "--s3-endpoint: must start with http://"),
        (["--s3-endpoint", "http://minio:9000/path"], "without a path"),
        # The coordinator's Service would be refused (autolfads-NAME, a DNS label).
        (["--name", "search.v2"], "--name 'search.v2': use lowercase letters"),
        (["--name", "Search-V2"], "--name 'Search-V2': use lowercase letters"),
        (["--name", "s" * 54], "at most 53 characters"),
        # One pod at a time: the coordinator would wait for a trainer forever.
        (["--parallelism", "1"], "--parallelism 1: must be at least 2"),
        # GPUs and device must agree: every trainer fails, or a GPU sits idle.
        (["--device", "cuda"], "--device cuda: trainer pods get no GPU without --gpus 1"),
        (["--device", "cuda", "--gpus", "0"], "--device cuda: trainer pods get no GPU"),
        (["--gpus", "1", "--device", "cpu"], "--device cpu with --gpus 1: the reserved GPU"),
        (["--gpus", "2"], "--gpus 2: a trainer uses one GPU; use --gpus 1 and more --n-trainers"),
        (["--gpus", "4", "--device", "cuda"], "--gpus 4: a trainer uses one GPU"),
        (
            ["--gpus", "1", "--trainer-image", "reg/autolfads-trainer-cpu:1"],
            "--trainer-image reg/autolfads-trainer-cpu:1: a CPU image cannot use the GPU",
        ),
    ],
)
def test_render_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    cfg_path = write_config(tmp_path, synth="--stage" not in argv)
    assert main(["argo", "render", str(cfg_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autolfads: error: ") and message in err
    assert len(err.splitlines()) == 1


def test_validate_command_checks_the_packaged_manifests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["argo", "validate"]) == 0
    assert "manifest file(s) valid" in capsys.readouterr().out
