"""No secret ever leaves the process that holds it.

One tiny search runs with `autolfads run` against the moto S3 server, with
distinctive credentials in the environment (S3 access key, secret key,
session token, and gRPC tokens of another coordinator). Then everything the
run wrote or printed is searched for those secrets, and for the run's own
generated gRPC tokens: stdout/stderr at DEBUG log level, the worker logs,
every file in the workspace, every object in the bucket, a live status reply
of the coordinator, the stored-run status, and the rendered Argo Workflows.
Error paths are checked too: an unreachable endpoint, store URLs that try to
carry credentials, and a server that echoes the request's credentials back
in its error message. Each secret is looked for verbatim, URL-encoded and
base64-encoded.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from s3_proxy import Hold, ScriptedS3Proxy

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tiny_search.yaml"
RUN = "tiny-search"

pytestmark = pytest.mark.slow

_TAG = uuid.uuid4().hex
# Distinctive fake credentials: moto does not check them, so any value works.
FAKE_S3 = {
    "AWS_ACCESS_KEY_ID": f"AKIALEAK{_TAG[:12].upper()}",
    "AWS_SECRET_ACCESS_KEY": f"leak/Secret+Key{_TAG}",
    "AWS_SESSION_TOKEN": f"leak-session-token-{_TAG}",
}
# Tokens of some other coordinator in the caller's environment: a local run
# makes its own and must neither use nor reveal these.
FOREIGN_GRPC = {
    "AUTOLFADS_OPERATOR_TOKEN": f"leak-operator-token-{_TAG}",
    "AUTOLFADS_OBSERVER_TOKEN": f"leak-observer-token-{_TAG}",
    "AUTOLFADS_WORKER_TOKEN": f"leak-worker-token-{_TAG}",
}
# Files whose whole point is to hold a secret (mode 0600), and where it is.
SECRET_FILES = {"observer.token"}


def forms(secret: str) -> dict[str, bytes]:
    """The ways a secret could show up in text or binary output."""
    raw = secret.encode()
    return {
        "verbatim": raw,
        "url-encoded": quote(secret, safe="").encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "urlsafe-base64": base64.urlsafe_b64encode(raw).rstrip(b"="),
    }


def leaks(secrets: dict[str, str], artifacts: dict[str, bytes]) -> list[str]:
    found = []
    for label, blob in artifacts.items():
        for name, secret in secrets.items():
            for form, needle in forms(secret).items():
                if needle in blob:
                    found.append(f"{name} ({form}) in {label}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def autolfads(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autolfads", *args],
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        env=env,
    )


@dataclass
class Search:
    root: Path
    config: Path
    env: dict[str, str]
    secrets: dict[str, str]  # name -> value
    artifacts: dict[str, bytes]  # label -> everything it holds


def workspace(root: Path) -> Path:
    (root / "cfg").mkdir(parents=True)
    config = root / "cfg" / "tiny.yaml"
    shutil.copy(EXAMPLE, config)
    return config


def clean_env(s3_server, credentials: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "AUTOLFADS_"))
    }
    env.update(s3_server.env)
    env.update(credentials)
    env.update(FOREIGN_GRPC)
    env["AUTOLFADS_S3_CONNECT_TIMEOUT_S"] = "2"
    return env


def s3_secrets(s3_server) -> dict[str, str]:
    if s3_server.kind == "external":
        # A real MinIO checks credentials: its own are the secrets to protect.
        return {
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        }
    return dict(FAKE_S3)


def status_while_running(proc: subprocess.Popen, log_dir: Path, port: int, search: Search) -> bytes:
    """A live status reply from the running coordinator (observer token)."""
    token = log_dir / "observer.token"
    deadline = time.monotonic() + 90
    while not token.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert token.exists(), "the run never wrote its observer token"
    reply = autolfads(
        "status", f"127.0.0.1:{port}", "--json", "--token-file", str(token),
        cwd=search.root, env=search.env,
    )  # fmt: skip
    assert reply.returncode == 0, reply.stderr[-2000:]
    return reply.stdout + reply.stderr


def child_worker_token(parent: int) -> str | None:
    """The worker token a child of `parent` got in its environment (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or not ours to read
        for item in environ:
            if item.startswith(b"AUTOLFADS_WORKER_TOKEN="):
                return item.split(b"=", 1)[1].decode()
    return None


def wait_for_worker_token(proc: subprocess.Popen) -> str | None:
    if not Path("/proc/self/environ").exists():
        return None  # not Linux: the generated worker token cannot be observed
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        token = child_worker_token(proc.pid)
        if token:
            return token
        time.sleep(0.2)
    raise AssertionError("no trainer worker with a worker token appeared")


def bucket_objects(s3_server, bucket: str) -> dict[str, bytes]:
    client = s3_server.raw_client()
    objects = {}
    for obj in client.list_objects(bucket, recursive=True):
        response = client.get_object(bucket, obj.object_name)
        try:
            objects[f"s3://{bucket}/{obj.object_name}"] = response.read()
        finally:
            response.close()
            response.release_conn()
    return objects


def workspace_files(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in SECRET_FILES:
            yield str(path.relative_to(root)), path.read_bytes()


@pytest.fixture(scope="module")
def search(s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Search]:
    root = tmp_path_factory.mktemp("leaks")
    config = workspace(root)
    credentials = s3_secrets(s3_server)
    env = clean_env(s3_server, credentials)
    bucket = f"autolfads-leak-{_TAG[:10]}"
    # Generation 1's checkpoint uploads wait in a proxy until the live status
    # and the workers' environment have been read: the search cannot end first.
    hold = Hold("PUT", r"/members/m\d+/gen-0001/")
    proxy = ScriptedS3Proxy(s3_server.endpoint_url, hold).start()
    storage = f"s3://{bucket}/runs"
    through_proxy = f"{storage}?endpoint={proxy.endpoint_url}"
    log_dir = root / "logs"
    port = free_port()
    search = Search(root, config, env, {**credentials, **FOREIGN_GRPC}, {})
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "autolfads",
            "run", str(config), "--workers", "1", "--threads", "1", "--progress", "plain",
            "--storage", through_proxy, "--log-dir", str(log_dir), "--listen", f"127.0.0.1:{port}",
        ],
        # DEBUG everywhere: this process and, through the environment, its workers.
        cwd=root, env={**env, "AUTOLFADS_LOG_LEVEL": "DEBUG"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        hold.wait_held()
        live_status = status_while_running(proc, log_dir, port, search)
        worker_token = wait_for_worker_token(proc)
        hold.release()
        out, err = proc.communicate(timeout=300)
    finally:
        hold.release()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    # The run's own tokens are secrets too (only the observer's is on disk).
    search.secrets["generated observer token"] = (log_dir / "observer.token").read_text().strip()
    if worker_token is not None:
        search.secrets["generated worker token"] = worker_token
    artifacts = {"run stdout": out, "run stderr": err, "live status reply": live_status}
    artifacts.update(bucket_objects(s3_server, bucket))
    stored = autolfads("status", f"{storage}/{RUN}", "--json", cwd=root, env=env)
    assert stored.returncode == 0, stored.stderr[-2000:]
    artifacts["stored status"] = stored.stdout + stored.stderr
    for flags in ([], ["--inline"], ["--inline", "--stage"]):
        rendered = autolfads(
            "argo", "render", str(config), "--storage", storage, *flags, cwd=root, env=env
        )
        assert rendered.returncode == 0, rendered.stderr[-2000:]
        artifacts[f"argo render {' '.join(flags)}"] = rendered.stdout + rendered.stderr
    artifacts.update(workspace_files(root))
    search.artifacts = artifacts
    yield search
    proxy.stop()
    client = s3_server.raw_client()
    for obj in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, obj.object_name)
    client.remove_bucket(bucket)


def test_the_search_produced_what_we_search(search: Search) -> None:
    # Guards the check below: it must look at real output, not at nothing.
    labels = set(search.artifacts)
    assert any(label.endswith(f"{RUN}/best/checkpoint.pt") for label in labels)
    assert any(label.endswith("report/index.html") for label in labels)
    assert any("/coordinator/journal/" in label for label in labels)
    assert any(label.startswith("logs/worker-") for label in labels)
    assert b"DEBUG" in search.artifacts["run stderr"]
    assert b"DEBUG" in search.artifacts["logs/worker-0.log"]
    assert b"member" in search.artifacts["live status reply"]
    assert b"kind: Workflow" in search.artifacts["argo render --inline"]
    assert len(search.secrets["generated observer token"]) >= 16
    if Path("/proc/self/environ").exists():
        worker = search.secrets["generated worker token"]
        assert len(worker) >= 16 and worker != FOREIGN_GRPC["AUTOLFADS_WORKER_TOKEN"]


def test_the_leak_finder_finds_every_form() -> None:
    secret = FAKE_S3["AWS_SECRET_ACCESS_KEY"]
    for form, needle in forms(secret).items():
        found = leaks({"s": secret}, {"blob": b"prefix " + needle + b" suffix"})
        assert f"s ({form}) in blob" in found, (form, found)
    assert leaks({"s": secret}, {"blob": b"nothing here"}) == []


def test_no_secret_anywhere_the_run_wrote(search: Search) -> None:
    assert leaks(search.secrets, search.artifacts) == []


def test_the_secret_files_are_private(search: Search) -> None:
    token = search.root / "logs" / "observer.token"
    assert token.stat().st_mode & 0o077 == 0


# ---- error paths ---------------------------------------------------------------------


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), lines[-5:]
    return lines[0]


