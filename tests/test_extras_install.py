"""Every optional extra carries what its commands import.

pyproject.toml's extras and `autolfads.extras.EXTRAS` must agree; then each
extra is installed ALONE into a fresh virtual environment (uv, offline, from
the wheels `scripts/test.sh` downloads into .cache/wheelhouse and a wheel of
this checkout) and its commands' happy path runs there, while the commands of
the extras it lacks answer with one line naming the extra to install.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

from autolfads.extras import EXTRAS

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
EXAMPLE = REPO / "examples" / "tiny_search.yaml"
RUN = "tiny-search"


def declared_extras() -> dict[str, list[str]]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    return {name: reqs for name, reqs in extras.items() if name != "dev"}


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_extras_table_matches_pyproject() -> None:
    declared = declared_extras()
    assert sorted(declared) == sorted(EXTRAS)
    providers = importlib.metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        names = {requirement_name(r) for r in declared[extra]}
        for module in modules:
            dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
            assert dists & names, f"extra {extra!r} imports {module} but does not require {dists}"


# ---- each extra alone in a fresh environment ---------------------------------


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.fail(f"no wheels in {WHEELHOUSE}: run ./scripts/test.sh, which downloads them")
    out = tmp_path_factory.mktemp("wheel")
    # An isolated, offline build (its setuptools and wheel are in the wheelhouse
    # too): the wheel does not depend on what the test environment happens to hold.
    subprocess.run(
        [uv(), "build", "-q", "--wheel", "--offline", "--no-index", "--find-links",
         str(WHEELHOUSE), "--out-dir", str(out), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def uv() -> str:
    # Installed beside the interpreter running the tests (a virtual
    # environment's python may be run without its bin/ on PATH).
    found = shutil.which("uv", path=sysconfig.get_path("scripts")) or shutil.which("uv")
    assert found, "uv is in the dev extra: run ./scripts/test.sh"
    return found


class Env:
    """A virtual environment with autolfads and one extra (or none)."""

    def __init__(self, root: Path, extra: str | None, wheels: Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        subprocess.run([uv(), "venv", "-q", "-p", sys.executable, str(root / "venv")], check=True)
        target = f"autolfads[{extra}]" if extra else "autolfads"
        subprocess.run(
            [uv(), "pip", "install", "-q", "--python", str(self.bin / "python"), "--offline",
             "--no-index", "--find-links", str(WHEELHOUSE), "--find-links", str(wheels), target],
            check=True, capture_output=True,
        )  # fmt: skip

    def autolfads(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AUTOLFADS_"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(
            [str(self.bin / "autolfads"), *args],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def imports(self, module: str) -> bool:
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        return subprocess.run([str(self.bin / "python"), "-c", code]).returncode == 0


def one_line_naming(proc: subprocess.CompletedProcess[str], extra: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"'{extra}' extra" in lines[0] and f"autolfads[{extra}]" in lines[0]
    return lines[0]


def workspace(root: Path) -> Path:
    (root / "cfg").mkdir(parents=True)
    shutil.copy(EXAMPLE, root / "cfg" / "tiny.yaml")
    return root / "cfg" / "tiny.yaml"


def listing(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.fixture(scope="module")
def trained(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer extra alone: the whole search runs, the report is refused
    up front (one line, nothing created) unless --no-report is given."""
    env = Env(tmp_path_factory.mktemp("trainer-env"), "trainer", wheels)
    assert env.imports("torch") and not env.imports("matplotlib")
    root = tmp_path_factory.mktemp("trainer-run")
    config = workspace(root)
    before = listing(root)
    refused = env.autolfads("run", str(config), cwd=root)
    message = one_line_naming(refused, "report")
    assert "--no-report" in message
    assert listing(root) == before
    # Without the ray extra, --ray names it before anything is created.
    no_ray = env.autolfads("run", str(config), "--no-report", "--ray", "auto", cwd=root)
    one_line_naming(no_ray, "ray")
    assert listing(root) == before
    done = env.autolfads(
        "run", str(config), "--no-report", "--workers", "1", "--threads", "1",
        "--progress", "quiet", cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "runs" / RUN / "best" / "metrics.json").is_file()
    assert "not built (--no-report)" in done.stdout
    assert not (root / "runs" / RUN / "best" / "report").exists()
    return root


