"""The S3 backend against a real S3 HTTP server: big objects, multipart,
outages and retries, auth and bucket errors, configuration, secrets.

Faults are injected by a small HTTP proxy on loopback between the real
`minio` client and the real server (moto, or MinIO when configured): it can
vanish and come back on the same port, drop a connection mid-request, cut a
response short, or answer like S3 does (503 SlowDown, 403
InvalidAccessKeyId/SignatureDoesNotMatch). moto itself never checks
credentials, so auth errors are exercised through the proxy's scripted
S3-style XML answers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from s3_proxy import ScriptedS3Proxy

from autolfads.storage import (
    BucketNotFound,
    ChecksumMismatch,
    DataCache,
    InvalidKey,
    RetryPolicy,
    RunLayout,
    S3Store,
    SourceUnreadable,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    open_store,
    s3_settings_from_env,
    upload_data,
)
from autolfads.storage import s3 as s3_module

MiB = 1024 * 1024
SHORT_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def proxy(s3_server):
    p = ScriptedS3Proxy(s3_server.endpoint_url).start()
    yield p
    p.stop()


def proxied_store(proxy, s3_server, bucket: str, retry: RetryPolicy, **env) -> S3Store:
    store = open_store(
        f"s3://{bucket}/runs?endpoint={proxy.endpoint_url}",
        env={**s3_server.env, **env},
        retry=retry,
    )
    assert isinstance(store, S3Store)
    return store


# ---- big objects -----------------------------------------------------------------


def test_large_object_round_trips_with_multipart(make_s3_store, s3_server, tmp_path) -> None:
    store = make_s3_store("big")
    data = os.urandom(21 * MiB)  # > 16 MiB part size: two parts
    store.put_bytes("run/data/big.bin", data)
    assert store.get_bytes("run/data/big.bin") == data
    etag = s3_server.raw_client().stat_object(store.bucket, "big/run/data/big.bin").etag
    assert etag.endswith("-2"), f"expected a 2-part multipart upload, etag {etag}"
    src = tmp_path / "big.h5"
    src.write_bytes(data)
    info = store.put_file("run/data/file.h5", src)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    got = store.get_file("run/data/file.h5", tmp_path / "back.h5")
    assert got.size == len(data) and (tmp_path / "back.h5").read_bytes() == data


@pytest.mark.parametrize("change", ["shrinks", "vanishes"])
def test_a_source_that_changes_after_its_checksum_is_named_not_the_server(
    make_s3_store, tmp_path, monkeypatch, change
) -> None:
    # Between the checksum (first read) and the upload (second read) the
    # file shrinks or is deleted: the error used to say the server could not
    # be reached.
    store = make_s3_store("source")
    src = tmp_path / "data.h5"
    src.write_bytes(b"x" * 100_000)
    checksum = s3_module.sha256_file

    def then_change(path: Path) -> tuple[str, int]:
        result = checksum(path)
        if change == "shrinks":
            path.write_bytes(b"x" * 10)
        else:
            path.unlink()
        return result

    monkeypatch.setattr(s3_module, "sha256_file", then_change)
    expected = (
        (ChecksumMismatch, f"{src} changed while it was being uploaded")
        if change == "shrinks"
        else (SourceUnreadable, f"cannot read {src}")
    )
    with pytest.raises(expected[0], match=re.escape(expected[1])) as caught:
        store.put_file("run/data/a.h5", src)
    assert "cannot reach" not in str(caught.value)
    assert not store.exists("run/data/a.h5")


@pytest.mark.skipif(not os.path.isfile("/proc/self/io"), reason="needs Linux's /proc/self/io")
def test_a_file_that_changes_while_it_uploads_is_not_stored_under_a_wrong_checksum(
    make_s3_store, tmp_path
) -> None:
    # /proc/self/io is a file whose bytes differ at every read (it counts
    # the bytes this process has read), like a data file still being
    # written: the checksum (first read) and the upload (second read) see
    # different contents.
    store = make_s3_store("changing")
    store.put_bytes("run/data/x.h5", b"an older version")
    with pytest.raises(StorageError, match="changed while it was being uploaded"):
        store.put_file("run/data/x.h5", Path("/proc/self/io"))
    # Not left behind with a checksum that its bytes do not have.
    assert not store.exists("run/data/x.h5")
    src = tmp_path / "steady.h5"
    src.write_bytes(b"complete")
    assert store.put_file("run/data/x.h5", src).sha256 == hashlib.sha256(b"complete").hexdigest()
    assert store.get_bytes("run/data/x.h5") == b"complete"


# ---- outages and retries -----------------------------------------------------


class RetrySeen(logging.Handler):
    """Sets `event` once the store's retry loop reports its `n`-th failed attempt."""

    def __init__(self, n: int) -> None:
        super().__init__(logging.INFO)
        self.needle = f"attempt {n} failed"
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


