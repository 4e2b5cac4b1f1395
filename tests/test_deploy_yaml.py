"""Every YAML under deploy/ validates strictly; typos and dangling references fail.

Argo objects: hera's Argo models plus the unknown-key diff and semantic checks
(autolfads.argo.validate). Core objects: kubernetes-validate strict. A kind
without a schema is a failure. Cross-file facts the cluster relies on (the
Service finds the coordinator, the NetworkPolicy admits the workflow's pods,
secrets come from Secrets) are checked too.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from autolfads.argo.manifests import load_documents, templates_by_name, walk_strings
from autolfads.argo.validate import validate_object, validate_paths

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def docs_of(name: str) -> list[dict[str, Any]]:
    return load_documents(DEPLOY / name)


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in load_documents(path):
            if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name):
                return doc
    raise AssertionError(f"no {kind} {name or ''} under deploy/")


@pytest.fixture(scope="module")
def wt() -> dict[str, Any]:
    return the("WorkflowTemplate", "autolfads-pbt")


def problems_of(obj: dict[str, Any], wt: dict[str, Any]) -> list[str]:
    return validate_object(obj, templates={"autolfads-pbt": wt}, base=DEPLOY / "k8s")


def tmpl(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return templates_by_name(doc["spec"])[name]


# -- the shipped manifests -----------------------------------------------------


def test_every_yaml_under_deploy_is_valid() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 10
    assert validate_paths([DEPLOY]) == []


def test_every_kind_shipped_is_one_we_can_validate() -> None:
    kinds = {doc["kind"] for p in DEPLOY.rglob("*.yaml") for doc in load_documents(p)}
    expected = {"WorkflowTemplate", "Workflow", "Kustomization", "Deployment", "Service"}
    assert expected <= kinds
    assert {"PersistentVolumeClaim", "Secret", "ConfigMap", "NetworkPolicy", "Role"} <= kinds


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_build_output_validates_strictly() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert "WorkflowTemplate" in kinds and "NetworkPolicy" in kinds and "Job" in kinds
    templates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "WorkflowTemplate"}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "autolfads", doc["metadata"]["name"]
        assert validate_object(doc, templates=templates) == [], doc["kind"]


def test_demo_workflow_config_is_a_valid_run_config() -> None:
    from autolfads.config import loads_config

    wf = the("Workflow")
    params = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    cfg = loads_config(params["config"])
    assert cfg.name == params["run"]
    assert cfg.data.synth is not None and params["stage"] == "true"


def test_credentials_only_come_from_secrets(wt: dict[str, Any]) -> None:
    secret_like = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)", re.IGNORECASE)
    for template in wt["spec"]["templates"]:
        for var in template.get("container", {}).get("env", []):
            if secret_like.search(var["name"]):
                assert "secretKeyRef" in var.get("valueFrom", {}), var["name"]
    for param in wt["spec"]["arguments"]["parameters"]:
        assert not secret_like.search(param["name"]) or param["name"] == "s3-secret"
    secret = the("Secret", "autolfads-s3")
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    default = {p["name"]: p["value"] for p in wt["spec"]["arguments"]["parameters"]}
    assert default["s3-secret"] == "autolfads-s3"


def test_service_networkpolicy_and_rbac_fit_the_workflow(wt: dict[str, Any]) -> None:
    spec = wt["spec"]
    coordinator = tmpl(wt, "coordinator")
    service = yaml.safe_load(tmpl(wt, "coordinator-service")["resource"]["manifest"])
    pod_labels = {
        **coordinator["metadata"]["labels"],
        "workflows.argoproj.io/workflow": "{{workflow.name}}",
    }
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port = service["spec"]["ports"][0]
    container_ports = {p["name"]: p["containerPort"] for p in coordinator["container"]["ports"]}
    assert container_ports[port["targetPort"]] == port["port"] == 50051
    assert "0.0.0.0:50051" in coordinator["container"]["args"]
    # The probes ask the health-only port, plaintext whatever grpc-tls-dir
    # says (Kubernetes' gRPC probes cannot speak TLS).
    args = coordinator["container"]["args"]
    health = container_ports["health"]
    assert args[args.index("--health-listen") + 1] == f"0.0.0.0:{health}" and health != 50051
    for probe in ("readinessProbe", "livenessProbe"):
        assert coordinator["container"][probe]["grpc"] == {"port": health}
    trainer_args = tmpl(wt, "trainer")["container"]["args"]
    address = trainer_args[trainer_args.index("--coordinator") + 1]
    assert address == f"{service['metadata']['name']}.{{{{workflow.namespace}}}}.svc:50051"

    policy = the("NetworkPolicy", "autolfads-coordinator")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= coordinator["metadata"]["labels"].items()
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= spec["podMetadata"]["labels"].items()
    assert policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 50051}]

    assert the("ServiceAccount", spec["serviceAccountName"])
    rules = the("Role", "autolfads-workflow")["rules"]
    granted = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("workflowtaskresults", "create"),
        ("workflowtaskresults", "patch"),
        ("services", "create"),
        ("services", "get"),
    }


def test_artifact_repository_is_the_runs_bucket(wt: dict[str, Any]) -> None:
    ref = wt["spec"]["artifactRepositoryRef"]
    cm = the("ConfigMap", ref["configMap"])
    repo = yaml.safe_load(cm["data"][ref["key"]])["s3"]
    default = {p["name"]: p["value"] for p in wt["spec"]["arguments"]["parameters"]}
    assert repo["bucket"] == default["s3-bucket"]
    assert repo["accessKeySecret"]["name"] == default["s3-secret"]
    assert cm["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"]


def test_trainers_retry_with_backoff_and_the_search_can_end_succeeded(
    wt: dict[str, Any],
) -> None:
    tasks = {t["name"]: t for t in tmpl(wt, "search")["dag"]["tasks"]}
    for name in ("trainer", "coordinator"):
        retry = tmpl(wt, name)["retryStrategy"]
        assert retry["retryPolicy"] == "Always" and retry["backoff"]["duration"]
        assert not tmpl(wt, name).get("daemon")
    assert tasks["trainer"]["withSequence"]["count"] == "{{workflow.parameters.n-trainers}}"
    # Finalize only a search the coordinator finished, never one that
    # trainers-failed stopped because every trainer task failed.
    assert tasks["finalize"]["depends"] == (
        "coordinator.Succeeded && !(trainers-failed.Failed || trainers-failed.Errored)"
    )
    assert tasks["trainers-failed"]["depends"] == (
        "(trainer.Failed || trainer.Errored) && !trainer.AnySucceeded"
    )
    assert tasks["report"]["depends"] == "finalize.Succeeded"
    outputs = tmpl(wt, "finalize")["outputs"]["parameters"]
    assert outputs[0]["globalName"] == "best-metrics"
    assert {a["name"] for a in tmpl(wt, "report")["outputs"]["artifacts"]} == {
        "report",
        "best-model",
    }
    assert wt["spec"]["activeDeadlineSeconds"] > 0 and wt["spec"]["parallelism"] > 0
    assert wt["spec"]["podGC"]["strategy"] == "OnPodSuccess"


# -- the validator catches mistakes -------------------------------------------


def mutate(doc: dict[str, Any], change) -> dict[str, Any]:
    copied = copy.deepcopy(doc)
    change(copied)
    return copied


def test_typo_in_a_key_is_an_error(wt: dict[str, Any]) -> None:
    bad = mutate(wt, lambda d: d["spec"].update(paralelism=3))
    assert problems_of(bad, wt) == ["spec.paralelism: unknown field"]


def test_typo_deep_inside_a_probe_is_an_error(wt: dict[str, Any]) -> None:
    def change(d: dict[str, Any]) -> None:
        tmpl(d, "coordinator")["container"]["readinessProbe"]["grpc"]["prot"] = 50051

    assert any(
        p.endswith("readinessProbe.grpc.prot: unknown field")
        for p in problems_of(mutate(wt, change), wt)
    )


def test_typo_in_daemon_key_is_an_error(wt: dict[str, Any]) -> None:
    bad = mutate(wt, lambda d: tmpl(d, "coordinator").update(deamon=True))
    assert any("deamon: unknown field" in p for p in problems_of(bad, wt))


def test_wrong_type_is_an_error(wt: dict[str, Any]) -> None:
    bad = mutate(wt, lambda d: d["spec"].update(activeDeadlineSeconds="one day"))
    assert any(p.startswith("spec.activeDeadlineSeconds") for p in problems_of(bad, wt))


def test_dangling_template_reference_is_an_error(wt: dict[str, Any]) -> None:
    def change(d: dict[str, Any]) -> None:
        tmpl(d, "search")["dag"]["tasks"][-1]["template"] = "reprot"

    assert problems_of(mutate(wt, change), wt) == [
        "templates[search].dag.tasks[report].template: 'reprot' does not exist"
    ]


def test_dangling_depends_is_an_error(wt: dict[str, Any]) -> None:
    def change(d: dict[str, Any]) -> None:
        tmpl(d, "search")["dag"]["tasks"][-1]["depends"] = "finalise.Succeeded"

    assert problems_of(mutate(wt, change), wt) == [
        "templates[search].dag.tasks[report].depends: task 'finalise' does not exist"
    ]


def test_undeclared_workflow_parameter_is_an_error(wt: dict[str, Any]) -> None:
    def change(d: dict[str, Any]) -> None:
        args = tmpl(d, "trainer")["container"]["args"]
        args[args.index("--device") + 1] = "{{workflow.parameters.trainer-devise}}"

    problems = problems_of(mutate(wt, change), wt)
    assert len(problems) == 1
    assert "{{workflow.parameters.trainer-devise}}: workflow parameter not declared" in problems[0]


def test_undeclared_input_parameter_is_an_error(wt: dict[str, Any]) -> None:
    def change(d: dict[str, Any]) -> None:
        tmpl(d, "coordinator")["container"]["args"].append("{{inputs.parameters.index}}")

    problems = problems_of(mutate(wt, change), wt)
    assert problems and "input parameter not declared" in problems[0]


def test_item_outside_a_loop_is_an_error(wt: dict[str, Any]) -> None:
    def change(d: dict[str, Any]) -> None:
        task = next(t for t in tmpl(d, "search")["dag"]["tasks"] if t["name"] == "finalize")
        task["arguments"] = {"parameters": [{"name": "index", "value": "{{item}}"}]}
        tmpl(d, "finalize")["inputs"] = {"parameters": [{"name": "index"}]}

    problems = problems_of(mutate(wt, change), wt)
    assert problems and "{{item}} in a task without" in problems[0]


def test_missing_entrypoint_and_bad_enums_are_errors(wt: dict[str, Any]) -> None:
    def change(d: dict[str, Any]) -> None:
        d["spec"]["entrypoint"] = "serch"
        d["spec"]["podGC"]["strategy"] = "Bogus"
        tmpl(d, "trainer")["retryStrategy"]["retryPolicy"] = "Sometimes"
        del tmpl(d, "stage")["container"]["image"]

    problems = problems_of(mutate(wt, change), wt)
    assert "spec.entrypoint: template 'serch' does not exist" in problems
    assert any(p.startswith("spec.podGC.strategy: 'Bogus'") for p in problems)
    assert any("retryPolicy: 'Sometimes'" in p for p in problems)
    assert "templates[stage].container.image: missing" in problems


def test_typo_in_an_embedded_service_manifest_is_an_error(wt: dict[str, Any]) -> None:
    def change(d: dict[str, Any]) -> None:
        res = tmpl(d, "coordinator-service")["resource"]
        res["manifest"] = res["manifest"].replace("selector:", "selectr:")

    problems = problems_of(mutate(wt, change), wt)
    assert problems and "'selectr' was unexpected" in problems[0]


def test_workflow_with_unknown_parameter_or_template_is_an_error(wt: dict[str, Any]) -> None:
    wf = the("Workflow")
    typo = mutate(wf, lambda d: d["spec"]["arguments"]["parameters"][2].update(name="n-trainer"))
    assert problems_of(typo, wt) == [
        "spec.arguments.parameters: 'n-trainer' is not a parameter of WorkflowTemplate "
        "'autolfads-pbt'"
    ]
    assert validate_object(wf, templates={}) == [
        "spec.workflowTemplateRef: WorkflowTemplate 'autolfads-pbt' not found"
    ]


def test_core_object_typo_and_unknown_kinds_fail(wt: dict[str, Any]) -> None:
    deployment = the("Deployment", "minio")

    def change(d: dict[str, Any]) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"

    assert any("'imagee' was unexpected" in p for p in problems_of(mutate(deployment, change), wt))
    crd = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c"}}
    assert validate_object(crd) == [
        "kind 'Certificate' (cert-manager.io/v1): no Kubernetes schema for this kind"
    ]
    wrong = mutate(wt, lambda d: d.update(kind="Wrkflow"))
    assert validate_object(wrong) == ["kind 'Wrkflow': no Argo schema for this kind"]


def test_validate_paths_reports_file_and_document(tmp_path: Path, wt: dict[str, Any]) -> None:
    bad = mutate(wt, lambda d: d["spec"].update(paralelism=3))
    path = tmp_path / "wt.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert validate_paths([tmp_path]) == [
        f"{path}: doc 1 (WorkflowTemplate): spec.paralelism: unknown field"
    ]


def test_every_placeholder_in_the_template_is_known(wt: dict[str, Any]) -> None:
    # Guards the validator itself: it must have seen the placeholders it checks.
    used = {
        var
        for _, text in walk_strings(wt["spec"]["templates"])
        for var in re.findall(r"\{\{([^}]+)\}\}", text)
    }
    assert "workflow.parameters.n-trainers" in used and "pod.name" in used
    assert "workflow.name" in used and "workflow.parameters.s3-bucket" in used


# -- container images ------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line)
        if match:
            current = match.group(2)
            stages[current] = [line]
        elif current and not line.lstrip().startswith("#"):
            stages[current].append(line)
    return stages


def test_dockerfile_builds_three_nonroot_images_running_autolfads() -> None:
    stages = dockerfile_stages()
    assert {"coordinator", "trainer-cpu", "trainer-cuda"} <= set(stages)
    for name in ("coordinator", "trainer-cpu", "trainer-cuda"):
        body = "\n".join(stages[name])
        assert 'ENTRYPOINT ["autolfads"]' in body, name
        assert "USER 10001:10001" in body, name
    assert "torch" not in "\n".join(stages["coordinator"]).replace("find_spec('torch') is None", "")
    text = (ROOT / "Dockerfile").read_text()
    arg = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert arg is not None, "no ARG PYTHON_IMAGE"
    base = arg.group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), "base image must be pinned"
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+", text), "torch must be pinned"
    assert ":latest" not in text


def test_images_named_in_the_template_are_built_by_the_dockerfile(wt: dict[str, Any]) -> None:
    stages = dockerfile_stages()
    default = {p["name"]: p["value"] for p in wt["spec"]["arguments"]["parameters"]}
    for param in ("coordinator-image", "trainer-image"):
        target = default[param].rsplit("/", 1)[1].split(":")[0].removeprefix("autolfads-")
        assert target in stages, param
