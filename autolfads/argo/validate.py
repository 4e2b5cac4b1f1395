"""Strict offline validation of the deploy manifests (Argo and core Kubernetes).

Three layers, so that nothing passes silently:

1. Argo kinds are validated against hera's generated Argo models. Those models
   drop unknown keys without complaint, so the input is compared with the
   model's own dump and every key the model did not keep is an error.
2. Core kinds go to kubernetes-validate in strict mode (unknown keys are
   errors). A kind it has no schema for is an error, never a pass.
3. Semantic checks the schemas cannot express: the entrypoint and every
   referenced template, task and parameter exist; enums hold; resource
   manifests embedded in templates validate as Kubernetes objects.

Every function returns a list of one-line problems ("" never appears); an
empty list means valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
from hera.workflows import models as argo_models
from pydantic import BaseModel, ValidationError

from autolfads.argo import semantics
from autolfads.argo.manifests import ManifestError, load_documents

K8S_VERSION = "1.30.0"
ARGO_MODELS: dict[str, type[BaseModel]] = {
    "Workflow": argo_models.Workflow,
    "WorkflowTemplate": argo_models.WorkflowTemplate,
    "ClusterWorkflowTemplate": argo_models.ClusterWorkflowTemplate,
    "CronWorkflow": argo_models.CronWorkflow,
}
KUSTOMIZE_KEYS = frozenset(
    {
        "apiVersion",
        "kind",
        "metadata",
        "namespace",
        "namePrefix",
        "nameSuffix",
        "labels",
        "commonLabels",
        "commonAnnotations",
        "resources",
        "components",
        "patches",
        "images",
        "replicas",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
    }
)


class DeployValidationError(ManifestError):
    """A deploy manifest failed validation."""


def dropped_keys(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths of keys in `given` that the model's dump `kept` no longer has."""
    problems: list[str] = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in kept:
                problems.append(f"{where}: unknown field")
            else:
                problems.extend(dropped_keys(value, kept[key], where))
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept, strict=False)):
            problems.extend(dropped_keys(a, b, f"{path}[{i}]"))
    return problems


def validate_argo_schema(obj: dict[str, Any]) -> list[str]:
    """Schema check of an Argo object with unknown fields treated as errors."""
    model = ARGO_MODELS.get(obj.get("kind", ""))
    if model is None:
        return [f"kind {obj.get('kind')!r}: no Argo schema for this kind"]
    try:
        parsed = model.model_validate(obj)
    except ValidationError as err:
        return [
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        ]
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return dropped_keys(obj, kept)


def validate_k8s_object(obj: dict[str, Any], version: str = K8S_VERSION) -> list[str]:
    """kubernetes-validate in strict mode; no schema is a failure."""
    kind = obj.get("kind")
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"kind {kind!r} ({obj.get('apiVersion')}): no Kubernetes schema for this kind"]
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        return [f"{where}: {err.message}"]
    except kubernetes_validate.InvalidSchemaError as err:
        return [f"kind {kind!r}: unusable schema ({err})"]
    return []


def validate_kustomization(obj: dict[str, Any], base: Path) -> list[str]:
    """Kustomize files are not API objects; check keys and that resources exist."""
    problems = [f"{key}: unknown field" for key in obj if key not in KUSTOMIZE_KEYS]
    for entry in obj.get("resources", []):
        target = base / entry
        if target.is_dir():
            if not (target / "kustomization.yaml").is_file():
                problems.append(f"resources: {entry} is a folder without kustomization.yaml")
        elif not target.is_file():
            problems.append(f"resources: {entry} does not exist")
    return problems


def validate_object(
    obj: dict[str, Any],
    *,
    templates: dict[str, dict[str, Any]] | None = None,
    base: Path | None = None,
) -> list[str]:
    """All problems of one manifest; `templates` maps WorkflowTemplate names
    to their objects so that references can be resolved."""
    api = str(obj.get("apiVersion", ""))
    if not api or "kind" not in obj:
        return ["(top level): apiVersion and kind are required"]
    if api.startswith("kustomize.config.k8s.io/"):
        return validate_kustomization(obj, base or Path("."))
    if api.startswith("argoproj.io/"):
        problems = validate_argo_schema(obj)
        if problems:
            return problems
        return semantics.check_argo_object(obj, templates or {}, validate_k8s_object)
    return validate_k8s_object(obj)


def yaml_files(paths: list[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"}))
        elif path.exists():
            found.append(path)
        else:
            raise DeployValidationError(f"{path}: no such file or folder")
    return found


def validate_paths(paths: list[str | Path]) -> list[str]:
    """Problems of every YAML file under `paths`, each as 'file: doc N: problem'."""
    files = yaml_files(paths)
    loaded: list[tuple[Path, list[dict[str, Any]]]] = []
    problems: list[str] = []
    for path in files:
        try:
            loaded.append((path, load_documents(path)))
        except ManifestError as err:
            problems.append(str(err))
    # WorkflowTemplates first, so Workflows in other files can reference them.
    templates = {
        doc["metadata"]["name"]: doc
        for _, docs in loaded
        for doc in docs
        if doc.get("kind") == "WorkflowTemplate" and "name" in doc.get("metadata", {})
    }
    for path, docs in loaded:
        if not docs:
            problems.append(f"{path}: no YAML documents")
        for i, doc in enumerate(docs):
            for problem in validate_object(doc, templates=templates, base=path.parent):
                problems.append(f"{path}: doc {i + 1} ({doc.get('kind')}): {problem}")
    return problems


def check_paths(paths: list[str | Path]) -> int:
    """Raise DeployValidationError naming the first problem; return the file count."""
    problems = validate_paths(paths)
    if problems:
        more = f" [+{len(problems) - 1} more problem(s)]" if len(problems) > 1 else ""
        raise DeployValidationError(problems[0] + more)
    return len(yaml_files(paths))