def test_server_gone_then_back_the_operation_succeeds(proxy, s3_server, s3_bucket) -> None:
    # A budget far longer than the test needs: the put must still be retrying
    # when the server returns, however slowly this thread is scheduled.
    patient = RetryPolicy(max_attempts=10_000, base_delay_s=0.01, max_delay_s=0.05)
    store = proxied_store(proxy, s3_server, s3_bucket, patient)
    store.put_bytes("run/config.yaml", b"name: demo\n")
    proxy.stop()
    result: dict[str, object] = {}
    seen = RetrySeen(2)
    retry_log = logging.getLogger("autolfads.storage.retry")
    retry_log.addHandler(seen)
    level = retry_log.level
    retry_log.setLevel(logging.INFO)

    def put_during_outage() -> None:
        try:
            result["info"] = store.put_bytes("run/coordinator/state.json", b'{"generation": 3}')
        except BaseException as err:
            result["error"] = err

    worker = threading.Thread(target=put_during_outage)
    worker.start()
    try:
        # Two refused attempts: the put is riding out the outage, not done.
        assert seen.event.wait(60), "the put never retried while the server was gone"
        assert worker.is_alive() and not result, result
        proxy.start()  # same port
        worker.join(timeout=60)
    finally:
        retry_log.removeHandler(seen)
        retry_log.setLevel(level)
    assert "error" not in result, result.get("error")
    assert store.get_bytes("run/coordinator/state.json") == b'{"generation": 3}'
    assert store.get_bytes("run/config.yaml") == b"name: demo\n"


def test_connection_dropped_mid_multipart_upload_is_retried(proxy, s3_server, s3_bucket) -> None:
    store = proxied_store(proxy, s3_server, s3_bucket, SHORT_RETRY)
    start = proxy.count()
    # Drop the first part upload (PUT ...?partNumber=...) of the multipart put.
    dropped: list[str] = []

    def rule(n: int, method: str, path: str) -> str | None:
        if method == "PUT" and "partNumber=" in path and not dropped:
            dropped.append(path)
            return "drop"
        return None

    proxy.rule = rule
    data = os.urandom(21 * MiB)
    store.put_bytes("run/members/m001/gen-0001/checkpoint.pt", data)
    assert dropped, "the fault was never triggered"
    assert store.get_bytes("run/members/m001/gen-0001/checkpoint.pt") == data
    assert proxy.count() - start > 4  # the failed attempt plus a whole new upload


def test_truncated_download_is_retried(proxy, s3_server, s3_bucket, tmp_path) -> None:
    store = proxied_store(proxy, s3_server, s3_bucket, SHORT_RETRY)
    data = os.urandom(3 * MiB)
    store.put_bytes("run/data/d.h5", data)
    cut: list[int] = []

    def rule(n: int, method: str, path: str) -> str | None:
        if method == "GET" and "d.h5" in path and len(cut) < 2:
            cut.append(n)
            return "truncate"
        return None

    proxy.rule = rule
    assert store.get_bytes("run/data/d.h5") == data
    cut.clear()
    store.get_file("run/data/d.h5", tmp_path / "d.h5")
    assert len(cut) == 2 and (tmp_path / "d.h5").read_bytes() == data


def test_slow_down_503_is_retried_then_reported(proxy, s3_server, s3_bucket) -> None:
    store = proxied_store(proxy, s3_server, s3_bucket, SHORT_RETRY)
    store.put_bytes("k.bin", b"payload")
    before = proxy.count("GET")
    proxy.rule = lambda n, method, path: (
        "503:SlowDown" if proxy.count("GET") - before <= 2 else None
    )
    assert store.get_bytes("k.bin") == b"payload"
    assert proxy.count("GET") - before == 3  # two 503s, then the answer

    proxy.rule = lambda n, method, path: "503:SlowDown"
    before = proxy.count()
    with pytest.raises(StorageUnavailable, match=r"after 4 attempts.*SlowDown \(HTTP 503\)"):
        store.get_bytes("k.bin")
    assert proxy.count() - before == SHORT_RETRY.max_attempts


