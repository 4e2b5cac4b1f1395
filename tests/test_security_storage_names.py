"""Hostile object and run names are refused (InvalidKey) before they reach a backend.

Keys are built from run names, member ids and file names that may come from a
config, a gRPC request or a listing, so a name must never escape the store:
no traversal, no absolute paths, no control characters or NUL, no unicode
look-alikes, no backslashes, no hidden (sidecar) names, nothing too long for
either backend. Both backends refuse the same names for every operation, and
after a barrage of hostile calls nothing exists outside the store root (local)
or in the bucket (S3, against the moto server).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from autolfads.config import parse_config
from autolfads.errors import ConfigError
from autolfads.storage import (
    InvalidKey,
    LocalStore,
    RetryPolicy,
    RunLayout,
    S3Settings,
    S3Store,
    StorageError,
    StorageUnavailable,
    Store,
    open_store,
    validate_identifier,
    validate_key,
    validate_prefix,
)
from autolfads.storage.keys import MAX_COMPONENT_LEN, MAX_KEY_LEN

FUZZ = settings(
    max_examples=int(os.environ.get("AUTOLFADS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

HOSTILE_KEYS = [
    # traversal and absolute paths
    "",
    ".",
    "..",
    "../x",
    "a/../../b",
    "a/..",
    "./a",
    "a/./b",
    "/etc/passwd",
    "//x",
    "a//b",
    "a/",
    "~/x",
    "$HOME/x",
    # control characters
    "\x00",
    "a\x00b",
    "a\nb",
    "a\rb",
    "a\tb",
    "\x1b[31mred",
    "a\x7fb",
    "x\n",
    # Windows separators and drives
    "a\\b",
    "..\\..\\x",
    "C:\\Windows",
    "C:",
    # unicode tricks: look-alike dots and slashes, bidi override, zero width
    "\uff0e\uff0e/x",
    "\u2024\u2024/x",
    "a\u2215b",
    "a\u2044b",
    "\u202eexe.txt",
    "a\u200bb",
    "\uff41\uff42",
    "caf\u00e9",
    "e\u0301",
    "\ud800",
    # URL and shell syntax
    "%2e%2e/x",
    "a%00b",
    "a?b",
    "a#b",
    "a*b",
    "a b",
    " a",
    "a|b",
    "a;b",
    "'",
    '"',
    # hidden names (the local backend's sidecars and lock folder)
    ".hidden",
    "a/.x.meta.json",
    ".autolfads/locks/x",
    # too long for one of the backends
    "x" * (MAX_COMPONENT_LEN + 1),
    "a/" * (MAX_KEY_LEN // 2) + "a",
    "y" * 5000,
]
HOSTILE_RUN_NAMES = [
    *HOSTILE_KEYS,
    "a/b",
    "a=b",
    "a@b",
    "-a",
    "_a",
    "r" * 65,
]
NO_RETRY = RetryPolicy(max_attempts=1, base_delay_s=0.0, max_delay_s=0.0)
VALID_KEYS = ["a", "run-1/members/m000/gen-0001/checkpoint.pt", "a=b+c@d_e-f.g", "x" * 200]


def one_line_invalid_key(call) -> InvalidKey:
    with pytest.raises(InvalidKey) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "\x00" not in message and len(message) < 400, message[:200]
    return info.value


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_validate_key_refuses_hostile_names(key: str) -> None:
    one_line_invalid_key(lambda: validate_key(key))
    one_line_invalid_key(lambda: validate_prefix(key + "/" if key else "/"))


@pytest.mark.parametrize("name", HOSTILE_RUN_NAMES, ids=repr)
def test_run_and_member_names_refuse_hostile_names(name: str) -> None:
    one_line_invalid_key(lambda: validate_identifier("run name", name))
    one_line_invalid_key(lambda: RunLayout(name))
    layout = RunLayout("demo")
    one_line_invalid_key(lambda: layout.member_dir(name))
    one_line_invalid_key(lambda: layout.checkpoint(name, 3))
    assert layout.try_parse_checkpoint_key(f"demo/members/{name}/gen-0003/checkpoint.pt") is None
    # The config's `name` is the run's top-level key: it must follow the same rule.
    with pytest.raises(ConfigError):
        parse_config({"name": name, "data": {"path": "a.h5"}})


@pytest.mark.parametrize("name", HOSTILE_KEYS, ids=repr)
def test_file_names_inside_a_run_refuse_hostile_names(name: str) -> None:
    layout = RunLayout("demo")
    one_line_invalid_key(lambda: layout.member_file("m000", 1, name))
    one_line_invalid_key(lambda: layout.best(name))


def test_valid_keys_are_accepted() -> None:
    # The other side of the rule: the names autolfads itself uses still work.
    for key in VALID_KEYS:
        assert validate_key(key) == key
    assert RunLayout("chaotic-rnn.v2_1").checkpoint("m007", 12).endswith("gen-0012/checkpoint.pt")


# ---- both backends, every operation ------------------------------------------------


def every_operation(store: Store, key: str, src: Path, dest: Path) -> list:
    return [
        lambda: store.put_bytes(key, b"payload"),
        lambda: store.put_file(key, src),
        lambda: store.put_json(key, {"a": 1}),
        lambda: store.get_bytes(key),
        lambda: store.get_json(key),
        lambda: store.get_file(key, dest),
        lambda: store.stat(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.presigned_url(key),
        lambda: list(store.list(key + "/")),
    ]


def hammer(store: Store, tmp_path: Path) -> None:
    """Every operation with every hostile key: each must raise InvalidKey."""
    src = tmp_path / "src.bin"
    src.write_bytes(b"source file")
    dest = tmp_path / "downloads" / "dest.bin"
    dest.parent.mkdir(exist_ok=True)
    for key in HOSTILE_KEYS:
        for op in every_operation(store, key, src, dest):
            one_line_invalid_key(op)
    assert not dest.exists()


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_local_backend_refuses_and_writes_nothing_outside_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalStore(outside / "store")
    before = files_under(tmp_path)
    hammer(store, outside)
    after = files_under(tmp_path)
    # The only new files are the test's own scratch files, never an object.
    assert after - before <= {"outside/src.bin", "outside/downloads"}
    assert [info.key for info in store.list()] == []
    assert not any(
        p.is_file() for p in (outside / "store").rglob("*") if ".autolfads" not in p.parts
    )


def test_s3_backend_refuses_and_the_bucket_stays_empty(
    make_s3_store, s3_server, s3_bucket: str, tmp_path: Path
) -> None:
    store = make_s3_store("prefix")
    hammer(store, tmp_path)
    client = s3_server.raw_client()
    assert list(client.list_objects(s3_bucket, recursive=True)) == []
    # A valid key still works on the same store: the refusals were about names.
    store.put_bytes("ok/key", b"x")
    assert store.get_bytes("ok/key") == b"x"


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/../x",
        "s3://bucket/a/../../b",
        "s3://bucket/a\\b",
        "s3://bucket/%2e%2e/x",
        "s3://bucket/.hidden",
        "s3://bucket/a//b",
        "s3://../x",
        "s3://Bucket/x",
        "s3://bu/x",
        "s3://bucket/a\x00b",
        "s3://bucket/x\ny",
        "s3://bucket/" + "p" * 300,
    ],
    ids=repr,
)
def test_store_urls_with_hostile_buckets_or_prefixes_are_refused(url: str) -> None:
    # No server is reachable on purpose: refusal must happen before any request.
    with pytest.raises(StorageError) as info:
        open_store(url, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, retry=NO_RETRY)
    assert not isinstance(info.value, StorageUnavailable)
    assert "\n" not in str(info.value)


def test_hostile_files_planted_in_a_local_store_are_never_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("run/ok.json", b"{}")
    for name in ("a\nb", "x y", ".hidden", "caf\u00e9", "back\\slash"):
        (tmp_path / "store" / "run" / name).write_bytes(b"planted")
    assert [info.key for info in store.list("run/")] == ["run/ok.json"]


# ---- property-based: any string ----------------------------------------------------

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._=+@-]*")
PIECES = st.sampled_from(
    ["..", ".", "/", "\\", "a", "b-1", "\x00", "\n", "\uff0e", "%2e", "~", ":", " ", "x" * 120]
)
# Near-valid keys too, so that the "accepted" side of the property is exercised.
NEAR_VALID = st.lists(st.text(alphabet="ab0._-=+@", min_size=1, max_size=8), min_size=1, max_size=5)
NAMES = st.one_of(
    st.text(max_size=40),
    st.lists(PIECES, max_size=12).map("".join),
    NEAR_VALID.map("/".join),
)


def is_safe(key: str) -> bool:
    """The property every accepted key must have, stated independently."""
    parts = key.split("/")
    return (
        0 < len(key) <= MAX_KEY_LEN
        and key.isascii()
        and all(0 < len(p) <= MAX_COMPONENT_LEN and _SAFE_COMPONENT.fullmatch(p) for p in parts)
    )


@pytest.fixture(scope="module")
def dead_s3() -> S3Store:
    """An S3 store at a port nobody listens on: a request means validation passed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings_ = S3Settings(
        endpoint=f"127.0.0.1:{port}",
        secure=False,
        access_key="k",
        secret_key="s",
        connect_timeout_s=0.5,
        retry=NO_RETRY,
    )
    return S3Store("bucket", "prefix", settings_)


