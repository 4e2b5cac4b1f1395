"""Shared fixtures: a real S3-compatible server and stores on both backends.

By default `s3_server` starts moto's ThreadedMotoServer on 127.0.0.1 (a real
HTTP S3 API, driven by the same `minio` client code that talks to MinIO in
production). Set AUTOLFADS_TEST_S3_URL (e.g. http://127.0.0.1:9000) plus
AUTOLFADS_TEST_S3_ACCESS_KEY / AUTOLFADS_TEST_S3_SECRET_KEY to run the same
tests against a real MinIO instead; each test then works in its own
`autolfads-test-*` bucket, removed afterwards.

Note: moto does not check credentials or signatures, so auth failures are
tested against a scripted loopback server (tests/test_storage_s3.py).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from coordinator_helpers import open_tiny_search
from run_helpers import RUN, Workspace, autolfads, make_workspace, run_args

from autolfads.coordinator.search.service import CoordinatorService
from autolfads.storage import LocalStore, RetryPolicy, Store, open_store

# The files that take longest run first. pytest-xdist's `--dist loadfile`
# hands files to its workers in collection order (alphabetical), so the Ray
# file (about 4 minutes of mostly waiting) used to start when most of the
# suite was done and ran on alone at its end; first, the other worker takes
# the short files meanwhile. Order within a file is kept.
LONGEST_FILES_FIRST = (
    "test_ray_e2e.py",
    "test_katib_e2e.py",
    "test_argo_local_e2e.py",
    "test_run_e2e.py",
    "test_worker_e2e.py",
    "test_extras_install.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return (
            LONGEST_FILES_FIRST.index(name)
            if name in LONGEST_FILES_FIRST
            else len(LONGEST_FILES_FIRST)
        )

    items.sort(key=rank)  # stable: every other file keeps its place


# Short budget so failure tests finish quickly; still a real backoff loop.
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@dataclass(frozen=True)
class S3TestServer:
    """Where the test S3 server listens and how to authenticate."""

    endpoint_url: str  # "http://127.0.0.1:PORT"
    access_key: str
    secret_key: str
    region: str
    kind: str  # "moto" or "external"

    @property
    def env(self) -> dict[str, str]:
        """Environment a store (or a subprocess) needs to reach the server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AUTOLFADS_S3_MAX_ATTEMPTS": str(FAST_RETRY.max_attempts),
            "AUTOLFADS_S3_BASE_DELAY_S": str(FAST_RETRY.base_delay_s),
            "AUTOLFADS_S3_MAX_DELAY_S": str(FAST_RETRY.max_delay_s),
            "AUTOLFADS_S3_CONNECT_TIMEOUT_S": "2",
        }

    def raw_client(self):
        """A bare minio client, for test set-up and for tampering behind a store's back."""
        from minio import Minio

        secure = self.endpoint_url.startswith("https://")
        return Minio(
            self.endpoint_url.split("://", 1)[1],
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=secure,
            region=self.region,
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    external = os.environ.get("AUTOLFADS_TEST_S3_URL")
    if external:
        yield S3TestServer(
            endpoint_url=external.rstrip("/"),
            access_key=os.environ.get("AUTOLFADS_TEST_S3_ACCESS_KEY", "minioadmin"),
            secret_key=os.environ.get("AUTOLFADS_TEST_S3_SECRET_KEY", "minioadmin"),
            region=os.environ.get("AUTOLFADS_TEST_S3_REGION", "us-east-1"),
            kind="external",
        )
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3TestServer(
            endpoint_url=f"http://{host}:{port}",
            access_key="autolfads-test-access",
            secret_key="autolfads-test-secret",
            region="us-east-1",
            kind="moto",
        )
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3TestServer) -> Iterator[str]:
    """A fresh, empty bucket name (created on first use); removed afterwards."""
    name = f"autolfads-test-{uuid.uuid4().hex[:12]}"
    yield name
    client = s3_server.raw_client()
    try:
        if client.bucket_exists(name):
            for obj in client.list_objects(name, recursive=True):
                client.remove_object(name, obj.object_name)
            client.remove_bucket(name)
    except Exception as err:  # cleanup must not mask the test's own result
        logging.getLogger(__name__).warning("could not remove test bucket %s: %s", name, err)


@pytest.fixture
def s3_store_url(s3_server: S3TestServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """'s3://<fresh bucket>/test?endpoint=...' with credentials in os.environ,
    so open_store(url) and subprocesses (which inherit the env) both work."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_bucket}/test?endpoint={s3_server.endpoint_url}"


@pytest.fixture
def make_s3_store(s3_server: S3TestServer, s3_bucket: str) -> Callable[..., Store]:
    """make_s3_store(prefix="test", retry=FAST_RETRY) -> an S3 Store on a fresh bucket."""

    def make(prefix: str = "test", *, retry: RetryPolicy = FAST_RETRY) -> Store:
        url = f"s3://{s3_bucket}/{prefix}" if prefix else f"s3://{s3_bucket}"
        return open_store(url, env=s3_server.env, retry=retry)

    return make


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def service(local_store: LocalStore) -> CoordinatorService:
    """A new tiny search in a local store (modules may define their own)."""
    return open_tiny_search(local_store)


@pytest.fixture(scope="session")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict]:
    """The tiny search by `autolfads run` (1 worker, local storage), run once
    per session: the reference the other deployment paths must reach."""
    ws = make_workspace(tmp_path_factory.mktemp("run"))
    proc = autolfads(ws, *run_args(ws, "--workers", "1", "--log-dir", str(ws.root / "logs")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((ws.runs / RUN / "best" / "metrics.json").read_text())
    return ws, {"metrics": metrics, "stdout": proc.stdout, "stderr": proc.stderr}
