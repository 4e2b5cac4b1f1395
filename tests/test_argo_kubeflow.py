"""`autolfads argo render --kubeflow`: the Workflow for a KubeFlow profile
namespace (see deploy/argo/kubeflow.md), validated like every manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from autolfads.argo.render import RenderOptions, render_workflow
from autolfads.argo.validate import validate_object
from autolfads.cli import main
from autolfads.config import load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny_search.yaml"
PROFILE = "kubeflow-user-example-com"


@pytest.mark.parametrize("inline", [False, True])
def test_kubeflow_workflow_has_no_sidecars_and_the_profile_account(inline):
    opts = RenderOptions(namespace=PROFILE, kubeflow=True, inline=inline)
    workflow = render_workflow(load_config(EXAMPLE), opts)
    spec = workflow["spec"]
    assert workflow["metadata"]["namespace"] == PROFILE
    assert spec["serviceAccountName"] == "default-editor"
    meta = spec["podMetadata"]
    assert meta["annotations"] == {"sidecar.istio.io/inject": "false"}
    # The template's pod labels survive the Workflow's podMetadata.
    assert meta["labels"]["app.kubernetes.io/part-of"] == "autolfads"
    if inline:
        assert validate_object(workflow) == []


def test_service_account_can_be_chosen_and_is_checked(capsys):
    opts = RenderOptions(namespace=PROFILE, kubeflow=True, service_account="pipeline-runner")
    assert render_workflow(load_config(EXAMPLE), opts)["spec"]["serviceAccountName"] == (
        "pipeline-runner"
    )
    code = main(["argo", "render", str(EXAMPLE), "--kubeflow", "--service-account", "Bad_SA"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("autolfads: error: --service-account 'Bad_SA'")
    assert err.count("\n") == 1


def test_plain_render_is_unchanged():
    workflow = render_workflow(load_config(EXAMPLE), RenderOptions())
    assert "podMetadata" not in workflow["spec"]
    assert "serviceAccountName" not in workflow["spec"]