@FUZZ
@given(name=NAMES)
def test_any_name_is_refused_or_safe_and_both_backends_agree(
    name: str, tmp_path_factory: pytest.TempPathFactory, dead_s3: S3Store
) -> None:
    try:
        validate_key(name)
        accepted = True
    except InvalidKey:
        accepted = False
    assert accepted == is_safe(name)
    event("accepted" if accepted else "refused")
    root = tmp_path_factory.mktemp("fuzz")
    local = LocalStore(root / "store")
    if not accepted:
        one_line_invalid_key(lambda: local.put_bytes(name, b"x"))
        one_line_invalid_key(lambda: dead_s3.put_bytes(name, b"x"))
        assert files_under(root / "store") <= {".autolfads", ".autolfads/locks"}
        return
    local.put_bytes(name, b"x")
    store_root = root / "store"
    written = [
        p.relative_to(store_root)
        for p in store_root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(store_root).parts)
    ]
    assert [p.as_posix() for p in written] == [name]
    assert all((store_root / p).resolve().is_relative_to(store_root.resolve()) for p in written)
    # Accepted by S3 too: the request is attempted (and fails: no server there).
    with pytest.raises(StorageUnavailable):
        dead_s3.put_bytes(name, b"x")


@FUZZ
@given(NAMES)
def test_run_names_follow_one_rule_everywhere(name: str) -> None:
    ok = bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name))
    try:
        RunLayout(name)
        assert ok
    except InvalidKey:
        assert not ok
    if ok:
        assert validate_key(name) == name and "/" not in name and not name.startswith(".")
