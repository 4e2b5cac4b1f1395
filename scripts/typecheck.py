"""Type-check the `autolfads` package (mypy), as it is laid out when installed.

The repository's top-level folders map into the one import name `autolfads`
(pyproject.toml, [tool.setuptools.package-dir]: `trainer/` is
`autolfads.trainer`, ...). A checker cannot see that mapping in the source
tree, so this script lays the package out as a tree of symbolic links in
.cache/typecheck/ (one folder per package, one link per module), runs mypy on
it with pyproject's [tool.mypy] settings, and prints each finding with the
path of the real file. Exit status: mypy's.

    python scripts/typecheck.py            # what ./scripts/test.sh and CI run
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / ".cache" / "typecheck"


def package_dirs() -> dict[str, Path]:
    """Each package of the distribution -> the folder its modules are in."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        setup = tomllib.load(fh)["tool"]["setuptools"]
    mapping: dict[str, str] = setup.get("package-dir", {})
    dirs = {}
    for package in setup["packages"]:
        parts = package.split(".")
        # The longest mapped prefix decides; the rest of the name is folders below it.
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in mapping:
                dirs[package] = REPO / mapping[prefix] / Path(*parts[cut:])
                break
        else:
            dirs[package] = REPO / Path(*parts)
    return dirs


def build_tree() -> dict[str, str]:
    """Lay out the link tree; return link-tree path -> real path prefixes."""
    shutil.rmtree(TREE, ignore_errors=True)
    real_of = {}
    for package, source in package_dirs().items():
        target = TREE / Path(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in [*source.glob("*.py"), *source.glob("*.pyi")]:
            (target / module.name).symlink_to(module)
        real_of[f"{target.relative_to(TREE)}/"] = f"{source.relative_to(REPO)}/"
    return real_of


def main() -> int:
    real_of = build_tree()
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
         "-p", "autolfads"],
        cwd=TREE, capture_output=True, text=True,
    )  # fmt: skip
    # Longest prefixes first: autolfads/trainer/modules/ before autolfads/.
    prefixes = sorted(real_of, key=len, reverse=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        for prefix in prefixes:
            if line.startswith(prefix):
                line = real_of[prefix] + line[len(prefix) :]
                break
        print(line)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
