"""The suggestion service ships in the coordinator image: its code is copied
into the image build, and importing it pulls in neither torch nor a
Kubernetes client (the coordinator image has neither)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent


def test_dockerfile_copies_every_package_folder():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {path.split("/")[0] for path in project["tool"]["setuptools"]["package-dir"].values()}
    dockerfile = (REPO / "Dockerfile").read_text()
    for folder in folders:
        assert f"COPY {folder} " in dockerfile or f"COPY {folder}/" in dockerfile, folder


def test_suggestion_service_needs_no_torch_and_no_kubernetes_client():
    # Building the whole CLI parser counts too: every image builds it.
    code = (
        "import sys; import autolfads.katib.serve, autolfads.katib.trial; "
        "from autolfads.cli import build_parser; build_parser(); "
        "bad = sorted(m for m in ('torch', 'kubernetes', 'hera', 'kubernetes_validate') "
        "if m in sys.modules); print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
