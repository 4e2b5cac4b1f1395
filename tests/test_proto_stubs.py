"""The committed stubs are exactly what the pinned generator makes, and the
declared runtime ranges never admit a runtime older than the gencode."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
STUB_DIR = Path("autolfads/pbt/v1")
STUBS = ("coordinator_pb2.py", "coordinator_pb2.pyi", "coordinator_pb2_grpc.py")
KATIB_DIR = Path("autolfads/katib_api/v1beta1")
KATIB_STUBS = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def test_committed_stubs_are_fresh(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "scripts/gen_protos.py"), "--out", str(tmp_path)], check=True
    )
    stubs = [STUB_DIR / name for name in STUBS] + [KATIB_DIR / name for name in KATIB_STUBS]
    for path in stubs:
        fresh = (tmp_path / path).read_text()
        committed = (REPO / "proto" / path).read_text()
        assert fresh == committed, f"{path} is stale: run python scripts/gen_protos.py"


def _group(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern} not found"
    return found.group(1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _lower_bound(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([0-9.]+)", requirement)
    assert match, f"{requirement!r} has no lower bound"
    return _version(match.group(1))


def test_runtime_pins_are_not_older_than_the_generator():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    pb2 = (REPO / "proto" / STUB_DIR / "coordinator_pb2.py").read_text()
    gencode_protobuf = _version(_group(r"Protobuf Python Version: ([0-9.]+)", pb2))
    grpc_py = (REPO / "proto" / STUB_DIR / "coordinator_pb2_grpc.py").read_text()
    gencode_grpc = _version(_group(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_py))
    assert _lower_bound(deps["protobuf"]) >= gencode_protobuf
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert _lower_bound(deps[name]) >= gencode_grpc, name
    generator = (REPO / "scripts/gen_protos.py").read_text()
    pinned = _group(r'GRPC_TOOLS_VERSION = "([0-9.]+)"', generator)
    assert _version(pinned) == gencode_grpc
    assert f"grpcio-tools=={pinned}" in project["optional-dependencies"]["dev"]


def test_an_answer_from_a_newer_coordinator_is_not_blamed_on_the_request():
    # A new enum value is a compatible change within v1; an older client
    # used to raise InvalidRequest ("unspecified or unknown"), never retried
    # and blaming its own request, and the trainer died on it.
    from autolfads.coordinator.search.errors import CoordinatorError, InvalidRequest
    from autolfads.coordinator.wire import convert
    from autolfads.pbt.v1 import coordinator_pb2 as pb

    newer = pb.RequestWorkResponse(action=99)  # type: ignore[arg-type]  # a value after v1.x
    with pytest.raises(CoordinatorError, match="newer than this autolfads") as caught:
        convert.work_from_proto(newer)
    assert not isinstance(caught.value, InvalidRequest)
    with pytest.raises(CoordinatorError, match="heartbeat action 7"):
        convert.heartbeat_from_proto(pb.HeartbeatResponse(action=7))  # type: ignore[arg-type]
