"""LFADS data files (HDF5): reading, writing and their content hash (numpy + h5py).

Two layouts are read (see `load_lfads_h5`): the lfads-torch one, which
`write_lfads_h5` also writes, and the older AutoLFADS TF2 one. Every dataset
read is checked by `dataset.validate_data` before it is returned, and a file
that does not fit is refused with one line naming the key and the problem.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import h5py
import numpy as np

from autolfads.errors import DataError
from autolfads.trainer.data.dataset import (
    MAX_DATASET_BYTES,
    NWB_KEYS,
    SPLITS,
    LfadsData,
    Split,
    check_rank,
    data_error,
    validate_data,
)

if TYPE_CHECKING:
    from autolfads.storage import DataCache

# --------------------------------------------------------------------------- reading


def _open(source: str | Path | bytes | BinaryIO) -> tuple[h5py.File, str]:
    if isinstance(source, bytes | bytearray):
        handle: str | BinaryIO = io.BytesIO(bytes(source))
        name = "<bytes>"
    elif isinstance(source, str | Path):
        handle = str(source)
        name = str(source)
        try:
            found = Path(source).is_file()
        except (OSError, ValueError):  # e.g. a name too long for the filesystem
            found = False
        if not found:
            raise DataError(f"{name}: data file not found")
    else:
        handle = source
        name = str(getattr(source, "name", "<stream>"))
    try:
        return h5py.File(handle, "r"), name
    except _H5_ERRORS:
        # Not only OSError: a damaged superblock can overflow h5py's size fields.
        raise DataError(f"{name}: not an HDF5 file (or unreadable)") from None


def _dataset(f: h5py.File, source: str, key: str) -> h5py.Dataset:
    """The dataset at `key`, refusing any whose bytes live outside this file.

    HDF5 can point a name at another file (external links), read a dataset's
    bytes from arbitrary files (external storage) or stitch it from others
    (virtual datasets). A data file from someone else could then make us read,
    say, /proc/self/environ into training data, so only self-contained
    datasets are accepted.
    """
    if isinstance(f.get(key, getlink=True), h5py.ExternalLink):
        raise data_error(source, key, "is a link into another file; copy the data into this file")
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise data_error(source, key, "is a group, expected a dataset")
    if node.external or node.is_virtual:
        raise data_error(
            source,
            key,
            "keeps its data in other files (external or virtual dataset); "
            "copy the data into this file",
        )
    return node


def _read(f: h5py.File, source: str, key: str) -> np.ndarray:
    """Read one numeric dataset, refusing oversized or non-numeric ones first."""
    node = _dataset(f, source, key)
    if node.dtype.kind not in "biuf":
        raise data_error(source, key, f"non-numeric dtype {node.dtype}")
    size = int(np.prod(node.shape, dtype=np.float64)) if node.shape else 1
    nbytes = size * max(node.dtype.itemsize, 4)
    if nbytes > MAX_DATASET_BYTES:
        raise data_error(
            source,
            key,
            f"declared shape {node.shape} needs {nbytes / 1024**3:.1f} GiB, "
            f"over the {MAX_DATASET_BYTES / 1024**3:.0f} GiB limit",
        )
    return np.asarray(node[()])


def _read_float(f: h5py.File, source: str, key: str) -> np.ndarray | None:
    return _read(f, source, key).astype(np.float32) if key in f else None


def _held_size(f: h5py.File, source: str, key: str, given: int | None) -> int:
    """A legacy-layout size: the argument, else a root attribute or scalar
    dataset named `key`, else 0."""
    raw: object = given
    if raw is None:
        raw = f.attrs.get(key)
    if raw is None and key in f:
        raw = _read(f, source, key)
    if raw is None:
        return 0
    value = np.asarray(raw).reshape(-1)
    whole = value.size == 1 and value.dtype.kind in "iuf" and np.isfinite(value[0])
    if not whole or value[0] != int(value[0]):
        got = repr(value[0].item()) if value.size == 1 else f"shape {value.shape}"
        raise data_error(source, key, f"expected one whole number, got {got[:60]}")
    if value[0] < 0:
        raise data_error(source, key, f"must be >= 0, got {int(value[0])}")
    return int(value[0])


def _read_cond_idx(f: h5py.File, source: str, key: str, n_trials: int) -> np.ndarray | None:
    """Per-trial condition ids (n,), or NLB-style index lists (n_conditions, k)
    padded with negative entries, converted to per-trial ids (-1 = none)."""
    if key not in f:
        return None
    raw = _read(f, source, key)
    if raw.dtype.kind == "f" and (not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw))):
        raise data_error(source, key, "condition indices must be whole numbers")
    raw = raw.astype(np.int64)
    if raw.ndim == 1:
        if raw.shape[0] != n_trials:
            raise data_error(source, key, f"{raw.shape[0]} entries for {n_trials} trials")
        if np.any(raw < -1):
            raise data_error(source, key, "condition ids must be >= 0 (or -1 for none)")
        return raw
    if raw.ndim != 2:
        raise data_error(
            source, key, f"expected (trials,) ids or (conditions, k) indices, got {raw.shape}"
        )
    ids = np.full(n_trials, -1, dtype=np.int64)
    for cond, row in enumerate(raw):
        trials = row[row >= 0]
        if np.any(trials >= n_trials):
            raise data_error(source, key, f"trial index {int(trials.max())} >= {n_trials} trials")
        if np.any(ids[trials] >= 0):
            raise data_error(source, key, f"a trial of condition {cond} is in two conditions")
        ids[trials] = cond
    return ids


def _read_extras(f: h5py.File, source: str, name: str, n_trials: int, cf: float) -> dict:
    truth = _read_float(f, source, f"{name}_truth")
    mask = _read(f, source, f"{name}_decode_mask") if f"{name}_decode_mask" in f else None
    inds = _read(f, source, f"{name}_inds") if f"{name}_inds" in f else None
    if inds is not None and inds.dtype.kind == "f" and not np.all(inds == np.round(inds)):
        # Row numbers of the source's trials: 1.7 would silently become 1.
        raise data_error(source, f"{name}_inds", "trial indices must be whole numbers")
    if mask is not None:
        mask = (mask if mask.ndim != 1 else mask[:, None]).astype(bool)
    return {
        "ext_input": _read_float(f, source, f"{name}_ext_input"),
        "truth": None if truth is None else truth / np.float32(cf),
        "behavior": _read_float(f, source, f"{name}_behavior"),
        "cond_idx": _read_cond_idx(f, source, f"{name}_cond_idx", n_trials),
        "decode_mask": mask,
        "trial_idx": None if inds is None else inds.astype(np.int64).reshape(-1),
    }


def _conversion_factor(f: h5py.File, source: str) -> float:
    if not any(f"{s}_truth" in f for s in SPLITS):
        return 1.0
    if "conversion_factor" not in f:
        raise data_error(source, "conversion_factor", "missing (needed to read *_truth)")
    cf = _read(f, source, "conversion_factor")
    # Truth is divided in float32: the factor must stay positive and finite there.
    value = np.float32(cf.reshape(-1)[0]) if cf.size == 1 else np.float32(np.nan)
    if not (np.isfinite(value) and value > 0):
        got = f"{float(cf.reshape(-1)[0])!r}" if cf.size == 1 else f"shape {cf.shape}"
        raise data_error(source, "conversion_factor", f"expected one positive number, got {got}")
    return float(value)


def _load_split(
    f: h5py.File, source: str, name: str, legacy: bool, held: tuple[int, int], cf: float
) -> Split | None:
    encod_key = f"{name}_data" if legacy else f"{name}_encod_data"
    if encod_key not in f:
        if name == "test":
            return None
        raise data_error(source, encod_key, "missing")
    raw = _read(f, source, encod_key)
    check_rank(source, encod_key, raw, 3)
    if legacy:
        # The TF2 layout stores everything in `{split}_data`; the held-in,
        # observed slice is what the encoder sees.
        heldout_dim, fp_seq_len = held
        n, t, c = raw.shape
        if heldout_dim >= c or fp_seq_len >= t:
            raise data_error(
                source,
                encod_key,
                f"shape {raw.shape} leaves no held-in data after heldout_dim {heldout_dim}, "
                f"fp_seq_len {fp_seq_len}",
            )
        recon: np.ndarray | None = raw.astype(np.float32)
        assert recon is not None
        encod = np.ascontiguousarray(recon[:, : t - fp_seq_len, : c - heldout_dim])
        if name == "test":
            recon = None  # its held-out channels and forward bins are placeholders
    else:
        encod = raw.astype(np.float32)
        recon = _read_float(f, source, f"{name}_recon_data")
    return Split(encod, recon, **_read_extras(f, source, name, encod.shape[0], cf))


def load_lfads_h5(
    source: str | Path | bytes | BinaryIO,
    heldout_dim: int | None = None,
    fp_seq_len: int | None = None,
) -> LfadsData:
    """Read and validate an LFADS data file; raise DataError (one line) if unusable.

    lfads-torch layout: `{train,valid}_encod_data`, `{train,valid}_recon_data`,
    optional `test_encod_data`, `{split}_ext_input`, `{split}_truth` with scalar
    `conversion_factor` (truth / conversion_factor = counts per bin),
    `{split}_behavior`, `{split}_cond_idx`, `{split}_decode_mask`, `{split}_inds`
    and `psth`.

    AutoLFADS TF2 layout: `{train,valid}_data` hold held-in + held-out channels
    and observed + forward bins together, optional `test_data` and `*_inds`.
    Which channels and bins are held out is read from the arguments, else from
    root attributes or scalar datasets named `heldout_dim` / `fp_seq_len`,
    else 0: the last `heldout_dim` channels and last `fp_seq_len` bins.
    """
    f, name = _open(source)
    # Overflow/invalid-value warnings would add stray lines on stderr; every
    # array is checked for NaN/Inf explicitly instead.
    with np.errstate(all="ignore"):
        try:
            with f:
                splits, attrs, legacy = _read_file(f, name, heldout_dim, fp_seq_len)
        except _H5_ERRORS as err:
            # HDF5 reports corrupt or truncated files through many exception
            # types (KeyError for a damaged object header, RuntimeError for a
            # bad symbol table, OSError for a failed filter, ...).
            raise DataError(
                f"{name}: corrupt or unreadable HDF5 content ({type(err).__name__}: "
                f"{_one_line(err)})"
            ) from None
        train, valid = splits["train"], splits["valid"]
        assert train is not None and valid is not None, "train and valid are required splits"
        data = LfadsData(train, valid, splits["test"], name, attrs)
        validate_data(data)
    if not legacy:
        _check_requested(data, heldout_dim, fp_seq_len)
    return data


def load_cached(cache: DataCache, key: str, sha256: str) -> LfadsData:
    """Read a run's data object `key` through `cache` (trainers, finalize).

    The copy in the cache folder may have been damaged since it was verified:
    if it cannot be read it is checked against its hash (and fetched again if
    it differs) before the run's data is blamed.
    """
    try:
        return load_lfads_h5(cache.fetch(key, sha256))
    except DataError:
        return load_lfads_h5(cache.fetch(key, sha256, rehash=True))


_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, OverflowError)


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).strip("'\"").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_file(
    f: h5py.File, name: str, heldout_dim: int | None, fp_seq_len: int | None
) -> tuple[dict[str, Split | None], dict[str, np.ndarray], bool]:
    legacy = "train_encod_data" not in f and "train_data" in f
    if not legacy and "train_encod_data" not in f:
        raise data_error(name, "train_encod_data", "missing (nor a legacy train_data)")
    held = (0, 0)
    if legacy:
        held = (
            _held_size(f, name, "heldout_dim", heldout_dim),
            _held_size(f, name, "fp_seq_len", fp_seq_len),
        )
    cf = _conversion_factor(f, name)
    splits = {s: _load_split(f, name, s, legacy, held, cf) for s in SPLITS}
    attrs = {"psth": _read(f, name, "psth").astype(np.float32)} if "psth" in f else {}
    # Where the tensors came from in an NWB file (`autolfads data from-nwb`),
    # kept as read (float64 times) so outputs can be written back to NWB.
    attrs.update({key: _read(f, name, key) for key in NWB_KEYS if key in f})
    return splits, attrs, legacy


def _check_requested(data: LfadsData, heldout_dim: int | None, fp_seq_len: int | None) -> None:
    """In the lfads-torch layout the split is in the shapes; arguments must agree."""
    for arg, want, have in (
        ("heldout_dim", heldout_dim, data.heldout_dim),
        ("fp_seq_len", fp_seq_len, data.fp_seq_len),
    ):
        if want is not None and want != have:
            raise data_error(
                data.source, arg, f"requested {want} but the file's shapes give {have}"
            )


# --------------------------------------------------------------------------- writing


def _split_arrays(name: str, split: Split) -> dict[str, np.ndarray]:
    arrays = {f"{name}_encod_data": split.encod_data, f"{name}_recon_data": split.recon_data}
    extras = {
        "ext_input": split.ext_input,
        "truth": split.truth,
        "behavior": split.behavior,
        "cond_idx": split.cond_idx,
        "decode_mask": split.decode_mask,
        "inds": split.trial_idx,
    }
    arrays.update({f"{name}_{key}": arr for key, arr in extras.items()})
    return {key: arr for key, arr in arrays.items() if arr is not None}


def _write_to(handle: str | BinaryIO, data: LfadsData) -> None:
    with h5py.File(handle, "w") as f:
        for name, split in data.splits().items():
            for key, arr in _split_arrays(name, split).items():
                # Spike counts compress ~10x (gzip: readable by every HDF5
                # build); continuous arrays barely compress, so skip the cost.
                counts = key.endswith(("_encod_data", "_recon_data"))
                opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
                f.create_dataset(key, data=arr, **(opts if counts else {}))
        if any(split.truth is not None for split in data.splits().values()):
            f.create_dataset("conversion_factor", data=np.float64(1.0))  # truth is counts/bin
        for key, arr in data.attrs.items():
            f.create_dataset(key, data=arr)


def write_lfads_h5(data: LfadsData, dest: str | Path | BinaryIO) -> None:
    """Validate `data` and write it in the lfads-torch layout.

    A path is written to a temporary file in the same folder and renamed into
    place, so a failure never leaves a half-written file behind.
    """
    validate_data(data)
    if not isinstance(dest, str | Path):
        _write_to(dest, data)
        return
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise DataError(f"{dest}: folder {dest.parent} does not exist")
    if dest.is_dir():
        raise DataError(f"{dest}: is a folder, expected a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as err:
        raise DataError(f"{dest}: cannot write ({err.strerror})") from None
    os.close(fd)
    try:
        _write_to(tmp, data)
        os.chmod(tmp, 0o644)  # mkstemp makes private files (0600); data files are shared
        os.replace(tmp, dest)
    except OSError as err:
        raise DataError(f"{dest}: cannot write ({err})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def dataset_sha256(source: str | Path | bytes) -> str:
    """Hex SHA-256 of a data file's bytes (identifies the dataset in run records)."""
    digest = hashlib.sha256()
    if isinstance(source, bytes | bytearray):
        digest.update(source)
        return digest.hexdigest()
    try:
        with open(source, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise DataError(f"{source}: data file not found") from None
    except OSError as err:
        raise DataError(f"{source}: cannot read ({err.strerror})") from None
    return digest.hexdigest()