def test_unreachable_endpoint_leaks_nothing(search: Search, tmp_path: Path) -> None:
    config = workspace(tmp_path)
    shutil.copytree(search.root / "data", tmp_path / "data")  # no re-synthesis
    env = {**search.env, "AUTOLFADS_S3_MAX_ATTEMPTS": "2", "AUTOLFADS_S3_CONNECT_TIMEOUT_S": "1"}
    url = f"s3://bucket/runs?endpoint=http://127.0.0.1:{free_port()}"
    procs = {
        "run": autolfads(
            "run", str(config), "--workers", "1", "--storage", url, cwd=tmp_path, env=env
        ),
        "status": autolfads("status", url.replace("/runs?", "/runs/x?"), cwd=tmp_path, env=env),
    }
    for name, proc in procs.items():
        assert "127.0.0.1" in one_line_error(proc), name
    artifacts = {f"{n} {s}": getattr(p, s) for n, p in procs.items() for s in ("stdout", "stderr")}
    artifacts.update(workspace_files(tmp_path))
    assert leaks(search.secrets, artifacts) == []


def hostile_urls(secrets: dict[str, str], endpoint: str) -> list[str]:
    """Store URLs that try to carry the credentials themselves."""
    key = quote(secrets["AWS_ACCESS_KEY_ID"], safe="")
    secret = quote(secrets["AWS_SECRET_ACCESS_KEY"], safe="")
    host = endpoint.split("://", 1)[1]
    return [
        f"s3://{key}:{secret}@bucket/runs",
        f"s3://{key}@bucket/runs",
        f"s3://bucket/runs?secret_key={secret}",
        f"s3://bucket/runs?access_key={key}&endpoint={endpoint}",
        f"s3://bucket/runs?X-Amz-Security-Token={secret}",
        f"s3://bucket/runs?endpoint=http://{key}:{secret}@{host}",
        f"s3://bucket/runs?region={secret}&endpoint=http://{host}/{secret}",
    ]


