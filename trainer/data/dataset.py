"""LFADS datasets in memory and the checks every one passes (numpy only).

Arrays are (trials, bins, channels). Held-out channels come after the held-in
ones and forward-prediction bins after the observed ones, as in lfads-torch:

    encod_data: (n, encod_seq_len, encod_data_dim)       model input
    recon_data: (n, recon_seq_len, recon_data_dim)       reconstruction target

Files are read and written by `lfads_h5` (`load_lfads_h5`, `write_lfads_h5`),
which checks every dataset it builds with `validate_data` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autolfads.errors import DataError

# A dataset whose declared shape needs more memory than this (as float32 or its
# own item size, whichever is larger) is refused before anything is read.
MAX_DATASET_BYTES = 4 * 1024**3

SPLITS = ("train", "valid", "test")
# Provenance of a file made from NWB: the source units table's row of each
# recon_data channel, the bin width in seconds, and each trial's first bin
# start time in seconds per split (trial rows are in `{split}_inds`). Which
# recording that was: its `identifier` (UTF-8 bytes as uint8: the loader reads
# numbers only), the SHA-256 of its trials' start/stop times, and the units
# table's id of each channel, so `to-nwb` and `--units-from` can refuse
# another recording that merely has enough rows.
NWB_KEYS = (
    "nwb_unit_index",
    "nwb_bin_width",
    *(f"nwb_{s}_start" for s in SPLITS),
    "nwb_identifier",
    "nwb_trials_sha256",
    "nwb_unit_id",
)


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


def data_error(source: str, key: str, problem: str) -> DataError:
    return DataError(f"{source}: {key}: {problem}")


def check_rank(source: str, key: str, arr: np.ndarray, ndim: int) -> None:
    if arr.ndim != ndim:
        raise data_error(source, key, f"expected {ndim} dimensions, got shape {arr.shape}")
    if arr.size == 0:
        raise data_error(source, key, f"empty array (shape {arr.shape})")


def _check_finite(source: str, key: str, arr: np.ndarray, allow_nan: bool = False) -> None:
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if np.any(bad):
        what = "infinite" if allow_nan else "NaN or infinite"
        raise data_error(source, key, f"{int(bad.sum())} {what} value(s)")


def _check_counts(source: str, key: str, arr: np.ndarray) -> None:
    """Spike counts: finite, non-negative whole numbers."""
    _check_finite(source, key, arr)
    if np.any(arr < 0):
        raise data_error(source, key, f"negative spike counts (min {float(arr.min())})")
    if np.any(arr != np.round(arr)):
        raise data_error(source, key, "non-integer spike counts; expected binned counts")


def _check_split(source: str, name: str, split: Split, data: LfadsData) -> None:
    n = split.n_trials
    check_rank(source, f"{name}_encod_data", split.encod_data, 3)
    _check_counts(source, f"{name}_encod_data", split.encod_data)
    enc_shape = (data.encod_seq_len, data.encod_data_dim)
    if split.encod_data.shape[1:] != enc_shape:
        raise data_error(
            source,
            f"{name}_encod_data",
            f"(bins, channels) {split.encod_data.shape[1:]} differ from train's {enc_shape}",
        )
    recon_shape = (n, data.recon_seq_len, data.recon_data_dim)
    if split.recon_data is not None:
        key = f"{name}_recon_data"
        check_rank(source, key, split.recon_data, 3)
        _check_counts(source, key, split.recon_data)
        if split.recon_data.shape != recon_shape:
            raise data_error(
                source, key, f"shape {split.recon_data.shape} does not match {recon_shape}"
            )
        observed = split.recon_data[:, : data.encod_seq_len, : data.encod_data_dim]
        if not np.array_equal(observed, split.encod_data):
            raise data_error(
                source,
                key,
                f"held-in channels over the observed bins differ from {name}_encod_data",
            )
    elif name != "test":
        raise data_error(source, f"{name}_recon_data", "missing")
    _check_optional(source, name, split, data, recon_shape)


def _check_optional(
    source: str, name: str, split: Split, data: LfadsData, recon_shape: tuple[int, ...]
) -> None:
    n = split.n_trials
    if split.ext_input is None and name == "valid" and data.ext_input_dim:
        # The model would score valid (the search's fitness) without the
        # inputs it was trained with, silently.
        raise data_error(
            source, "valid_ext_input", f"missing, but train has {data.ext_input_dim} inputs"
        )
    if split.ext_input is not None:
        key = f"{name}_ext_input"
        check_rank(source, key, split.ext_input, 3)
        _check_finite(source, key, split.ext_input)
        if split.ext_input.shape[:2] != recon_shape[:2]:
            raise data_error(
                source, key, f"shape {split.ext_input.shape} needs (trials, bins) {recon_shape[:2]}"
            )
        if split.ext_input.shape[2] != data.ext_input_dim:
            raise data_error(
                source, key, f"{split.ext_input.shape[2]} inputs, train has {data.ext_input_dim}"
            )
    if split.truth is not None:
        key = f"{name}_truth"
        check_rank(source, key, split.truth, 3)
        _check_finite(source, key, split.truth)
        if np.any(split.truth < 0):
            raise data_error(source, key, "negative true rates")
        if split.truth.shape != recon_shape:
            raise data_error(source, key, f"shape {split.truth.shape} does not match {recon_shape}")
    if split.behavior is not None:
        key = f"{name}_behavior"
        check_rank(source, key, split.behavior, 3)
        _check_finite(source, key, split.behavior, allow_nan=True)
        want = (n, data.encod_seq_len)
        if split.behavior.shape[:2] != want:
            raise data_error(
                source, key, f"shape {split.behavior.shape} needs (trials, bins) {want}"
            )
        if split.behavior.shape[2] != data.behavior_dim:
            raise data_error(
                source, key, f"{split.behavior.shape[2]} columns, train has {data.behavior_dim}"
            )
    for key, arr in ((f"{name}_cond_idx", split.cond_idx), (f"{name}_inds", split.trial_idx)):
        if arr is not None and (arr.ndim != 1 or arr.shape[0] != n):
            raise data_error(source, key, f"shape {arr.shape} needs one entry per trial ({n},)")
    if split.trial_idx is not None and split.trial_idx.size and split.trial_idx.min() < 0:
        # Rows of the source's trials: a negative one would index from the end.
        raise data_error(
            source, f"{name}_inds", f"trial indices must be >= 0, got {int(split.trial_idx.min())}"
        )
    if split.decode_mask is not None:
        key = f"{name}_decode_mask"
        if split.decode_mask.ndim != 2 or split.decode_mask.shape[0] != n:
            raise data_error(source, key, f"shape {split.decode_mask.shape} needs (trials, masks)")
        train_mask = data.train.decode_mask
        if train_mask is not None and split.decode_mask.shape[1] != train_mask.shape[1]:
            # One velocity decoder per mask column, fitted on train: vel R2
            # failed only after training (staging's baseline, finalize).
            raise data_error(
                source, key, f"{split.decode_mask.shape[1]} masks, train has {train_mask.shape[1]}"
            )


def _check_disjoint(source: str, data: LfadsData) -> None:
    """A recorded trial in both train and valid would score the search's
    fitness on trials it trained on."""
    train, valid = data.train.trial_idx, data.valid.trial_idx
    if train is None or valid is None:
        return
    shared = np.intersect1d(train, valid)
    if shared.size:
        raise data_error(
            source,
            "valid_inds",
            f"{shared.size} trial(s) also in train_inds (e.g. {int(shared[0])}); "
            "valid trials must be held out of train",
        )


def _check_psth(source: str, data: LfadsData) -> None:
    psth = data.attrs.get("psth")
    if psth is None:
        return
    check_rank(source, "psth", psth, 3)
    _check_finite(source, "psth", psth, allow_nan=True)
    if psth.shape[1] not in (data.encod_seq_len, data.recon_seq_len):
        raise data_error(
            source, "psth", f"{psth.shape[1]} bins; expected {data.encod_seq_len} (observed)"
        )
    if psth.shape[2] != data.recon_data_dim:
        raise data_error(
            source, "psth", f"{psth.shape[2]} channels; expected {data.recon_data_dim}"
        )
    for name, split in data.splits().items():
        if split.cond_idx is not None and split.cond_idx.max() >= psth.shape[0]:
            raise data_error(
                source,
                f"{name}_cond_idx",
                f"condition {int(split.cond_idx.max())} has no psth row ({psth.shape[0]} rows)",
            )


def validate_data(data: LfadsData) -> None:
    """Raise DataError (one line, naming the file and key) if `data` is inconsistent."""
    source = data.source
    if data.train.recon_data is None:
        raise data_error(source, "train_recon_data", "missing")
    check_rank(source, "train_encod_data", data.train.encod_data, 3)
    check_rank(source, "train_recon_data", data.train.recon_data, 3)
    if data.recon_seq_len < data.encod_seq_len:
        raise data_error(
            source,
            "train_recon_data",
            f"{data.recon_seq_len} bins, fewer than encod_data's {data.encod_seq_len}",
        )
    if data.recon_data_dim < data.encod_data_dim:
        raise data_error(
            source,
            "train_recon_data",
            f"{data.recon_data_dim} channels, fewer than encod_data's {data.encod_data_dim}",
        )
    for name, split in data.splits().items():
        _check_split(source, name, split, data)
    _check_disjoint(source, data)
    _check_psth(source, data)
    _check_nwb(source, data)


def _check_nwb(source: str, data: LfadsData) -> None:
    """NWB provenance, when present, must describe every channel and trial."""
    for key in ("nwb_unit_index", "nwb_unit_id"):
        units = data.attrs.get(key)
        if units is None:
            continue
        if units.shape != (data.recon_data_dim,):
            raise data_error(source, key, f"shape {units.shape}, expected ({data.recon_data_dim},)")
        if units.dtype.kind not in "iu":
            raise data_error(source, key, f"expected whole numbers, got {units.dtype}")
        if key == "nwb_unit_index" and units.min() < 0:
            # Rows of the source's units: a negative one would index from the end.
            raise data_error(source, key, f"unit rows must be >= 0, got {int(units.min())}")
    width = data.attrs.get("nwb_bin_width")
    if width is not None and not (width.size == 1 and float(width.reshape(-1)[0]) > 0):
        raise data_error(source, "nwb_bin_width", "expected one positive number (seconds)")
    for name, split in data.splits().items():
        starts = data.attrs.get(f"nwb_{name}_start")
        if starts is not None and starts.shape != (split.n_trials,):
            raise data_error(
                source, f"nwb_{name}_start", f"shape {starts.shape}, expected ({split.n_trials},)"
            )
        if starts is not None and not np.all(np.isfinite(starts)):
            raise data_error(source, f"nwb_{name}_start", "NaN or infinite window starts")
    ident = data.attrs.get("nwb_identifier")
    if ident is not None:
        if ident.ndim != 1 or ident.dtype != np.uint8:
            raise data_error(source, "nwb_identifier", "expected UTF-8 bytes (uint8, 1-D)")
        try:
            bytes(ident).decode("utf-8")
        except UnicodeDecodeError:
            raise data_error(source, "nwb_identifier", "not UTF-8 text") from None
    digest = data.attrs.get("nwb_trials_sha256")
    if digest is not None and (digest.shape != (32,) or digest.dtype != np.uint8):
        raise data_error(source, "nwb_trials_sha256", "expected 32 bytes (uint8) of SHA-256")


def nwb_identifier(data: LfadsData) -> str | None:
    """The source NWB file's identifier, or None for a file made before it was kept."""
    ident = data.attrs.get("nwb_identifier")
    return None if ident is None else bytes(ident).decode("utf-8")
