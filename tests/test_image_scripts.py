"""The image scripts' bad-input paths, run for real (a few seconds, no builds).

scripts/build-images.sh and scripts/test-images.sh must answer a missing build
tool, base image, torch source or image with one line on stderr that names
what to pass, and a non-zero exit, before building or running anything. The
builds and the smoke test themselves take minutes and need buildah or docker:
they are documented in deploy/argo/README.md, not run here.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "scripts" / "build-images.sh"
TEST = REPO / "scripts" / "test-images.sh"
BASE = REPO / "scripts" / "make-base-image.sh"
TOOLS = {"docker", "buildah", "podman"}
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    """A PATH folder with this machine's commands except docker, buildah and podman."""
    out = tmp_path / "bin"
    out.mkdir()
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/local/bin", "/usr/bin", "/bin"]
    for folder in dirs:
        if not folder or not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            link = out / entry.name
            if entry.name in TOOLS or link.exists() or link.is_symlink():
                continue
            link.symlink_to(entry)
    return out


def stub(bindir: Path, name: str, body: str) -> None:
    """A fake `name` command: a bash script with `body`."""
    path = bindir / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def run(script: Path, bindir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": str(bindir), "HOME": str(bindir.parent), "LANG": "C.UTF-8"}
    assert BASH is not None  # the module is skipped without bash
    return subprocess.run(
        [BASH, str(script), *args], env=env, capture_output=True, text=True, timeout=60
    )


def one_line_error(proc: subprocess.CompletedProcess, prefix: str, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"{prefix}: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple"


@pytest.mark.parametrize("script", [BUILD, TEST, BASE])
def test_help(script, bindir):
    proc = run(script, bindir, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: scripts/")


@pytest.mark.parametrize("script", [BUILD, TEST, BASE])
def test_unknown_argument(script, bindir):
    proc = run(script, bindir, "--bogus")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].endswith("unknown argument '--bogus' (see --help)")


def test_build_without_any_build_tool(bindir):
    proc = run(BUILD, bindir, "--targets", "coordinator")
    one_line_error(proc, "build-images", "no build tool", "buildah", "--tool")


def test_build_with_docker_but_no_engine(bindir):
    stub(bindir, "docker", 'echo "Cannot connect to the Docker daemon" >&2; exit 1')
    proc = run(BUILD, bindir, "--targets", "coordinator")
    one_line_error(proc, "build-images", "engine does not answer", "install buildah")


def test_build_with_a_missing_base_image(bindir):
    stub(
        bindir,
        "buildah",
        'case "$1" in\n'
        '  inspect) echo "Error: nope:1: image not known" >&2; exit 125 ;;\n'
        '  pull) echo "Error: initializing source docker://nope:1: manifest unknown" >&2;'
        " exit 125 ;;\n"
        '  *) echo "unexpected buildah $*" >&2; exit 99 ;;\n'
        "esac",
    )
    proc = run(BUILD, bindir, "--targets", "coordinator", "--base", "nope:1")
    line = one_line_error(proc, "build-images", "base image 'nope:1'", "--base IMAGE")
    assert "manifest unknown" in line and "make-base-image.sh" in line


def test_build_with_a_torch_folder_without_a_wheel(bindir, tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    (empty / "numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")
    proc = run(BUILD, bindir, "--targets", "trainer-cpu", "--torch-wheels", str(empty))
    one_line_error(proc, "build-images", "holds no torch-", "--torch-index URL")


def test_build_cuda_from_a_cpu_wheel_is_refused(bindir, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    proc = run(BUILD, bindir, "--torch-wheels", str(wheels))
    one_line_error(proc, "build-images", "only a CPU build", "trainer-cuda")


def test_build_with_two_torch_sources(bindir, tmp_path):
    proc = run(
        BUILD, bindir, "--torch-wheels", str(tmp_path), "--torch-index", "https://x.example/cpu"
    )
    one_line_error(proc, "build-images", "--torch-wheels DIR or --torch-index URL")


def test_build_with_a_file_torch_index(bindir):
    proc = run(BUILD, bindir, "--targets", "trainer-cpu", "--torch-index", "file:///opt/wheels")
    one_line_error(proc, "build-images", "not an http(s) URL", "--torch-wheels DIR")


@pytest.mark.skipif(shutil.which("curl") is None, reason="the reachability probe uses curl")
def test_build_with_an_unreachable_torch_index(bindir):
    url = closed_port_url()
    proc = run(BUILD, bindir, "--targets", "trainer-cpu", "--torch-index", url)
    one_line_error(proc, "build-images", f"{url}/torch/ is not reachable", "--torch-wheels DIR")


def test_build_with_an_unknown_target(bindir):
    proc = run(BUILD, bindir, "--targets", "coordinator,gpu")
    one_line_error(proc, "build-images", "unknown target 'gpu'", "--targets")


def test_build_option_without_value(bindir):
    proc = run(BUILD, bindir, "--base")
    one_line_error(proc, "build-images", "--base needs a value")


def test_smoke_test_without_any_container_tool(bindir):
    proc = run(TEST, bindir)
    one_line_error(proc, "test-images", "no container tool", "--tool")


def test_smoke_test_with_images_not_built(bindir):
    stub(bindir, "docker", 'echo "Error: No such image: $*" >&2; exit 1')
    proc = run(TEST, bindir, "--tool", "docker", "--tag", "never-built")
    one_line_error(
        proc,
        "test-images",
        "autolfads-coordinator:never-built is not in docker's storage",
        "scripts/build-images.sh",
    )


def test_smoke_test_with_a_python_outside_this_checkout(bindir, tmp_path):
    stub(bindir, "docker", "exit 0")  # every image "exists"
    fake = tmp_path / "python"
    fake.write_text(f"#!{BASH}\nexit 1\n")
    fake.chmod(0o755)
    proc = run(TEST, bindir, "--tool", "docker", "--python", str(fake))
    one_line_error(proc, "test-images", "cannot import autolfads", "--python PATH")


def test_base_image_without_debootstrap_or_root(bindir):
    for name in ("debootstrap", "buildah"):
        (bindir / name).unlink(missing_ok=True)
    proc = run(BASE, bindir)
    needle = "debootstrap not found" if os.geteuid() == 0 else "needs root"
    one_line_error(proc, "make-base-image", needle)


def test_dockerfile_torch_source_defaults_to_the_pytorch_index():
    """Without a torch source, `docker build` elsewhere behaves as before."""
    text = (REPO / "Dockerfile").read_text()
    assert "FROM scratch AS torch-wheels" in text  # empty unless --build-context
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "https://download.pytorch.org/whl/${CUDA_INDEX}" in text
    assert text.count("--mount=type=bind,from=torch-wheels,target=/torch-wheels") == 2