@pytest.mark.slow
def test_trainer_extra_runs_a_search_without_the_report(trained: Path) -> None:
    assert (root_best := trained / "runs" / RUN / "best").is_dir()
    assert list(root_best.glob("lfads_output_*.h5"))


@pytest.mark.slow
def test_report_extra_builds_the_report_of_a_finished_run(
    trained: Path, wheels: Path, tmp_path: Path
) -> None:
    env = Env(tmp_path / "env", "report", wheels)
    assert env.imports("matplotlib") and not env.imports("torch")
    proc = env.autolfads("report", str(trained / "runs" / RUN), cwd=trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = trained / "runs" / RUN / "best" / "report" / "index.html"
    assert html.read_text().startswith("<!DOCTYPE html>")
    # Without torch, the trainer's commands say which extra they need.
    one_line_naming(
        env.autolfads("train", str(trained / "cfg" / "tiny.yaml"), cwd=trained), "trainer"
    )


@pytest.mark.slow
def test_argo_extra_renders_and_validates(wheels: Path, tmp_path: Path) -> None:
    env = Env(tmp_path / "env", "argo", wheels)
    config = workspace(tmp_path)
    proc = env.autolfads(
        "argo", "render", str(config), "--storage", "s3://bucket/runs", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kind: Workflow" in proc.stdout
    checked = env.autolfads("argo", "validate", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-3000:]


@pytest.mark.slow
def test_nwb_extra_converts_a_recording(wheels: Path, tmp_path: Path) -> None:
    from nwb_fixtures import make_maze_truth, write_maze_nwb

    env = Env(tmp_path / "env", "nwb", wheels)
    assert env.imports("pynwb") and not env.imports("torch")
    nwb = write_maze_nwb(
        tmp_path / "maze.nwb", make_maze_truth(n_trials=40, n_units=8, n_heldout=2)
    )
    out = tmp_path / "maze.h5"
    proc = env.autolfads(
        "data", "from-nwb", str(nwb), "--out", str(out), "--preset", "mc_maze", "--bin-ms", "20",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    checked = env.autolfads("data", "check", str(out), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-3000:]


@pytest.mark.slow
def test_base_install_stages_and_names_the_extras_it_lacks(wheels: Path, tmp_path: Path) -> None:
    env = Env(tmp_path / "env", None, wheels)
    work = tmp_path / "work"
    config = workspace(work)
    assert env.autolfads("--version", cwd=work).returncode == 0
    staged = env.autolfads("stage", str(config), "--storage", str(work / "runs"), cwd=work)
    assert staged.returncode == 0, staged.stderr[-3000:]
    assert (work / "runs" / RUN / "config.yaml").is_file()
    before = listing(work)
    for args, extra in (
        (["run", str(config)], "trainer"),
        (["train", str(config)], "trainer"),
        (["report", str(work / "runs" / RUN)], "report"),
        (["argo", "render", str(config), "--storage", "s3://b/runs"], "argo"),
        (["argo", "validate"], "argo"),
        (["data", "from-nwb", "x.nwb", "--out", "x.h5"], "nwb"),
    ):
        one_line_naming(env.autolfads(*args, cwd=work), extra)
    assert listing(work) == before


@pytest.mark.slow
def test_ray_extra_installs_alone(wheels: Path, tmp_path: Path) -> None:
    # Ray's wheels resolve offline from the wheelhouse; the search itself still
    # needs the trainer extra, and says so before touching the cluster.
    env = Env(tmp_path / "env", "ray", wheels)
    assert env.imports("ray") and not env.imports("torch")
    work = tmp_path / "work"
    config = workspace(work)
    before = listing(work)
    one_line_naming(env.autolfads("run", str(config), "--ray", "auto", cwd=work), "trainer")
    assert listing(work) == before
