"""The source tree is the package as installed, so tools can read it.

pyproject maps top-level folders into `autolfads` (`trainer/` is
`autolfads.trainer`, ...). Editors' "go to definition", mypy and `python -m
autolfads` from the repository root read the source tree, not setuptools'
editable import hook, so `autolfads/` carries one relative link per mapped
folder. These tests fail when a mapped folder gains no link, a link points
elsewhere than pyproject says, or a package is left out of pyproject.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]


def _mapped_folder(package: str, mapping: dict[str, str]) -> Path:
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return REPO / mapping[prefix] / Path(*parts[cut:])
    return REPO / Path(*parts)


def test_every_mapped_package_is_reachable_through_the_source_tree():
    setup = _setuptools()
    for package in setup["packages"]:
        in_tree = REPO / Path(*package.split("."))
        mapped = _mapped_folder(package, setup["package-dir"])
        assert in_tree.is_dir(), f"{package}: no folder or link at {in_tree.relative_to(REPO)}"
        assert in_tree.resolve() == mapped.resolve(), f"{package}: link points away from pyproject"
        assert (in_tree / "__init__.py").is_file(), f"{package}: no __init__.py"


def test_links_are_relative_so_a_clone_anywhere_works():
    links = [p for p in (REPO / "autolfads").rglob("*") if p.is_symlink()]
    assert len(links) >= len(_setuptools()["package-dir"]) - 1  # all but autolfads itself
    for link in links:
        target = link.readlink()
        assert not target.is_absolute(), f"{link.relative_to(REPO)} -> {target}"


def test_every_package_folder_is_declared_in_pyproject():
    """A new subpackage missing from pyproject would work here and be absent
    from the wheel; catch it where it is made."""
    declared = {
        _mapped_folder(p, _setuptools()["package-dir"]).resolve() for p in _setuptools()["packages"]
    }
    roots = [REPO / d for d in ("autolfads", "trainer", "coordinator", "storage", "katib")]
    for root in roots:
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts or any(
                p.is_symlink() for p in init.parents if p != REPO
            ):
                continue
            assert init.parent.resolve() in declared, (
                f"{init.parent.relative_to(REPO)} not in pyproject packages"
            )


def test_the_source_tree_imports_without_the_installed_package(tmp_path):
    """Only the repository root on the path, no editable hook: every subpackage
    and a deep module still import (what an editor and mypy rely on)."""
    code = (
        "import sys, importlib.util\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "import autolfads.coordinator.search.policy as p, autolfads.storage.keys as k\n"
        "import autolfads.trainer.data.synth as s, autolfads.pbt.v1.coordinator_pb2 as pb\n"
        "print(p.__file__); print(s.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == str(REPO / "autolfads/coordinator/search/policy.py")
    assert out[1] == str(REPO / "autolfads/trainer/data/synth.py")
