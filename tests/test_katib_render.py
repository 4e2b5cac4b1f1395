"""`autolfads katib render|submit`: what render writes is checked strictly.

- golden files for examples/tiny_search.yaml (regenerate: UPDATE_GOLDEN=1);
- Katib's own Experiment models (`kubeflow-katib-api`) keep every key: they
  drop unknown keys silently, so the dump is compared with the input;
- Katib's webhook rules (our `katib.webhook`) pass, and each rule catches
  the regression it exists for;
- the trial Job is a strict Kubernetes object, hardened like the Argo pods;
- submit creates exactly the rendered Experiment through a fake Kubernetes
  API over HTTP, after staging the run.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from test_argo_submit import (  # noqa: F401 (fixtures)
    FakeKube,
    config_path,
    fake_kube,
    one_error_line,
    storage,
    stored_keys,
    tiny_data,
)
from test_pod_hardening import PodUnderTest, pod_problems

from autolfads.cli import main
from autolfads.config import load_config
from autolfads.katib.manifest import render_experiment, render_katib_config_entry
from autolfads.katib.options import KatibOptions
from autolfads.katib.webhook import experiment_problems, filled_trial_spec, validate_experiment

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "katib"
EXAMPLE = ROOT / "examples" / "tiny_search.yaml"
OPTS = KatibOptions(storage="s3://autolfads/runs")


@pytest.fixture(scope="module")
def experiment() -> dict:
    return render_experiment(load_config(EXAMPLE), OPTS)


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("tiny-search-experiment.yaml", lambda e: e),
        ("katib-config-entry.yaml", lambda e: render_katib_config_entry(OPTS)),
    ],
)
def test_golden(experiment, name, render):
    text = yaml.safe_dump(render(experiment), sort_keys=False, width=100)
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text(), f"{name} changed: UPDATE_GOLDEN=1 to accept"


def test_cli_render_prints_the_golden_experiment(capsys):
    args = ["katib", "render", str(EXAMPLE), "--storage", "s3://autolfads/runs"]
    assert main(args) == 0
    assert capsys.readouterr().out == (GOLDEN / "tiny-search-experiment.yaml").read_text()
    assert main([*args, "--katib-config"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "katib-config-entry.yaml").read_text()


def test_katibs_models_keep_every_key(experiment):
    from kubeflow_katib_api.models.v1beta1_experiment import V1beta1Experiment

    from autolfads.argo.validate import dropped_keys

    model = V1beta1Experiment.from_dict(copy.deepcopy(experiment))
    kept = model.to_dict()
    assert dropped_keys(experiment, kept) == []
    assert kept == experiment


def test_webhook_rules_and_strict_job_pass(experiment):
    assert validate_experiment(experiment) == []


def test_trial_pod_is_hardened_and_keeps_istio_out(experiment):
    pod = filled_trial_spec(experiment)["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert pod_problems(PodUnderTest("katib trial", pod["spec"], argo_step=False)) == []
    args = pod["spec"]["containers"][0]["args"]
    assert args[:3] == ["trainer", "--katib-trial", "test-value"]


def test_counts_follow_the_config(experiment):
    spec = experiment["spec"]
    assert spec["parallelTrialCount"] == 4 and spec["maxTrialCount"] == 4 * (3 + 1)
    assert spec["objective"]["metricStrategies"] == [{"name": "fitness", "value": "latest"}]


def _mutate(experiment, edit):
    exp = copy.deepcopy(experiment)
    edit(exp)
    return exp


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda e: e["metadata"].update(name="x" * 41), "metadata.name"),
        (lambda e: e["metadata"].update(name="9lives"), "metadata.name"),
        (lambda e: e["spec"].update(parallelTrialCount=99), "more than spec.maxTrialCount"),
        (lambda e: e["spec"].update(maxFailedTrialCount=99), "maxFailedTrialCount 99"),
        (lambda e: e["spec"]["parameters"].append(
            {"name": "gamma", "parameterType": "double", "feasibleSpace": {"max": "1"}}),
         "referenced by no trialParameter"),
        (lambda e: e["spec"]["trialTemplate"]["trialParameters"][1].update(reference="nope"),
         "not in spec.parameters"),
        (lambda e: e["spec"]["trialTemplate"]["trialParameters"].append(
            {"name": "unused", "reference": "${trialSpec.Namespace}"}), "not used in the trialSpec"),
        (lambda e: e["spec"]["trialTemplate"]["trialParameters"].pop(0),
         "are not trialParameters"),
        (lambda e: e["spec"]["trialTemplate"]["trialSpec"].update(metadata={"name": "x"}),
         "must be omitted"),
        (lambda e: e["spec"]["trialTemplate"].pop("successCondition"), "successCondition"),
        (lambda e: e["spec"]["parameters"][0].update(parameterType="float"), "parameterType"),
    ],
)  # fmt: skip
def test_each_webhook_rule_catches_its_regression(experiment, edit, needle):
    problems = experiment_problems(_mutate(experiment, edit))
    assert any(needle in p for p in problems), problems


def test_a_bad_trial_job_field_is_caught_strictly(experiment):
    def typo(e):
        e["spec"]["trialTemplate"]["trialSpec"]["spec"]["backofLimit"] = 0

    problems = validate_experiment(_mutate(experiment, typo))
    assert problems and "backofLimit" in problems[0]


def test_render_refuses_a_run_name_katib_cannot_use(tmp_path, capsys):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["name"] = "Tiny_Search"
    cfg["data"]["path"] = str((EXAMPLE.parent / cfg["data"]["path"]).resolve())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["katib", "render", str(path), "--storage", "s3://autolfads/runs"]) == 2
    assert "a Katib Experiment is named after its run" in one_error_line(capsys)


def test_submit_stages_the_run_and_creates_the_exact_experiment(
    fake_kube: FakeKube,  # noqa: F811 (fixtures of test_argo_submit)
    storage,  # noqa: F811
    config_path,  # noqa: F811
    s3_server,
    s3_bucket,
    capsys,
):
    assert main(["katib", "submit", str(config_path), "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "experiment submit-test created in namespace kubeflow-user-example-com" in out
    expected = render_experiment(load_config(config_path), KatibOptions(storage=storage))
    assert fake_kube.posts() == [expected]
    path = fake_kube.requests[-1][1]
    assert path == "/apis/kubeflow.org/v1beta1/namespaces/kubeflow-user-example-com/experiments"
    keys = stored_keys(s3_server, s3_bucket)
    assert "runs/submit-test/config.yaml" in keys


def test_submit_name_conflict_is_one_line(
    fake_kube: FakeKube,  # noqa: F811 (fixtures of test_argo_submit)
    storage,  # noqa: F811
    config_path,  # noqa: F811
    capsys,
):
    from test_argo_submit import status_body

    fake_kube.create_reply = (409, status_body(409, "AlreadyExists", "exists", name="submit-test"))
    assert main(["katib", "submit", str(config_path), "--storage", storage]) == 2
    assert "an Experiment named 'submit-test' already exists" in one_error_line(capsys)


def test_katib_config_entry_is_a_strict_container():
    """katib-config inlines a corev1.Container (plus algorithmName)."""
    from autolfads.argo.validate import validate_k8s_object

    entry = render_katib_config_entry(OPTS)
    assert entry["algorithmName"] == "autolfads-pbt"
    container = {k: v for k, v in entry.items() if k != "algorithmName"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "suggestion"},
        "spec": {"containers": [{"name": "suggestion", **container}]},
    }
    assert validate_k8s_object(pod) == []
    assert "ports" not in entry  # Katib adds suggestion-api:6789 itself