def test_store_urls_carrying_credentials_are_refused_without_echo(
    search: Search,
    s3_server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from autolfads.cli import main

    config = workspace(tmp_path)
    shutil.copytree(search.root / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    for name, value in search.env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level("DEBUG")
    artifacts = {}
    for i, url in enumerate(hostile_urls(search.secrets, s3_server.endpoint_url)):
        for command in (
            ["run", str(config), "--workers", "1", "--storage", url],
            ["status", url.replace("/runs", "/runs/x", 1)],
            ["argo", "render", str(config), "--storage", url],
        ):
            assert main(command) != 0
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), (url, err)
            artifacts[f"url {i} {command[0]} output"] = (out + err).encode()
    artifacts["log records"] = caplog.text.encode()
    artifacts.update(workspace_files(tmp_path))
    assert not (tmp_path / "runs").exists()
    assert leaks(search.secrets, artifacts) == []


class EchoingS3(BaseHTTPRequestHandler):
    """A hostile or buggy S3 server that quotes the request's credentials back."""

    def do_HEAD(self) -> None:
        # "The bucket exists": the client goes on to GET, whose error it reads.
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reply(self) -> None:
        echoed = " ".join(
            f"{h}={self.headers.get(h, '')}"
            for h in ("Authorization", "X-Amz-Security-Token", "X-Amz-Content-Sha256")
        )
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidArgument</Code>"
            f"<Message>bad request from {echoed}</Message><RequestId>1</RequestId></Error>"
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _reply

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def echoing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_server_error_messages_echoing_credentials_are_redacted(
    search: Search, echoing_server: str, tmp_path: Path
) -> None:
    env = {**search.env, "AWS_ENDPOINT_URL": echoing_server, "AUTOLFADS_S3_MAX_ATTEMPTS": "1"}
    proc = autolfads("--log-level", "DEBUG", "status", "s3://bucket/runs/x", cwd=tmp_path, env=env)
    assert proc.returncode != 0
    # DEBUG logs come first; the error is the last line.
    line = proc.stderr.decode(errors="replace").strip().splitlines()[-1]
    assert line.startswith("autolfads: error: ") and "InvalidArgument" in line, line
    assert "bad request from" in line  # the server's echo did reach the message, redacted
    artifacts = {"stderr": proc.stderr, "stdout": proc.stdout}
    assert leaks(search.secrets, artifacts) == []
