"""The Argo manifests as data: where they live, how they load, how Argo fills them.

deploy/argo/*.yaml is the single source of truth. It ships as package data
(`autolfads.argo.deploy`), so `render`, `submit` and the local runner read the
same files a person applies with kubectl. This module also reproduces the two
pieces of Argo semantics the rest of the package needs offline:

- `{{...}}` placeholder substitution (Argo's simple template tags), and
- merging a Workflow that uses `workflowTemplateRef` with its template.
"""

from __future__ import annotations

import copy
import importlib.resources
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from autolfads.errors import AutolfadsError

WORKFLOW_TEMPLATE_FILE = "workflowtemplate.yaml"
WORKFLOW_FILE = "workflow.yaml"
ARGO_GROUP = "argoproj.io"
ARGO_VERSION = "v1alpha1"

# Argo's simple tags: {{workflow.parameters.x}}, {{inputs.parameters.y}}, {{item}}.
# Expression tags ({{=...}}) are not used by our manifests and are left alone.
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")


class ManifestError(AutolfadsError):
    """A deploy manifest is missing, unreadable or inconsistent."""


def deploy_dir() -> Path:
    """The folder holding the Argo manifests.

    AUTOLFADS_DEPLOY_DIR overrides the packaged copy, so a user can render
    from an edited checkout of deploy/argo without reinstalling.
    """
    override = os.environ.get("AUTOLFADS_DEPLOY_DIR")
    if override:
        path = Path(override)
        if not (path / WORKFLOW_TEMPLATE_FILE).is_file():
            raise ManifestError(
                f"AUTOLFADS_DEPLOY_DIR={override}: no {WORKFLOW_TEMPLATE_FILE} there"
            )
        return path
    return Path(str(importlib.resources.files("autolfads.argo.deploy")))


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """All YAML documents of a file (empty documents skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ManifestError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ManifestError(f"{path}: not valid YAML{where}") from None
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ManifestError(f"{path}: document {i + 1} is not a mapping")
    return docs


def load_single(path: str | Path) -> dict[str, Any]:
    docs = load_documents(path)
    if len(docs) != 1:
        raise ManifestError(f"{path}: expected exactly one document, found {len(docs)}")
    return docs[0]


def load_workflow_template() -> dict[str, Any]:
    return load_single(deploy_dir() / WORKFLOW_TEMPLATE_FILE)


def load_workflow() -> dict[str, Any]:
    return load_single(deploy_dir() / WORKFLOW_FILE)


def walk_strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (dotted path, string) for every string leaf of a YAML tree."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from walk_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from walk_strings(value, f"{path}[{i}]")


def placeholders(text: str) -> list[str]:
    return PLACEHOLDER.findall(text)


def substitute(obj: Any, lookup: Callable[[str], str | None]) -> Any:
    """A deep copy of `obj` with every `{{name}}` replaced by `lookup(name)`.

    A tag for which `lookup` returns None is kept verbatim, so substitution can
    happen in stages (workflow parameters first, then per-pod values).
    """

    def fill(match: re.Match[str]) -> str:
        value = lookup(match.group(1))
        return match.group(0) if value is None else value

    if isinstance(obj, str):
        return PLACEHOLDER.sub(fill, obj)
    if isinstance(obj, Mapping):
        return {key: substitute(value, lookup) for key, value in obj.items()}
    if isinstance(obj, list):
        return [substitute(value, lookup) for value in obj]
    return obj


def parameter_values(parameters: list[dict[str, Any]] | None) -> dict[str, str]:
    """{name: value} of an `arguments.parameters` list (value, else default)."""
    values: dict[str, str] = {}
    for param in parameters or []:
        value = param.get("value", param.get("default"))
        if value is not None:
            values[param["name"]] = str(value)
    return values


def merge_parameters(
    base: list[dict[str, Any]], override: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Argo's merge of argument lists: same name -> override wins, new ones appended."""
    merged = [copy.deepcopy(p) for p in base]
    index = {p["name"]: i for i, p in enumerate(merged)}
    for param in override:
        if param["name"] in index:
            merged[index[param["name"]]] = {**merged[index[param["name"]]], **param}
        else:
            index[param["name"]] = len(merged)
            merged.append(copy.deepcopy(param))
    return merged


def resolve_workflow(workflow: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """The self-contained Workflow Argo runs for `workflow` (a workflowTemplateRef).

    The template's spec is the base; the Workflow's own spec fields override
    it, and argument parameters merge by name, as the controller does.
    """
    ref = workflow.get("spec", {}).get("workflowTemplateRef")
    if ref is None:
        return copy.deepcopy(workflow)
    name = template.get("metadata", {}).get("name")
    if ref.get("name") != name:
        raise ManifestError(
            f"workflow references WorkflowTemplate {ref.get('name')!r}, but the template "
            f"provided is {name!r}"
        )
    spec = copy.deepcopy(template["spec"])
    for key, value in workflow["spec"].items():
        if key == "workflowTemplateRef":
            continue
        if key == "arguments":
            base = spec.get("arguments", {}).get("parameters", [])
            params = merge_parameters(base, value.get("parameters", []))
            spec["arguments"] = {**spec.get("arguments", {}), **value, "parameters": params}
        else:
            spec[key] = copy.deepcopy(value)
    resolved = copy.deepcopy(workflow)
    resolved["spec"] = spec
    return resolved


def templates_by_name(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in spec.get("templates", []) if "name" in t}
