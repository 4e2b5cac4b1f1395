"""Our api.v1.beta1 messages are Katib's wire contract: every message and
enum we declare has the same fields (names, numbers, types, labels, message
types) as the generated module Katib publishes on PyPI (`kubeflow-katib`).

Both modules register the same symbols, so one process cannot load both:
Katib's is described in a child process and compared here as JSON.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys

import pytest

from autolfads.katib_api.v1beta1 import api_pb2

DESCRIBE = r"""
import importlib.util, json, sys
spec = importlib.util.find_spec("kubeflow")
path = None
for root in spec.submodule_search_locations:
    import os
    candidate = os.path.join(root, "katib", "katib_api_pb2.py")
    if os.path.exists(candidate):
        path = candidate
# Load the generated file alone: the package's __init__ needs its own deps.
module_spec = importlib.util.spec_from_file_location("katib_api_pb2", path)
module = importlib.util.module_from_spec(module_spec)
module_spec.loader.exec_module(module)
sys.path.insert(0, sys.argv[1])
from describe_descriptors import describe
print(json.dumps(describe(module.DESCRIPTOR)))
"""


def describe(file_descriptor) -> dict:
    """{full name: fields or enum values} of every message and enum in a file."""
    out: dict = {}

    def message(desc) -> None:
        out[desc.full_name] = {
            f.name: [
                f.number,
                f.type,
                f.is_repeated,
                getattr(f.message_type, "full_name", None),
                getattr(f.enum_type, "full_name", None),
            ]
            for f in desc.fields
        }
        for nested in desc.nested_types:
            message(nested)
        for enum in desc.enum_types:
            out[enum.full_name] = {v.name: v.number for v in enum.values}

    for desc in file_descriptor.message_types_by_name.values():
        message(desc)
    for enum in file_descriptor.enum_types_by_name.values():
        out[enum.full_name] = {v.name: v.number for v in enum.values}
    for service in file_descriptor.services_by_name.values():
        out[service.full_name] = {
            m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods
        }
    return out


@pytest.fixture(scope="module")
def katib(tmp_path_factory) -> dict:
    if importlib.util.find_spec("kubeflow") is None:
        pytest.fail("kubeflow-katib is not installed (scripts/test.sh installs it with --no-deps)")
    helper = tmp_path_factory.mktemp("describe")
    source = inspect.getsource(describe)
    (helper / "describe_descriptors.py").write_text(source)
    out = subprocess.run(
        [sys.executable, "-c", DESCRIBE, str(helper)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def test_package_and_service_names():
    assert api_pb2.DESCRIPTOR.package == "api.v1.beta1"
    service = api_pb2.DESCRIPTOR.services_by_name["Suggestion"]
    assert service.full_name == "api.v1.beta1.Suggestion"
    assert {m.name for m in service.methods} == {"GetSuggestions", "ValidateAlgorithmSettings"}


def test_every_declared_message_matches_katib(katib):
    ours = describe(api_pb2.DESCRIPTOR)
    assert len(ours) > 30
    for name, fields in ours.items():
        assert name in katib, f"{name} is not in Katib's api.proto"
        assert fields == katib[name], f"{name} differs from Katib's"
