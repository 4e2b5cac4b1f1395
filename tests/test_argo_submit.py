"""`autolfads argo submit` against a fake Kubernetes API server over real HTTP.

The fake (stdlib http.server on 127.0.0.1) answers the calls submit makes
(read the WorkflowTemplate, create the Workflow as a dry run and for real,
read it back) like a real API server, including Status bodies for errors,
`dryRun=All` (checked like a create, nothing stored) and 409 for a taken name. The official kubernetes
client talks HTTP to it through a kubeconfig; storage is moto's S3 server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from autolfads.argo.render import RenderOptions, render_workflow
from autolfads.cli import main
from autolfads.config import load_config

BASE = "/apis/argoproj.io/v1alpha1/namespaces"
TOKEN = "test-token-123"


@dataclass
class FakeKube:
    """State and scripted answers of the fake API server."""

    url: str = ""
    requests: list[tuple[str, str, dict[str, Any] | None, str]] = field(default_factory=list)
    template_reply: tuple[int, Any] | None = None  # None: the template exists
    create_reply: tuple[int, Any] | None = None  # None: 201 + the stored object
    # Successive GET statuses; None: the Workflow was deleted (then 404).
    phases: list[dict[str, Any] | None] = field(default_factory=list)
    created: dict[str, dict[str, Any]] = field(default_factory=dict)

    def posts(self) -> list[dict[str, Any]]:
        """Bodies of real creates (dry runs left out)."""
        return [
            body
            for method, path, body, _ in self.requests
            if method == "POST" and body and not is_dry_run(path)
        ]

    def dry_run_posts(self) -> list[dict[str, Any]]:
        return [
            body
            for method, path, body, _ in self.requests
            if method == "POST" and body and is_dry_run(path)
        ]


def is_dry_run(path: str) -> bool:
    return "dryRun" in parse_qs(urlsplit(path).query)


def status_reply(code: int, reason: str, message: str, **details: str) -> tuple[int, dict]:
    """What the API server answers with a `Status` body: (HTTP code, body)."""
    return code, status_body(code, reason, message, **details)


def status_body(code: int, reason: str, message: str, **details: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def make_handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def reply(self, code: int, body: Any) -> None:
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            kind = "text/plain" if isinstance(body, str) else "application/json"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def record(self, body: dict[str, Any] | None) -> None:
            auth = self.headers.get("Authorization", "")
            fake.requests.append((self.command, self.path, body, auth))

        def do_GET(self) -> None:
            self.record(None)
            path = self.path.split("?")[0]
            if "/workflowtemplates/" in path:
                if fake.template_reply is not None:
                    return self.reply(*fake.template_reply)
                return self.reply(200, {"kind": "WorkflowTemplate", "metadata": {}})
            name = path.rsplit("/", 1)[1]
            if fake.phases and fake.phases[0] is None:
                fake.created.pop(name, None)
            if name not in fake.created:
                # As the API server answers for a missing object of a known kind.
                message = f'workflows.argoproj.io "{name}" not found'
                details = {"name": name, "group": "argoproj.io", "kind": "workflows"}
                return self.reply(404, status_body(404, "NotFound", message, **details))
            workflow = dict(fake.created[name])
            if fake.phases:
                workflow["status"] = fake.phases.pop(0) if len(fake.phases) > 1 else fake.phases[0]
            return self.reply(200, workflow)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            self.record(body)
            # As the API server: a dry run (dryRun=All, the only value it
            # accepts) passes every check of a create (authorization, a taken
            # name, validation) and answers the same, but stores nothing.
            dry_run = parse_qs(urlsplit(self.path).query).get("dryRun")
            if dry_run is not None and dry_run != ["All"]:
                message = f"Invalid dryRun value: {dry_run}"
                return self.reply(400, status_body(400, "BadRequest", message))
            if fake.create_reply is not None:
                return self.reply(*fake.create_reply)
            stored = json.loads(json.dumps(body))
            meta = stored["metadata"]
            if meta.get("name") in fake.created:
                message = f'workflows.argoproj.io "{meta["name"]}" already exists'
                details = {"name": meta["name"], "group": "argoproj.io", "kind": "workflows"}
                return self.reply(409, status_body(409, "AlreadyExists", message, **details))
            meta.setdefault("name", meta.get("generateName", "wf-") + "abc12")
            if dry_run is None:
                fake.created[meta["name"]] = stored
            return self.reply(201, stored)

    return Handler


@pytest.fixture
def fake_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    fake = FakeKube()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield fake
    server.shutdown()
    server.server_close()


def write_kubeconfig(path: Path, server: str) -> None:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "me", "user": {"token": TOKEN}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
                "current-context": "fake",
            }
        )
    )


@pytest.fixture
def storage(s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    s3_server.raw_client().make_bucket(s3_bucket)
    return f"s3://{s3_bucket}/runs"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autolfads.trainer.data.lfads_h5 import write_lfads_h5
    from autolfads.trainer.data.synth import make_chaotic_rnn

    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    data = make_chaotic_rnn(
        seed=1, n_conditions=6, n_replications=4, n_neurons=8, n_heldout=2, n_bins=12, n_fp_bins=3
    )
    write_lfads_h5(data, path)
    return path


@pytest.fixture
def config_path(tmp_path: Path, tiny_data: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        "name: submit-test\n"
        f"data:\n  path: {tiny_data}\n"
        "training: {l2_increase_epochs: 2, kl_increase_epochs: 2}\n"
        "pbt: {population: 2, generation_epochs: 1, burn_in_epochs: 2, max_generations: 2}\n"
    )
    return path


def stored_keys(s3_server, bucket: str) -> list[str]:
    client = s3_server.raw_client()
    return sorted(o.object_name for o in client.list_objects(bucket, recursive=True))


@pytest.fixture
def uploaded(s3_server, s3_bucket: str) -> Callable[[], list[str]]:
    """Lists the keys `submit` has stored in the test bucket so far."""
    return lambda: stored_keys(s3_server, s3_bucket)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("autolfads: error: ")
    return err


# -- success ---------------------------------------------------------------------


def test_submit_uploads_the_run_and_creates_the_exact_workflow(
    fake_kube: FakeKube, storage: str, config_path: Path, uploaded, capsys
) -> None:
    code = main(["argo", "submit", str(config_path), "--storage", storage, "--n-trainers", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "workflow autolfads-abc12 created in namespace autolfads" in out
    assert "argo watch -n autolfads autolfads-abc12" in out

    expected = render_workflow(
        load_config(config_path), RenderOptions(storage=storage, n_trainers=3, stage=False)
    )
    assert fake_kube.posts() == [expected]
    assert fake_kube.dry_run_posts() == [expected]
    methods = [(m, p) for m, p, _, _ in fake_kube.requests]
    assert methods == [
        ("GET", f"{BASE}/autolfads/workflowtemplates/autolfads-pbt"),
        ("POST", f"{BASE}/autolfads/workflows?dryRun=All&fieldValidation=Strict"),
        ("POST", f"{BASE}/autolfads/workflows?fieldValidation=Strict"),
    ]
    assert all(auth == f"Bearer {TOKEN}" for *_, auth in fake_kube.requests)
    keys = uploaded()
    assert "runs/submit-test/config.yaml" in keys
    assert any(k.startswith("runs/submit-test/data/") for k in keys)


def test_submit_wait_follows_the_workflow_to_success(
    fake_kube: FakeKube, storage: str, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = {"type": "Pod", "displayName": "coordinator", "phase": "Running"}
    metrics = '{"co_bps": 0.31, "fp_bps": 0.12}'
    fake_kube.phases = [
        {"phase": "Running", "progress": "1/6", "nodes": {"n1": node}},
        {
            "phase": "Succeeded",
            "progress": "6/6",
            "outputs": {"parameters": [{"name": "best-metrics", "value": metrics}]},
        },
    ]
    argv = ["argo", "submit", str(config_path), "--storage", storage, "--wait"]
    assert main([*argv, "--poll-seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "Running 1/6: coordinator Running" in out
    assert "Succeeded 6/6" in out
    assert f"best-metrics: {metrics}" in out


def test_submit_wait_fails_when_the_workflow_fails(
    fake_kube: FakeKube, storage: str, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kube.phases = [{"phase": "Failed", "message": "child 'coordinator' failed"}]
    argv = ["argo", "submit", str(config_path), "--storage", storage, "--wait"]
    assert main([*argv, "--poll-seconds", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "autolfads: error: workflow autolfads-abc12 ended Failed: child 'coordinator' failed"
    ]


def test_submit_wait_names_the_step_that_failed_the_workflow(
    fake_kube: FakeKube, storage: str, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Argo leaves a failed DAG's message empty; the pods' messages say why
    # (trainers-failed's is its last log line: FallbackToLogsOnError).
    reason = (
        "autolfads: error: every trainer task of the workflow failed (after its retries); "
        "the search is now cancelled; see the trainer pods' logs"
    )
    nodes = {
        "a": {"type": "Pod", "displayName": "trainer(0:0)", "phase": "Failed",
              "finishedAt": "2026-01-01T10:00:00Z",
              "message": "main: Error (exit code 2): no CUDA GPU is available"},
        "b": {"type": "Pod", "displayName": "trainers-failed", "phase": "Failed",
              "finishedAt": "2026-01-01T10:05:00Z",
              "message": f"main: Error (exit code 1): {reason}"},
        "c": {"type": "Pod", "displayName": "coordinator", "phase": "Succeeded",
              "finishedAt": "2026-01-01T10:06:00Z"},
    }  # fmt: skip
    fake_kube.phases = [{"phase": "Failed", "message": "", "nodes": nodes}]
    argv = ["argo", "submit", str(config_path), "--storage", storage, "--wait"]
    assert main([*argv, "--poll-seconds", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "autolfads: error: workflow autolfads-abc12 ended Failed: step trainers-failed: "
        f"main: Error (exit code 1): {reason}"
    ]


def test_a_workflow_deleted_while_followed_is_named_as_such(
    fake_kube: FakeKube, storage: str, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kube.phases = [{"phase": "Running", "progress": "1/6"}, None]
    argv = ["argo", "submit", str(config_path), "--storage", storage, "--wait"]
    assert main([*argv, "--poll-seconds", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "autolfads: error: workflow 'autolfads-abc12' no longer exists in namespace "
        "'autolfads' (deleted while it was followed?)"
    ]


# -- errors: each one line, and nothing uploaded when the cluster is unusable ----------


@pytest.mark.parametrize("poll", ["-1", "0", "nan"])
def test_a_bad_poll_interval_is_one_line_before_anything_is_created(
    fake_kube: FakeKube, storage: str, config_path: Path, uploaded, capsys, poll: str
) -> None:
    argv = ["argo", "submit", str(config_path), "--storage", storage, "--wait"]
    assert main([*argv, "--poll-seconds", poll]) == 2
    assert "--poll-seconds" in one_error_line(capsys)
    assert uploaded() == []
    assert fake_kube.posts() == []


def test_forbidden_is_one_line_and_uploads_nothing(
    fake_kube: FakeKube, storage: str, config_path: Path, uploaded, capsys
) -> None:
    message = (
        'workflowtemplates.argoproj.io "autolfads-pbt" is forbidden: User "alice" cannot get '
        'resource "workflowtemplates" in API group "argoproj.io" in the namespace "autolfads"'
    )
    fake_kube.template_reply = (403, status_body(403, "Forbidden", message))
    assert main(["argo", "submit", str(config_path), "--storage", storage]) == 2
    err = one_error_line(capsys)
    assert f"forbidden: {message}" in err and "autolfads-submitter" in err
    assert uploaded() == []
    assert fake_kube.posts() == []


def test_missing_argo_crd_is_one_line(
    fake_kube: FakeKube, storage: str, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An API group the server does not serve answers with a plain-text 404.
    fake_kube.template_reply = (404, "404 page not found")
    assert main(["argo", "submit", str(config_path), "--storage", storage]) == 2
    assert "Argo Workflows is not installed in this cluster" in one_error_line(capsys)


def test_missing_workflow_template_is_one_line(
    fake_kube: FakeKube, storage: str, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kube.template_reply = status_reply(
        404,
        "NotFound",
        'workflowtemplates.argoproj.io "autolfads-pbt" not found',
        name="autolfads-pbt",
        group="argoproj.io",
        kind="workflowtemplates",
    )
    assert main(["argo", "submit", str(config_path), "--storage", storage]) == 2
    err = one_error_line(capsys)
    assert "WorkflowTemplate 'autolfads-pbt' is not installed in namespace 'autolfads'" in err


def test_name_conflict_is_one_line(
    fake_kube: FakeKube, storage: str, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kube.create_reply = status_reply(
        409,
        "AlreadyExists",
        'workflows.argoproj.io "nightly" already exists',
        name="nightly",
        group="argoproj.io",
        kind="workflows",
    )
    argv = ["argo", "submit", str(config_path), "--storage", storage, "--name", "nightly"]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert "a Workflow named 'nightly' already exists in namespace 'autolfads'" in err
    assert fake_kube.dry_run_posts()[0]["metadata"]["name"] == "nightly"
    assert fake_kube.posts() == []


FORBIDDEN_CREATE = status_reply(
    403,
    "Forbidden",
    'workflows.argoproj.io is forbidden: User "alice" cannot create resource "workflows" '
    'in API group "argoproj.io" in the namespace "autolfads"',
)
INVALID = status_reply(
    422,
    "Invalid",
    'Workflow.argoproj.io "nightly" is invalid: spec.templates[0].container: Required value',
)


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "template"])
@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (FORBIDDEN_CREATE, "forbidden: workflows.argoproj.io is forbidden"),
        (
            status_reply(409, "AlreadyExists", 'workflows.argoproj.io "nightly" already exists'),
            "a Workflow named 'nightly' already exists",
        ),
        (INVALID, "the API server rejected the Workflow: Workflow.argoproj.io"),
    ],
    ids=["403", "409", "422"],
)
def test_a_refused_create_uploads_nothing_and_a_corrected_resubmit_works(
    fake_kube: FakeKube,
    storage: str,
    config_path: Path,
    uploaded,
    capsys: pytest.CaptureFixture[str],
    reply: tuple[int, Any],
    message: str,
    inline: bool,
) -> None:
    argv = ["argo", "submit", str(config_path), "--storage", storage, "--name", "nightly"]
    argv += ["--inline"] if inline else []
    fake_kube.create_reply = reply
    assert main(argv) == 2
    assert message in one_error_line(capsys)
    assert uploaded() == [] and fake_kube.posts() == []
    # Once the cluster would accept it, the same submit goes through: no half
    # uploaded run stands in its way.
    fake_kube.create_reply = None
    assert main(argv) == 0
    assert "workflow nightly created" in capsys.readouterr().out
    assert "runs/submit-test/config.yaml" in uploaded()
    assert [p["metadata"]["name"] for p in fake_kube.posts()] == ["nightly"]


def test_a_taken_name_is_refused_before_the_upload(
    fake_kube: FakeKube, storage: str, config_path: Path, uploaded, capsys
) -> None:
    argv = ["argo", "submit", str(config_path), "--storage", storage, "--name", "nightly"]
    fake_kube.created["nightly"] = {"metadata": {"name": "nightly"}}
    assert main([*argv, "--inline"]) == 2
    assert "a Workflow named 'nightly' already exists" in one_error_line(capsys)
    assert uploaded() == [] and fake_kube.posts() == []


def test_no_cluster_configured_is_one_line(
    tmp_path: Path,
    storage: str,
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["argo", "submit", str(config_path), "--storage", storage]) == 2
    assert "no Kubernetes cluster configured" in one_error_line(capsys)


def test_unreachable_api_server_is_one_line_and_uploads_nothing(
    tmp_path: Path,
    storage: str,
    config_path: Path,
    uploaded,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}")
    argv = ["argo", "submit", str(config_path), "--storage", storage]
    assert main([*argv, "--kubeconfig", str(tmp_path / "kc")]) == 2
    assert "cannot reach the Kubernetes API server" in one_error_line(capsys)
    # With --inline no template is read first: the dry-run create finds it.
    assert main([*argv, "--inline", "--kubeconfig", str(tmp_path / "kc")]) == 2
    assert "cannot reach the Kubernetes API server" in one_error_line(capsys)
    assert uploaded() == []


def test_unreachable_storage_is_one_line_and_creates_nothing(
    fake_kube: FakeKube,
    storage: str,
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AUTOLFADS_S3_MAX_ATTEMPTS", "1")
    assert main(["argo", "submit", str(config_path), "--storage", storage]) == 2
    assert f"127.0.0.1:{port}" in one_error_line(capsys)
    assert fake_kube.posts() == []
