"""LFADS datasets in memory, and their HDF5 files (numpy + h5py only; no torch here).

Arrays are (trials, bins, channels). Held-out channels come after the held-in
ones and forward-prediction bins after the observed ones, as in lfads-torch:

    encod_data: (n, encod_seq_len, encod_data_dim)       model input
    recon_data: (n, recon_seq_len, recon_data_dim)       reconstruction target

Two file layouts are read (see `load_lfads_h5`): the lfads-torch one, which
`write_lfads_h5` also writes, and the older AutoLFADS TF2 one.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np

from autolfads.errors import DataError

# A dataset whose declared shape needs more memory than this (as float32 or its
# own item size, whichever is larger) is refused before anything is read.
MAX_DATASET_BYTES = 4 * 1024**3

SPLITS = ("train", "valid", "test")
# Provenance of a file made from NWB: the source units table's row of each
# recon_data channel, the bin width in seconds, and each trial's first bin
# start time in seconds per split (trial rows are in `{split}_inds`).
NWB_KEYS = ("nwb_unit_index", "nwb_bin_width", *(f"nwb_{s}_start" for s in SPLITS))


@dataclass(frozen=True)
class Split:
    """One split (train / valid / test) of a dataset."""

    encod_data: np.ndarray  # (n, encod_seq_len, encod_data_dim) float32 counts
    recon_data: np.ndarray | None  # (n, recon_seq_len, recon_data_dim); None for test
    ext_input: np.ndarray | None = None  # (n, recon_seq_len, ext_input_dim)
    truth: np.ndarray | None = None  # (n, recon_seq_len, recon_data_dim) rates in counts/bin
    behavior: np.ndarray | None = None  # (n, encod_seq_len, behavior_dim), e.g. velocity
    cond_idx: np.ndarray | None = None  # (n,) integer condition id per trial; -1 = none
    decode_mask: np.ndarray | None = None  # (n, n_masks) bool: trials of each vel decoder
    trial_idx: np.ndarray | None = None  # (n,) trial index in the original recording

    @property
    def n_trials(self) -> int:
        return int(self.encod_data.shape[0])


@dataclass(frozen=True)
class LfadsData:
    """A validated dataset; build it with `load_lfads_h5` (see below)."""

    train: Split
    valid: Split
    test: Split | None = None
    source: str = "<memory>"
    attrs: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "psth"

    @property
    def encod_seq_len(self) -> int:
        return int(self.train.encod_data.shape[1])

    @property
    def encod_data_dim(self) -> int:
        return int(self.train.encod_data.shape[2])

    @property
    def recon_seq_len(self) -> int:
        assert self.train.recon_data is not None
        return int(self.train.recon_data.shape[1])

    @property
    def recon_data_dim(self) -> int:
        assert self.train.recon_data is not None
        return int(self.train.recon_data.shape[2])

    @property
    def ext_input_dim(self) -> int:
        ext = self.train.ext_input
        return 0 if ext is None else int(ext.shape[2])

    @property
    def heldout_dim(self) -> int:
        """Channels in recon_data that the encoder never sees (co-bps)."""
        return self.recon_data_dim - self.encod_data_dim

    @property
    def fp_seq_len(self) -> int:
        """Forward-prediction bins after the observed window (fp-bps)."""
        return self.recon_seq_len - self.encod_seq_len

    @property
    def behavior_dim(self) -> int:
        beh = self.train.behavior
        return 0 if beh is None else int(beh.shape[2])

    def splits(self) -> dict[str, Split]:
        """The splits present, in train / valid / test order."""
        found = {"train": self.train, "valid": self.valid, "test": self.test}
        return {name: split for name, split in found.items() if split is not None}


# --------------------------------------------------------------------------- validation


def _fail(source: str, key: str, problem: str) -> DataError:
    return DataError(f"{source}: {key}: {problem}")


def _check_rank(source: str, key: str, arr: np.ndarray, ndim: int) -> None:
    if arr.ndim != ndim:
        raise _fail(source, key, f"expected {ndim} dimensions, got shape {arr.shape}")
    if arr.size == 0:
        raise _fail(source, key, f"empty array (shape {arr.shape})")


def _check_finite(source: str, key: str, arr: np.ndarray, allow_nan: bool = False) -> None:
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if np.any(bad):
        what = "infinite" if allow_nan else "NaN or infinite"
        raise _fail(source, key, f"{int(bad.sum())} {what} value(s)")


def _check_counts(source: str, key: str, arr: np.ndarray) -> None:
    """Spike counts: finite, non-negative whole numbers."""
    _check_finite(source, key, arr)
    if np.any(arr < 0):
        raise _fail(source, key, f"negative spike counts (min {float(arr.min())})")
    if np.any(arr != np.round(arr)):
        raise _fail(source, key, "non-integer spike counts; expected binned counts")


def _check_split(source: str, name: str, split: Split, data: LfadsData) -> None:
    n = split.n_trials
    _check_rank(source, f"{name}_encod_data", split.encod_data, 3)
    _check_counts(source, f"{name}_encod_data", split.encod_data)
    enc_shape = (data.encod_seq_len, data.encod_data_dim)
    if split.encod_data.shape[1:] != enc_shape:
        raise _fail(
            source,
            f"{name}_encod_data",
            f"(bins, channels) {split.encod_data.shape[1:]} differ from train's {enc_shape}",
        )
    recon_shape = (n, data.recon_seq_len, data.recon_data_dim)
    if split.recon_data is not None:
        key = f"{name}_recon_data"
        _check_rank(source, key, split.recon_data, 3)
        _check_counts(source, key, split.recon_data)
        if split.recon_data.shape != recon_shape:
            raise _fail(source, key, f"shape {split.recon_data.shape} does not match {recon_shape}")
        observed = split.recon_data[:, : data.encod_seq_len, : data.encod_data_dim]
        if not np.array_equal(observed, split.encod_data):
            raise _fail(
                source,
                key,
                f"held-in channels over the observed bins differ from {name}_encod_data",
            )
    elif name != "test":
        raise _fail(source, f"{name}_recon_data", "missing")
    _check_optional(source, name, split, data, recon_shape)


def _check_optional(
    source: str, name: str, split: Split, data: LfadsData, recon_shape: tuple[int, ...]
) -> None:
    n = split.n_trials
    if split.ext_input is not None:
        key = f"{name}_ext_input"
        _check_rank(source, key, split.ext_input, 3)
        _check_finite(source, key, split.ext_input)
        if split.ext_input.shape[:2] != recon_shape[:2]:
            raise _fail(
                source, key, f"shape {split.ext_input.shape} needs (trials, bins) {recon_shape[:2]}"
            )
        if split.ext_input.shape[2] != data.ext_input_dim:
            raise _fail(
                source, key, f"{split.ext_input.shape[2]} inputs, train has {data.ext_input_dim}"
            )
    if split.truth is not None:
        key = f"{name}_truth"
        _check_rank(source, key, split.truth, 3)
        _check_finite(source, key, split.truth)
        if np.any(split.truth < 0):
            raise _fail(source, key, "negative true rates")
        if split.truth.shape != recon_shape:
            raise _fail(source, key, f"shape {split.truth.shape} does not match {recon_shape}")
    if split.behavior is not None:
        key = f"{name}_behavior"
        _check_rank(source, key, split.behavior, 3)
        _check_finite(source, key, split.behavior, allow_nan=True)
        want = (n, data.encod_seq_len)
        if split.behavior.shape[:2] != want:
            raise _fail(source, key, f"shape {split.behavior.shape} needs (trials, bins) {want}")
        if split.behavior.shape[2] != data.behavior_dim:
            raise _fail(
                source, key, f"{split.behavior.shape[2]} columns, train has {data.behavior_dim}"
            )
    for key, arr in ((f"{name}_cond_idx", split.cond_idx), (f"{name}_inds", split.trial_idx)):
        if arr is not None and (arr.ndim != 1 or arr.shape[0] != n):
            raise _fail(source, key, f"shape {arr.shape} needs one entry per trial ({n},)")
    if split.decode_mask is not None:
        key = f"{name}_decode_mask"
        if split.decode_mask.ndim != 2 or split.decode_mask.shape[0] != n:
            raise _fail(source, key, f"shape {split.decode_mask.shape} needs (trials, masks)")


def _check_psth(source: str, data: LfadsData) -> None:
    psth = data.attrs.get("psth")
    if psth is None:
        return
    _check_rank(source, "psth", psth, 3)
    _check_finite(source, "psth", psth, allow_nan=True)
    if psth.shape[1] not in (data.encod_seq_len, data.recon_seq_len):
        raise _fail(
            source, "psth", f"{psth.shape[1]} bins; expected {data.encod_seq_len} (observed)"
        )
    if psth.shape[2] != data.recon_data_dim:
        raise _fail(source, "psth", f"{psth.shape[2]} channels; expected {data.recon_data_dim}")
    for name, split in data.splits().items():
        if split.cond_idx is not None and split.cond_idx.max() >= psth.shape[0]:
            raise _fail(
                source,
                f"{name}_cond_idx",
                f"condition {int(split.cond_idx.max())} has no psth row ({psth.shape[0]} rows)",
            )


def validate_data(data: LfadsData) -> None:
    """Raise DataError (one line, naming the file and key) if `data` is inconsistent."""
    source = data.source
    if data.train.recon_data is None:
        raise _fail(source, "train_recon_data", "missing")
    _check_rank(source, "train_encod_data", data.train.encod_data, 3)
    _check_rank(source, "train_recon_data", data.train.recon_data, 3)
    if data.recon_seq_len < data.encod_seq_len:
        raise _fail(
            source,
            "train_recon_data",
            f"{data.recon_seq_len} bins, fewer than encod_data's {data.encod_seq_len}",
        )
    if data.recon_data_dim < data.encod_data_dim:
        raise _fail(
            source,
            "train_recon_data",
            f"{data.recon_data_dim} channels, fewer than encod_data's {data.encod_data_dim}",
        )
    for name, split in data.splits().items():
        _check_split(source, name, split, data)
    _check_psth(source, data)
    _check_nwb(source, data)


def _check_nwb(source: str, data: LfadsData) -> None:
    """NWB provenance, when present, must describe every channel and trial."""
    units = data.attrs.get("nwb_unit_index")
    if units is not None and units.shape != (data.recon_data_dim,):
        raise _fail(
            source, "nwb_unit_index", f"shape {units.shape}, expected ({data.recon_data_dim},)"
        )
    width = data.attrs.get("nwb_bin_width")
    if width is not None and not (width.size == 1 and float(width.reshape(-1)[0]) > 0):
        raise _fail(source, "nwb_bin_width", "expected one positive number (seconds)")
    for name, split in data.splits().items():
        starts = data.attrs.get(f"nwb_{name}_start")
        if starts is not None and starts.shape != (split.n_trials,):
            raise _fail(
                source, f"nwb_{name}_start", f"shape {starts.shape}, expected ({split.n_trials},)"
            )


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
        raise _fail(source, key, "is a link into another file; copy the data into this file")
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise _fail(source, key, "is a group, expected a dataset")
    if node.external or node.is_virtual:
        raise _fail(
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
        raise _fail(source, key, f"non-numeric dtype {node.dtype}")
    size = int(np.prod(node.shape, dtype=np.float64)) if node.shape else 1
    nbytes = size * max(node.dtype.itemsize, 4)
    if nbytes > MAX_DATASET_BYTES:
        raise _fail(
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
        raise _fail(source, key, f"expected one whole number, got {got[:60]}")
    if value[0] < 0:
        raise _fail(source, key, f"must be >= 0, got {int(value[0])}")
    return int(value[0])


def _read_cond_idx(f: h5py.File, source: str, key: str, n_trials: int) -> np.ndarray | None:
    """Per-trial condition ids (n,), or NLB-style index lists (n_conditions, k)
    padded with negative entries, converted to per-trial ids (-1 = none)."""
    if key not in f:
        return None
    raw = _read(f, source, key)
    if raw.dtype.kind == "f" and (not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw))):
        raise _fail(source, key, "condition indices must be whole numbers")
    raw = raw.astype(np.int64)
    if raw.ndim == 1:
        if raw.shape[0] != n_trials:
            raise _fail(source, key, f"{raw.shape[0]} entries for {n_trials} trials")
        if np.any(raw < -1):
            raise _fail(source, key, "condition ids must be >= 0 (or -1 for none)")
        return raw
    if raw.ndim != 2:
        raise _fail(
            source, key, f"expected (trials,) ids or (conditions, k) indices, got {raw.shape}"
        )
    ids = np.full(n_trials, -1, dtype=np.int64)
    for cond, row in enumerate(raw):
        trials = row[row >= 0]
        if np.any(trials >= n_trials):
            raise _fail(source, key, f"trial index {int(trials.max())} >= {n_trials} trials")
        if np.any(ids[trials] >= 0):
            raise _fail(source, key, f"a trial of condition {cond} is in two conditions")
        ids[trials] = cond
    return ids


def _read_extras(f: h5py.File, source: str, name: str, n_trials: int, cf: float) -> dict:
    truth = _read_float(f, source, f"{name}_truth")
    mask = _read(f, source, f"{name}_decode_mask") if f"{name}_decode_mask" in f else None
    inds = _read(f, source, f"{name}_inds") if f"{name}_inds" in f else None
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
        raise _fail(source, "conversion_factor", "missing (needed to read *_truth)")
    cf = _read(f, source, "conversion_factor")
    # Truth is divided in float32: the factor must stay positive and finite there.
    value = np.float32(cf.reshape(-1)[0]) if cf.size == 1 else np.float32(np.nan)
    if not (np.isfinite(value) and value > 0):
        got = f"{float(cf.reshape(-1)[0])!r}" if cf.size == 1 else f"shape {cf.shape}"
        raise _fail(source, "conversion_factor", f"expected one positive number, got {got}")
    return float(value)


def _load_split(
    f: h5py.File, source: str, name: str, legacy: bool, held: tuple[int, int], cf: float
) -> Split | None:
    encod_key = f"{name}_data" if legacy else f"{name}_encod_data"
    if encod_key not in f:
        if name == "test":
            return None
        raise _fail(source, encod_key, "missing")
    raw = _read(f, source, encod_key)
    _check_rank(source, encod_key, raw, 3)
    if legacy:
        # The TF2 layout stores everything in `{split}_data`; the held-in,
        # observed slice is what the encoder sees.
        heldout_dim, fp_seq_len = held
        n, t, c = raw.shape
        if heldout_dim >= c or fp_seq_len >= t:
            raise _fail(
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


_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, OverflowError)


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).strip("'\"").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_file(
    f: h5py.File, name: str, heldout_dim: int | None, fp_seq_len: int | None
) -> tuple[dict[str, Split | None], dict[str, np.ndarray], bool]:
    legacy = "train_encod_data" not in f and "train_data" in f
    if not legacy and "train_encod_data" not in f:
        raise _fail(name, "train_encod_data", "missing (nor a legacy train_data)")
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
            raise _fail(data.source, arg, f"requested {want} but the file's shapes give {have}")


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
