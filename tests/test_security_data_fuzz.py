"""Hostile data files: `load_lfads_h5` raises one DataError line, never anything else.

A data file may come from anyone (a colleague, a download, a bucket other
people can write). Truncated or corrupted HDF5, random bytes, wrong dtypes,
NaN/Inf, negative counts, mismatched shapes, gigantic declared shapes and
datasets whose bytes live in other files must all end in a `DataError` that
names the file, without reading outside it or allocating the declared size;
`autolfads run` / `train` on such a file print one line and create nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autolfads.cli import main
from autolfads.errors import DataError
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import load_lfads_h5, write_lfads_h5
from autolfads.trainer.data.synth import make_synthetic

FUZZ = settings(
    max_examples=int(os.environ.get("AUTOLFADS_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TINY = {
    "n_conditions": 4,
    "n_replications": 4,
    "n_neurons": 6,
    "n_heldout": 2,
    "n_bins": 8,
    "n_fp_bins": 2,
}


def _good_bytes() -> bytes:
    buf = io.BytesIO()
    write_lfads_h5(make_synthetic("chaotic-rnn", seed=0, **TINY), buf)
    return buf.getvalue()


GOOD = _good_bytes()
with h5py.File(io.BytesIO(GOOD), "r") as _f:
    GOOD_ARRAYS = {key: np.asarray(_f[key][()]) for key in _f}


def check_outcome(source: str | Path | bytes) -> LfadsData | None:
    """The contract: valid data, or a one-line DataError naming the source."""
    try:
        data = load_lfads_h5(source)
    except DataError as err:
        message = str(err)
        assert "\n" not in message and len(message) < 600, message[:300]
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        assert message.startswith(name), message
        return None
    for split in data.splits().values():
        assert np.isfinite(split.encod_data).all() and (split.encod_data >= 0).all()
    return data


def expect_data_error(source: str | Path | bytes) -> str:
    try:
        load_lfads_h5(source)
    except DataError as err:
        assert "\n" not in str(err)
        return str(err)
    raise AssertionError("hostile data file was accepted")


def test_the_unmutated_file_loads() -> None:
    # Guards the fuzzers: each mutation below starts from a valid file.
    data = check_outcome(GOOD)
    assert data is not None and data.train.n_trials > 0 and data.heldout_dim == 2


# ---- byte-level hostility ------------------------------------------------------


@FUZZ
@given(st.data())
def test_truncated_files_are_a_data_error(data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(GOOD) - 1))
    expect_data_error(GOOD[:cut])


@FUZZ
@given(st.binary(max_size=4096), st.booleans())
def test_random_bytes_are_a_data_error(blob: bytes, with_signature: bool) -> None:
    # With the HDF5 signature first, the parser goes further before failing.
    expect_data_error((b"\x89HDF\r\n\x1a\n" if with_signature else b"") + blob)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=16)), max_size=8
    )
)
def test_corrupted_bytes_are_valid_data_or_a_data_error(patches: list[tuple[int, bytes]]) -> None:
    blob = bytearray(GOOD)
    for pos, chunk in patches:
        blob[pos : pos + len(chunk)] = chunk
    check_outcome(bytes(blob[: len(GOOD)]))


def test_non_files_are_a_data_error(tmp_path: Path) -> None:
    for source in (tmp_path, tmp_path / "missing.h5", "/dev/zero", "x" * 5000):
        assert "not found" in expect_data_error(source)
    text = tmp_path / "notes.txt"
    text.write_text("train_encod_data = [1, 2, 3]\n")
    assert "not an HDF5 file" in expect_data_error(text)


# ---- structured hostility: one dataset replaced ---------------------------------

Mutation = Callable[[h5py.File, str, np.ndarray, Path], None]


def huge_shape(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    # Chunked with nothing written: a few hundred bytes on disk, ~4 TiB declared.
    f.create_dataset(key, shape=(2**20, 2**10, 2**10), dtype="f4", chunks=(1, 1, 1024))


def string_dtype(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_dataset(key, data=np.full(arr.shape or (1,), b"spikes"))


def vlen_strings(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_dataset(key, data=["a", "bb", "ccc"], dtype=h5py.string_dtype())


def complex_dtype(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_dataset(key, data=arr.astype(np.complex64))


def compound_dtype(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_dataset(key, data=np.zeros(arr.shape or (1,), dtype=[("a", "i4"), ("b", "f4")]))


def group(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_group(key).create_dataset("inner", data=arr)


def dangling_link(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f[key] = h5py.SoftLink("/nowhere/at/all")


def external_link(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    # A link to a real, readable HDF5 file elsewhere: must not be followed.
    other = folder / "elsewhere.h5"
    with h5py.File(other, "w") as g:
        g.create_dataset("x", data=arr)
    f[key] = h5py.ExternalLink(str(other), "/x")


def external_storage(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    # Raw bytes from another file (could be /proc/self/environ): must not be read.
    secret = folder / "secret.bin"
    secret.write_bytes(np.ones(64, "u1").tobytes())
    f.create_dataset(key, shape=(64,), dtype="u1", external=[(str(secret), 0, 64)])


def virtual_dataset(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    other = folder / "source.h5"
    with h5py.File(other, "w") as g:
        g.create_dataset("x", data=arr)
    layout = h5py.VirtualLayout(shape=arr.shape, dtype=arr.dtype)
    layout[...] = h5py.VirtualSource(str(other), "x", shape=arr.shape)
    f.create_virtual_dataset(key, layout)


def unreadable_filter(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    # One chunk stored as if compressed by a filter no HDF5 build here has
    # (32017 is unassigned), so reading it must fail.
    data = np.ascontiguousarray(arr.reshape(arr.shape or (1,)))
    dset = f.create_dataset(
        key,
        shape=data.shape,
        dtype=data.dtype,
        chunks=data.shape,
        compression=32017,
        allow_unknown_filter=True,
    )
    dset.id.write_direct_chunk((0,) * data.ndim, data.tobytes(), filter_mask=0)


def null_dataspace(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_dataset(key, data=h5py.Empty("f4"))


def empty(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_dataset(key, shape=(0, *arr.shape[1:]), dtype=arr.dtype)


def extra_rank(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_dataset(key, data=np.broadcast_to(arr[..., None, None], (*arr.shape, 2, 2)))


def nan_values(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    bad = arr.astype(np.float32).copy()
    bad.flat[0] = np.nan
    f.create_dataset(key, data=bad)


def inf_values(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    bad = arr.astype(np.float64).copy()
    bad.flat[-1] = 1e300  # finite in the file, infinite once cast to float32
    f.create_dataset(key, data=bad)


def negative_values(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    bad = arr.astype(np.float32).copy()
    bad.flat[0] = -3.0
    f.create_dataset(key, data=bad)


def fractional_values(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    bad = arr.astype(np.float32).copy()
    bad.flat[0] += 0.5
    f.create_dataset(key, data=bad)


def fewer_trials(f: h5py.File, key: str, arr: np.ndarray, folder: Path) -> None:
    f.create_dataset(key, data=arr[:-1])


COUNTS = ["train_encod_data", "train_recon_data", "valid_encod_data", "valid_recon_data"]
PER_TRIAL = [
    f"{s}_{k}" for s in ("train", "valid") for k in ("truth", "behavior", "cond_idx", "inds")
]
ALL_KEYS = sorted(GOOD_ARRAYS)
# Which keys each mutation must be refused for (some are legal elsewhere:
# behaviour may hold NaN, true rates need not be whole numbers).
MUTATIONS: dict[Mutation, list[str]] = {
    huge_shape: ALL_KEYS,
    string_dtype: ALL_KEYS,
    vlen_strings: ALL_KEYS,
    complex_dtype: ALL_KEYS,
    compound_dtype: ALL_KEYS,
    group: ALL_KEYS,
    dangling_link: ALL_KEYS,
    external_link: ALL_KEYS,
    external_storage: ALL_KEYS,
    virtual_dataset: ALL_KEYS,
    unreadable_filter: ALL_KEYS,
    null_dataspace: ALL_KEYS,
    empty: ALL_KEYS,
    extra_rank: ALL_KEYS,
    nan_values: [*COUNTS, "train_truth", "valid_truth"],
    inf_values: [*COUNTS, "train_truth", "valid_truth", "psth", "train_behavior"],
    negative_values: [*COUNTS, "train_truth", "valid_truth"],
    fractional_values: [*COUNTS, "train_cond_idx"],
    fewer_trials: [*COUNTS, *PER_TRIAL],
}
CASES = [(m, key) for m, keys in MUTATIONS.items() for key in keys]


def mutated_file(folder: Path, mutation: Mutation, key: str) -> Path:
    path = folder / "data.h5"
    path.write_bytes(GOOD)
    with h5py.File(path, "a") as f:
        del f[key]
        mutation(f, key, GOOD_ARRAYS[key], folder)
    return path


def test_every_key_of_the_file_is_covered() -> None:
    assert set(ALL_KEYS) >= set(COUNTS) | set(PER_TRIAL) | {"psth", "conversion_factor"}


@pytest.mark.parametrize(("mutation", "key"), CASES, ids=[f"{m.__name__}-{k}" for m, k in CASES])
def test_each_hostile_dataset_is_a_data_error(tmp_path: Path, mutation: Mutation, key: str) -> None:
    path = mutated_file(tmp_path, mutation, key)
    message = expect_data_error(path)
    assert message.startswith(str(path))


@FUZZ
@given(st.lists(st.sampled_from(CASES), min_size=2, max_size=4, unique_by=lambda c: c[1]))
def test_several_hostile_datasets_at_once(tmp_path: Path, cases: list) -> None:
    path = tmp_path / "data.h5"
    path.write_bytes(GOOD)
    with h5py.File(path, "a") as f:
        for mutation, key in cases:
            del f[key]
            mutation(f, key, GOOD_ARRAYS[key], tmp_path)
    expect_data_error(path)


def test_links_and_external_bytes_are_never_followed(tmp_path: Path) -> None:
    message = expect_data_error(mutated_file(tmp_path, external_link, "train_encod_data"))
    assert "another file" in message
    message = expect_data_error(mutated_file(tmp_path, external_storage, "train_encod_data"))
    assert "other files" in message
    message = expect_data_error(mutated_file(tmp_path, virtual_dataset, "valid_recon_data"))
    assert "other files" in message


def test_gigantic_declared_shape_is_refused_before_allocation(tmp_path: Path) -> None:
    path = mutated_file(tmp_path, huge_shape, "train_encod_data")
    assert path.stat().st_size < 1024 * 1024  # the file itself is tiny
    tracemalloc.start()
    try:
        message = expect_data_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "declared shape" in message and "GiB" in message
    assert peak < 32 * 1024 * 1024  # nowhere near the 4 TiB declared


@pytest.mark.parametrize(
    "value",
    [np.nan, np.inf, -1, 1.5, 1e30, "two", np.array([1, 2]), np.zeros((40, 40))],
    ids=["nan", "inf", "negative", "fraction", "huge", "string", "pair", "matrix"],
)
def test_legacy_layout_with_hostile_held_out_sizes(tmp_path: Path, value: object) -> None:
    path = tmp_path / "legacy.h5"
    counts = GOOD_ARRAYS["train_recon_data"]
    with h5py.File(path, "w") as f:
        f.create_dataset("train_data", data=counts)
        f.create_dataset("valid_data", data=GOOD_ARRAYS["valid_recon_data"])
        f.attrs["heldout_dim"] = value
    message = expect_data_error(path)
    assert "heldout_dim" in message and len(message) < 300


# ---- the CLI: one line, and no run -----------------------------------------------

CLI_FILES: dict[str, Callable[[Path], object]] = {
    "truncated": lambda p: p.write_bytes(GOOD[: len(GOOD) // 2]),
    "random bytes": lambda p: p.write_bytes(os.urandom(4096)),
    "nan counts": lambda p: shutil.copy(mutated_file(p.parent, nan_values, "train_encod_data"), p),
    "huge shape": lambda p: shutil.copy(mutated_file(p.parent, huge_shape, "valid_recon_data"), p),
    "external link": lambda p: shutil.copy(
        mutated_file(p.parent, external_link, "train_recon_data"), p
    ),
}
CONFIG = """name: hostile
data: {path: ../data/hostile.h5}
model: {ic_enc_dim: 4, ci_enc_dim: 4, con_dim: 4, co_dim: 1, ic_dim: 4, gen_dim: 4, fac_dim: 4}
training: {batch_size: 8, l2_increase_epochs: 1, kl_increase_epochs: 1}
pbt: {population: 2, burn_in_epochs: 2, generation_epochs: 1, max_generations: 1}
"""


def workspace(root: Path, kind: str) -> Path:
    (root / "cfg").mkdir()
    (root / "data").mkdir()
    config = root / "cfg" / "hostile.yaml"
    config.write_text(CONFIG)
    data = root / "data" / "hostile.h5"
    CLI_FILES[kind](data)
    (root / "data" / "data.h5").unlink(missing_ok=True)  # the helpers' scratch copy
    return config


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("command", ["run", "train"])
@pytest.mark.parametrize("kind", sorted(CLI_FILES))
def test_cli_on_hostile_data_prints_one_line_and_creates_no_run(
    command: str,
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = workspace(tmp_path, kind)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    extra = ["--workers", "1", "--progress", "quiet"] if command == "run" else ["--quiet"]
    code = main([command, str(config), *extra])
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), err[:500]
    assert "hostile.h5" in lines[0]
    assert snapshot(tmp_path) == before  # no runs/ folder, no output, nothing touched


def test_run_on_hostile_data_in_a_real_process(tmp_path: Path) -> None:
    config = workspace(tmp_path, "truncated")
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "autolfads", "run", str(config), "--workers", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[:500]
    assert lines[0].startswith("autolfads: error: ") and "hostile.h5" in lines[0]
    assert snapshot(tmp_path) == before