def test_not_implemented_501_is_not_retried(proxy, s3_server, s3_bucket) -> None:
    # A gateway that lacks an operation answers 501 every time: retrying it
    # through the whole budget only delays the error.
    store = proxied_store(proxy, s3_server, s3_bucket, SHORT_RETRY)
    store.put_bytes("k.bin", b"payload")
    proxy.rule = lambda n, method, path: "501:NotImplemented"
    before = proxy.count()
    with pytest.raises(StorageError, match=r"NotImplemented \(HTTP 501\)") as caught:
        store.get_bytes("k.bin")
    assert not isinstance(caught.value, StorageUnavailable)
    assert proxy.count() - before == 1


def test_a_connection_closed_mid_tls_handshake_is_retried() -> None:
    # What a load balancer does while the MinIO pod behind it restarts: it
    # accepts, then closes before the handshake ends. That is an outage to
    # ride out, not a wrong certificate or scheme (which fails at once).
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def close_each() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.recv(4096)  # the ClientHello
            conn.close()

    threading.Thread(target=close_each, daemon=True).start()
    port = listener.getsockname()[1]
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "us-east-1"}
    try:
        with pytest.raises(StorageUnavailable, match="after 4 attempts"):
            open_store(
                f"s3://bucket/run?endpoint=https://127.0.0.1:{port}", env=env, retry=SHORT_RETRY
            )
    finally:
        listener.close()
    assert len(accepted) == SHORT_RETRY.max_attempts


def test_server_that_never_returns_fails_clearly_within_budget(proxy, s3_server, s3_bucket) -> None:
    store = proxied_store(proxy, s3_server, s3_bucket, SHORT_RETRY)
    proxy.stop()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        store.put_bytes("run/x.bin", b"x")
    message = str(caught.value)
    assert time.monotonic() - started < 5
    assert "after 4 attempts" in message and "cannot reach" in message
    assert proxy.endpoint_url in message and "\n" not in message


def test_dead_endpoint_fails_fast_on_open(s3_server) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="cannot reach"):
        open_store(f"s3://bucket-x/p?endpoint=http://127.0.0.1:{port}", env={}, retry=SHORT_RETRY)
    assert time.monotonic() - started < 5


# ---- auth and buckets --------------------------------------------------------------

SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "AKSENTINELACCESS42",
    "AWS_SECRET_ACCESS_KEY": "sEnTiNeL/secret+99",
}


