"""LFADS HDF5 files: round trips, both layouts, and one-line errors for bad files."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from autolfads.errors import DataError
from autolfads.trainer.data.dataset import LfadsData, Split, validate_data
from autolfads.trainer.data.lfads_h5 import dataset_sha256, load_lfads_h5, write_lfads_h5

N_TRAIN, N_VALID, T_OBS, T_FP, D_IN, D_OUT = 12, 4, 10, 3, 5, 2


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A valid lfads-torch file's contents: 12 train / 4 valid / 3 test trials."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, n in (("train", N_TRAIN), ("valid", N_VALID)):
        truth = rng.gamma(2.0, 0.3, (n, T_OBS + T_FP, D_IN + D_OUT))
        recon = rng.poisson(truth).astype(np.int16)
        out[f"{name}_recon_data"] = recon
        out[f"{name}_encod_data"] = recon[:, :T_OBS, :D_IN]
        out[f"{name}_truth"] = truth * 2.5  # stored in conversion_factor units
        out[f"{name}_behavior"] = rng.standard_normal((n, T_OBS, 2))
        out[f"{name}_cond_idx"] = np.arange(n) % 3
        out[f"{name}_ext_input"] = rng.standard_normal((n, T_OBS + T_FP, 1))
    out["test_encod_data"] = rng.poisson(1.0, (3, T_OBS, D_IN)).astype(np.float64)
    out["conversion_factor"] = np.array(2.5)  # a scalar dataset
    out["psth"] = rng.gamma(2.0, 0.3, (3, T_OBS, D_IN + D_OUT))
    return out


def h5_bytes(contents: dict[str, np.ndarray], attrs: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for key, value in contents.items():
            f.create_dataset(key, data=value)
        f.attrs.update(attrs or {})
    return buf.getvalue()


def test_lfads_torch_layout_loads_as_float32_with_truth_in_counts_per_bin():
    contents = arrays()
    data = load_lfads_h5(h5_bytes(contents))
    assert (data.encod_seq_len, data.encod_data_dim) == (T_OBS, D_IN)
    assert (data.recon_seq_len, data.recon_data_dim) == (T_OBS + T_FP, D_IN + D_OUT)
    assert (data.heldout_dim, data.fp_seq_len, data.behavior_dim) == (D_OUT, T_FP, 2)
    assert [s.n_trials for s in data.splits().values()] == [N_TRAIN, N_VALID, 3]
    assert data.test is not None and data.test.recon_data is None
    for split in data.splits().values():
        assert split.encod_data.dtype == np.float32
    assert data.valid.truth is not None
    np.testing.assert_allclose(data.valid.truth, contents["valid_truth"] / 2.5, rtol=1e-6)
    np.testing.assert_array_equal(data.train.cond_idx, np.arange(N_TRAIN) % 3)
    assert data.attrs["psth"].shape == (3, T_OBS, D_IN + D_OUT)


def test_write_then_load_round_trips_every_array(tmp_path):
    original = load_lfads_h5(h5_bytes(arrays(1)))
    path = tmp_path / "data.h5"
    write_lfads_h5(original, path)
    again = load_lfads_h5(path)
    assert again.source == str(path)
    for name, split in original.splits().items():
        other = again.splits()[name]
        for field in ("encod_data", "recon_data", "truth", "behavior", "cond_idx", "ext_input"):
            mine, theirs = getattr(split, field), getattr(other, field)
            assert (mine is None) == (theirs is None), (name, field)
            if mine is not None:
                np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(original.attrs["psth"], again.attrs["psth"])
    assert [p.name for p in tmp_path.iterdir()] == ["data.h5"]  # no temporary left
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the other containers


def test_write_to_a_stream_and_hash_the_bytes():
    data = load_lfads_h5(h5_bytes(arrays(2)))
    buf = io.BytesIO()
    write_lfads_h5(data, buf)
    raw = buf.getvalue()
    assert load_lfads_h5(io.BytesIO(raw)).train.n_trials == N_TRAIN
    assert dataset_sha256(raw) == hashlib.sha256(raw).hexdigest()


def test_sha256_of_a_path_equals_that_of_its_bytes(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"\x00" * 3_000_000)
    assert dataset_sha256(path) == dataset_sha256(path.read_bytes())
    with pytest.raises(DataError, match="not found"):
        dataset_sha256(tmp_path / "missing.h5")


def test_nlb_style_condition_index_rows_become_per_trial_ids():
    contents = arrays()
    rows = np.full((3, 5), -1)
    for cond in range(3):
        idx = np.flatnonzero(np.arange(N_TRAIN) % 3 == cond)
        rows[cond, : idx.size] = idx
    contents["train_cond_idx"] = rows
    data = load_lfads_h5(h5_bytes(contents))
    np.testing.assert_array_equal(data.train.cond_idx, np.arange(N_TRAIN) % 3)


def legacy_contents() -> dict[str, np.ndarray]:
    contents = arrays()
    legacy = {
        "train_data": contents["train_recon_data"],
        "valid_data": contents["valid_recon_data"],
        "train_inds": np.arange(N_TRAIN) * 2,
        "valid_inds": np.arange(N_VALID) * 2 + 1,
    }
    return legacy


def test_legacy_tf2_layout_reads_heldout_and_forward_sizes_from_attributes():
    data = load_lfads_h5(h5_bytes(legacy_contents(), {"heldout_dim": D_OUT, "fp_seq_len": T_FP}))
    assert (data.encod_data_dim, data.heldout_dim) == (D_IN, D_OUT)
    assert (data.encod_seq_len, data.fp_seq_len) == (T_OBS, T_FP)
    np.testing.assert_array_equal(data.train.encod_data, arrays()["train_encod_data"])
    np.testing.assert_array_equal(data.valid.trial_idx, np.arange(N_VALID) * 2 + 1)


def test_legacy_layout_defaults_to_nothing_held_out_and_arguments_override():
    raw = h5_bytes(legacy_contents())
    plain = load_lfads_h5(raw)
    assert (plain.heldout_dim, plain.fp_seq_len) == (0, 0)
    np.testing.assert_array_equal(plain.train.encod_data, plain.train.recon_data)
    data = load_lfads_h5(raw, heldout_dim=D_OUT, fp_seq_len=T_FP)
    assert (data.encod_data_dim, data.encod_seq_len) == (D_IN, T_OBS)
    with pytest.raises(DataError, match="leaves no held-in data"):
        load_lfads_h5(raw, heldout_dim=D_IN + D_OUT)


def test_lfads_torch_layout_refuses_contradicting_heldout_argument():
    with pytest.raises(DataError, match="heldout_dim: requested 3 but the file's shapes give 2"):
        load_lfads_h5(h5_bytes(arrays()), heldout_dim=3)


def _drop(key):
    def edit(c):
        del c[key]

    return edit


def _set(key, make):
    def edit(c):
        c[key] = make(c)

    return edit


def _poke(key, value, where=(0, 0, -1)):
    def edit(c):
        arr = c[key].astype(np.float64)
        arr[where] = value
        c[key] = arr
        if key == "train_recon_data":
            c["train_encod_data"] = arr[:, :T_OBS, :D_IN]

    return edit


def _masks(n_train, n_valid, train_cols, valid_cols):
    def edit(c):
        c["train_decode_mask"] = np.ones((n_train, train_cols), dtype=bool)
        c["valid_decode_mask"] = np.ones((n_valid, valid_cols), dtype=bool)

    return edit


def _inds(train, valid):
    def edit(c):
        c["train_inds"], c["valid_inds"] = train, valid

    return edit


BAD_FILES = [
    (_drop("train_encod_data"), "train_encod_data: missing"),
    (_drop("valid_recon_data"), "valid_recon_data: missing"),
    (_set("train_encod_data", lambda c: c["train_encod_data"][0]), "expected 3 dimensions"),
    (_set("valid_encod_data", lambda c: c["valid_encod_data"][:, :, :0]), "empty array"),
    (
        _set("valid_recon_data", lambda c: c["valid_recon_data"][:3]),
        "valid_recon_data: shape (3, 13, 7) does not match (4, 13, 7)",
    ),
    (
        _set("valid_encod_data", lambda c: c["valid_encod_data"][:, :, :4]),
        "valid_encod_data: (bins, channels) (10, 4) differ from train's (10, 5)",
    ),
    (
        _set("train_recon_data", lambda c: c["train_recon_data"][:, :8]),
        "train_recon_data: 8 bins, fewer than encod_data's 10",
    ),
    (
        _set("train_recon_data", lambda c: c["train_recon_data"][:, :, :4]),
        "4 channels, fewer than encod_data's 5",
    ),
    (_poke("train_recon_data", np.nan), "train_recon_data: 1 NaN or infinite value(s)"),
    (_poke("train_recon_data", np.inf), "NaN or infinite"),
    (_poke("train_recon_data", -1.0), "negative spike counts"),
    (_poke("train_recon_data", 0.5), "non-integer spike counts"),
    (
        _poke("valid_recon_data", 9.0, where=(0, 0, 0)),
        "valid_recon_data: held-in channels over the observed bins differ",
    ),
    (_set("train_encod_data", lambda c: np.full((2, 2, 2), b"x")), "non-numeric dtype"),
    (_drop("conversion_factor"), "conversion_factor: missing"),
    (_set("conversion_factor", lambda c: np.float64(0.0)), "expected one positive number"),
    (_poke("valid_truth", np.nan), "valid_truth: 1 NaN or infinite"),
    (_set("valid_behavior", lambda c: c["valid_behavior"][:, :5]), "valid_behavior: shape"),
    (_poke("train_behavior", np.inf), "train_behavior: 1 infinite"),
    (_set("train_cond_idx", lambda c: np.arange(3)), "3 entries for 12 trials"),
    (_set("train_cond_idx", lambda c: np.full(N_TRAIN, 7)), "condition 7 has no psth row"),
    (_set("psth", lambda c: c["psth"][:, :, :3]), "psth: 3 channels; expected 7"),
    (_set("valid_ext_input", lambda c: c["valid_ext_input"][:, :4]), "valid_ext_input: shape"),
    # Used to pass: valid (the fitness) was then scored without the inputs.
    (_drop("valid_ext_input"), "valid_ext_input: missing, but train has 1 inputs"),
    # Used to pass: the fitness was then scored on trials trained on.
    (
        _inds(np.arange(N_TRAIN), np.array([20, 3, 21, 22])),
        "valid_inds: 1 trial(s) also in train_inds (e.g. 3)",
    ),
    # Used to pass, and vel R2 failed after training (baseline, finalize).
    (
        _masks(N_TRAIN, N_VALID, train_cols=2, valid_cols=3),
        "valid_decode_mask: 3 masks, train has 2",
    ),
    # Used to be cut to 1, silently: another trial's row.
    (
        _set("train_inds", lambda c: np.full(N_TRAIN, 1.7)),
        "train_inds: trial indices must be whole",
    ),
    # Used to pass: to-nwb would then take a trial or unit from the end of its table.
    (
        _set("valid_inds", lambda c: np.arange(N_VALID) - 1),
        "valid_inds: trial indices must be >= 0, got -1",
    ),
    (
        _set("nwb_unit_index", lambda c: np.arange(D_IN + D_OUT) - 2),
        "nwb_unit_index: unit rows must be >= 0, got -2",
    ),
]


@pytest.mark.parametrize(("edit", "message"), BAD_FILES)
def test_bad_files_raise_one_line_naming_the_key(edit, message):
    contents = arrays()
    edit(contents)
    with pytest.raises(DataError) as info:
        load_lfads_h5(h5_bytes(contents))
    text = str(info.value)
    assert message in text
    assert text.startswith("<bytes>: ") and "\n" not in text


def test_nan_behavior_rows_are_allowed():
    contents = arrays()
    contents["train_behavior"][0, :3] = np.nan  # NLB pads missing behaviour with NaN
    behavior = load_lfads_h5(h5_bytes(contents)).train.behavior
    assert behavior is not None and np.isnan(behavior).any()


def test_not_hdf5_and_missing_files_name_the_path(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(DataError, match=f"^{text}: not an HDF5 file"):
        load_lfads_h5(text)
    with pytest.raises(DataError, match="data file not found"):
        load_lfads_h5(tmp_path / "nope.h5")
    with pytest.raises(DataError, match="train_encod_data: missing"):
        load_lfads_h5(h5_bytes({"something_else": np.zeros(3)}))


def test_gigantic_declared_dataset_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        # Chunked and never written: tiny on disk, 40 GB once read.
        f.create_dataset("train_encod_data", shape=(100_000, 1000, 100), dtype="f4", chunks=True)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(
        DataError, match=r"train_encod_data: declared shape .* over the 4 GiB limit"
    ):
        load_lfads_h5(path)


def test_writing_invalid_data_leaves_no_file(tmp_path):
    good = load_lfads_h5(h5_bytes(arrays()))
    assert good.train.recon_data is not None
    bad_recon = good.train.recon_data.copy()
    bad_recon[0, 0, -1] = -3.0
    bad = LfadsData(Split(good.train.encod_data, bad_recon), good.valid, source="memory")
    with pytest.raises(DataError, match="memory: train_recon_data: negative spike counts"):
        write_lfads_h5(bad, tmp_path / "out.h5")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="does not exist"):
        write_lfads_h5(good, tmp_path / "no" / "out.h5")
    with pytest.raises(DataError, match="is a folder"):
        write_lfads_h5(good, tmp_path)
    validate_data(good)  # the untouched dataset is fine


def test_data_modules_do_not_import_torch():
    code = (
        "import sys, autolfads.trainer.data.dataset, autolfads.trainer.data.synth, "
        "autolfads.trainer.evaluation.metrics, autolfads.trainer.evaluation.smoothing, autolfads.cli.data_cmd; "
        "sys.exit('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, timeout=60)
    assert result.returncode == 0