def _assert_no_secret(text: str) -> None:
    assert "AKSENTINELACCESS42" not in text and "sEnTiNeL/secret+99" not in text


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("InvalidAccessKeyId", "AWS_ACCESS_KEY_ID"),
        ("SignatureDoesNotMatch", "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_rejected_credentials_give_one_clear_line(proxy, s3_server, s3_bucket, code, hint) -> None:
    # Every request is answered by the script: the sentinel keys never reach
    # the real server (a real MinIO would reject them itself).
    proxy.rule = lambda n, method, path: f"403:{code}"
    env = {**s3_server.env, **SECRET_ENV, "AWS_ENDPOINT_URL": proxy.endpoint_url}
    store = S3Store(s3_bucket, "runs", s3_settings_from_env(env, retry=SHORT_RETRY))
    for operation in (
        lambda: store.put_bytes("run/x.bin", b"x"),
        lambda: store.get_bytes("run/x.bin"),
        lambda: list(store.list("run/")),
    ):
        with pytest.raises(StorageAuthError) as caught:
            operation()
        message = str(caught.value)
        assert code in message and hint in message and "\n" not in message
        _assert_no_secret(message + repr(caught.value))
    assert proxy.count() == 3, "auth errors must not be retried"
    # HEAD answers carry no body: S3 clients only see a bare 403.
    with pytest.raises(StorageAuthError, match="access denied") as caught:
        proxied_store(proxy, s3_server, s3_bucket, SHORT_RETRY, **SECRET_ENV)
    _assert_no_secret(str(caught.value))


def test_bucket_creation_denied_is_an_auth_error(proxy, s3_server, s3_bucket) -> None:
    proxy.rule = lambda n, method, path: (
        "404:NoSuchBucket" if method == "HEAD" else "403:AccessDenied"
    )
    with pytest.raises(StorageAuthError, match=r"create bucket .*AccessDenied"):
        proxied_store(proxy, s3_server, s3_bucket, SHORT_RETRY)


def test_missing_bucket(s3_server, s3_bucket) -> None:
    url = f"s3://{s3_bucket}/runs"
    with pytest.raises(BucketNotFound, match=f"bucket '{s3_bucket}' does not exist"):
        open_store(url, env=s3_server.env, create_bucket=False)
    client = s3_server.raw_client()
    assert not client.bucket_exists(s3_bucket)
    store = open_store(url, env=s3_server.env)  # creation allowed: created
    assert client.bucket_exists(s3_bucket)
    client.remove_bucket(s3_bucket)  # gone behind the store's back
    with pytest.raises(BucketNotFound, match="does not exist"):
        store.put_bytes("x.bin", b"x")


# ---- configuration and secrets -----------------------------------------------------


def test_settings_from_minio_style_environment() -> None:
    settings = s3_settings_from_env(
        {
            "MINIO_ENDPOINT": "minio.minio.svc:9000",
            "MINIO_SECURE": "false",
            "MINIO_ROOT_USER": "admin",
            "MINIO_ROOT_PASSWORD": "password123",
        }
    )
    assert (settings.endpoint, settings.secure) == ("minio.minio.svc:9000", False)
    assert (settings.access_key, settings.secret_key) == ("admin", "password123")
    aws = s3_settings_from_env(
        {
            "AWS_ENDPOINT_URL": "https://s3.example.org",
            "AWS_ACCESS_KEY_ID": "a",
            "AWS_SECRET_ACCESS_KEY": "b",
            "MINIO_ROOT_USER": "ignored",
            "AWS_REGION": "eu-west-1",
        },
        endpoint="http://127.0.0.1:9000",  # the URL's option wins over the env
    )
    assert (aws.endpoint, aws.secure, aws.region, aws.access_key) == (
        "127.0.0.1:9000",
        False,
        "eu-west-1",
        "a",
    )
    default = s3_settings_from_env({})
    assert (default.endpoint, default.secure, default.access_key) == (
        "s3.amazonaws.com",
        True,
        None,
    )


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"AWS_ACCESS_KEY_ID": "only-the-key"}, "incomplete"),
        ({"AWS_ENDPOINT_URL": "ftp://x:21"}, "http or https"),
        ({"AWS_ENDPOINT_URL": "http://h:9000/path"}, "without a path"),
        ({"MINIO_SECURE": "maybe"}, "MINIO_SECURE"),
        ({"AUTOLFADS_S3_MAX_ATTEMPTS": "lots"}, "AUTOLFADS_S3_MAX_ATTEMPTS"),
        ({"AUTOLFADS_S3_PART_SIZE_MB": "1"}, "5 MiB"),
    ],
)
def test_bad_settings_are_one_line_errors(env, match) -> None:
    with pytest.raises(StorageError, match=match) as caught:
        s3_settings_from_env(env)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKSENTINELACCESS42:sEnTiNeL%2Fsecret+99@bucket/prefix",
        "s3://bucket/prefix?secret_key=sEnTiNeL/secret+99",
        "s3://bucket/prefix?access_key=AKSENTINELACCESS42",
        "s3://bucket/prefix?endpoint=http://AKSENTINELACCESS42:sEnTiNeL@127.0.0.1:1",
        "s3://bucket/prefix?endpoint=AKSENTINELACCESS42:sEnTiNeL@127.0.0.1:1",  # no scheme
    ],
)
def test_credentials_in_urls_are_refused_without_echoing_them(url) -> None:
    with pytest.raises(StorageError, match="credentials are not accepted") as caught:
        open_store(url, env={})
    _assert_no_secret(str(caught.value))


def test_credentials_in_an_endpoint_variable_are_refused_without_echoing_them() -> None:
    env = {"MINIO_ENDPOINT": "AKSENTINELACCESS42:sEnTiNeL/secret+99@127.0.0.1:9000"}
    with pytest.raises(StorageError, match="credentials are not accepted") as caught:
        s3_settings_from_env(env)
    _assert_no_secret(str(caught.value))


def test_a_failed_tls_handshake_is_not_retried(s3_server, s3_bucket) -> None:
    # https:// to a plain-HTTP server: a wrong scheme, which no retry mends
    # (it was retried through the whole budget as if the server were down).
    if not s3_server.endpoint_url.startswith("http://"):
        pytest.skip("needs a plain-HTTP server")
    host = s3_server.endpoint_url.split("://", 1)[1]
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
    }
    patient = RetryPolicy(max_attempts=50, base_delay_s=5.0, max_delay_s=5.0)
    with pytest.raises(StorageError, match="TLS handshake") as caught:
        open_store(f"s3://{s3_bucket}/run?endpoint=https://{host}", env=env, retry=patient)
    assert not isinstance(caught.value, StorageUnavailable)
    assert "attempts" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("s3://ab/prefix", InvalidKey),  # bucket names need 3+ characters
        ("s3://Bucket/prefix", InvalidKey),
        ("s3://bucket/../etc", InvalidKey),
        ("s3://bucket/p?colour=red", StorageError),
        ("gs://bucket/prefix", StorageError),
        ("file://remote-host/dir", StorageError),
        ("file:///tmp/a%00b", StorageError),  # was a bare ValueError (embedded null byte)
        ("file:///tmp/a%0Ab", StorageError),
    ],
)
def test_bad_store_urls(url, error) -> None:
    with pytest.raises(error):
        open_store(url, env={})


@pytest.mark.parametrize("option", ["endpoint", "region"])
def test_an_empty_url_option_is_refused_not_read_as_aws(option) -> None:
    # `?endpoint=$MINIO` with the variable unset meant AWS, whatever the
    # environment named.
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    with pytest.raises(StorageError, match=f"option '{option}' is empty"):
        open_store(f"s3://bucket/runs?{option}=", env=env)


def test_credentials_never_leak(proxy, s3_server, s3_bucket, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    store = proxied_store(proxy, s3_server, s3_bucket, SHORT_RETRY)
    store.put_json("run/config.json", {"name": "demo"})
    texts = [repr(store), store.url, store.location("k"), repr(store.settings)]
    proxy.stop()
    with pytest.raises(StorageUnavailable) as caught:
        store.get_bytes("run/config.json")
    texts += [str(caught.value), caplog.text]
    client = s3_server.raw_client()
    for obj in client.list_objects(s3_bucket, recursive=True):
        texts.append(client.get_object(s3_bucket, obj.object_name).read().decode())
    for text in texts:
        assert s3_server.access_key not in text and s3_server.secret_key not in text


# ---- data cache across processes -----------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from autolfads.storage import DataCache, open_store
    url, key, sha, cache_dir, gate = sys.argv[1:]
    cache = DataCache(open_store(url, create_bucket=False), cache_dir)
    print("READY", flush=True)
    while not os.path.exists(gate):  # all children start fetching together
        time.sleep(0.001)
    path = cache.fetch(key, sha)
    print(cache.downloads, path, flush=True)
    """
)


def test_data_cache_downloads_once_across_processes(s3_store_url, tmp_path) -> None:
    store = open_store(s3_store_url)
    src = tmp_path / "dataset.h5"
    src.write_bytes(os.urandom(8 * MiB))
    key, sha = upload_data(store, RunLayout("demo"), src)
    assert key == f"test/demo/data/{sha}.h5"[len("test/") :]
    assert upload_data(store, RunLayout("demo"), src) == (key, sha)  # already there
    cache_dir = tmp_path / "cache"
    gate = tmp_path / "gate"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, s3_store_url, key, sha, str(cache_dir), str(gate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
    gate.touch()
    results = [child.communicate(timeout=60) for child in children]
    for child, (_, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err
    downloads = [int(out.split()[0]) for out, _ in results]
    paths = {out.split()[1] for out, _ in results}
    assert sorted(downloads) == [0, 0, 1]
    assert paths == {str(cache_dir / f"{sha}.h5")}
    assert Path(paths.pop()).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith(".")) == [
        f"{sha}.h5"
    ]
    # And in-process: a hit, no download.
    cache = DataCache(store, cache_dir)
    cache.fetch(key, sha)
    assert (cache.hits, cache.downloads) == (1, 0)
