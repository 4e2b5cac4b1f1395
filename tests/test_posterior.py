"""Posterior sampling outputs and the lfads_output h5 file."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
import torch

from autolfads.config import parse_config
from autolfads.errors import ConfigError
from autolfads.trainer.data.dataset import LfadsData, Split
from autolfads.trainer.data.synth import make_chaotic_rnn
from autolfads.trainer.evaluation.posterior import (
    OUTPUT_FIELDS,
    posterior_sample,
    write_lfads_output,
)
from autolfads.trainer.model.session import TrainingSession

torch.set_num_threads(1)

MODEL = {
    "gen_dim": 10,
    "fac_dim": 3,
    "ic_enc_dim": 6,
    "ci_enc_dim": 4,
    "con_dim": 5,
    "co_dim": 2,
    "ic_dim": 4,
}


def _session(data: LfadsData, model=MODEL) -> TrainingSession:
    cfg = parse_config(
        {"data": {"path": "unused.h5"}, "model": model, "training": {"batch_size": 16}}
    )
    return TrainingSession.fresh(cfg, data, {}, seed=0)


@pytest.fixture(scope="module")
def data_with_test():
    """Train/valid plus a test split without targets; every split has measured
    inputs (ext_input) to cover the generator's external-input path."""
    data = make_chaotic_rnn(
        seed=2, n_conditions=4, n_replications=5, n_neurons=9, n_heldout=2, n_bins=10, n_fp_bins=3
    )
    rng = np.random.default_rng(0)

    def with_ext(encod: np.ndarray, recon: np.ndarray | None) -> Split:
        ext = rng.random((encod.shape[0], data.recon_seq_len, 2)).astype(np.float32)
        return Split(encod, recon, ext_input=ext)

    return LfadsData(
        with_ext(data.train.encod_data, data.train.recon_data),
        with_ext(data.valid.encod_data, data.valid.recon_data),
        with_ext(data.valid.encod_data[:3], None),
    )


def test_output_names_and_shapes_for_all_splits(data_with_test):
    data = data_with_test
    session = _session(data)
    out = posterior_sample(session, data, num_samples=3, batch_size=7)
    t, n = data.recon_seq_len, data.recon_data_dim
    for split, trials in (("train", 16), ("valid", 4), ("test", 3)):
        shapes = {
            "output_params": (trials, t, n),
            "factors": (trials, t, 3),
            "ic_mean": (trials, 4),
            "ic_std": (trials, 4),
            "co_means": (trials, t, 2),
            "co_stds": (trials, t, 2),
            "gen_states": (trials, t, 10),
            "gen_init": (trials, 10),
            "gen_inputs": (trials, t, 4),
            "con_states": (trials, t, 5),
        }
        assert set(shapes) == set(OUTPUT_FIELDS)
        for field, shape in shapes.items():
            arr = out[f"{split}_{field}"]
            assert arr.shape == shape and arr.dtype == np.float32, (split, field)
    assert (out["train_output_params"] > 0).all()
    assert session.model.training  # sampling restored the training mode


def test_average_is_independent_of_batching_and_reproducible(data_with_test):
    session = _session(data_with_test)
    a = posterior_sample(session, data_with_test, num_samples=4, batch_size=5, seed=1)
    b = posterior_sample(session.model, data_with_test, num_samples=4, batch_size=64, seed=1)
    # Batching changes which rows share a noise draw, not the mean's meaning:
    # the IC posterior mean is deterministic, so it must match exactly.
    np.testing.assert_allclose(a["valid_ic_mean"], b["valid_ic_mean"], rtol=1e-5, atol=1e-6)
    c = posterior_sample(session, data_with_test, num_samples=4, batch_size=5, seed=1)
    for key in a:
        np.testing.assert_array_equal(a[key], c[key])


def test_more_samples_average_out_posterior_noise(data_with_test):
    session = _session(data_with_test)
    one = [
        posterior_sample(session, data_with_test, 1, 64, seed=s)["valid_output_params"]
        for s in range(2)
    ]
    many = [
        posterior_sample(session, data_with_test, 40, 256, seed=s)["valid_output_params"]
        for s in range(2)
    ]
    assert np.abs(many[0] - many[1]).mean() < 0.5 * np.abs(one[0] - one[1]).mean()


def test_no_controller_gives_zero_width_controller_outputs():
    data = make_chaotic_rnn(
        seed=3, n_conditions=2, n_replications=5, n_neurons=6, n_heldout=1, n_bins=8, n_fp_bins=0
    )
    model = {**MODEL, "ci_enc_dim": 0, "con_dim": 0, "co_dim": 0}
    out = posterior_sample(_session(data, model), data, num_samples=2)
    assert out["train_co_means"].shape == (8, 8, 0)
    assert out["train_con_states"].shape == (8, 8, 0)
    assert out["train_gen_inputs"].shape == (8, 8, 0)


def test_h5_written_to_path_file_object_and_bytes(tmp_path, data_with_test):
    out = posterior_sample(_session(data_with_test), data_with_test, num_samples=2)
    path = tmp_path / "lfads_output_x.h5"
    assert write_lfads_output(out, path) is None
    blob = write_lfads_output(out)
    assert blob is not None
    handle = io.BytesIO()
    write_lfads_output(out, handle)
    for source in (path, io.BytesIO(blob), io.BytesIO(handle.getvalue())):
        with h5py.File(source, "r") as f:
            assert set(f.keys()) == set(out)
            for key, arr in out.items():
                np.testing.assert_array_equal(f[key][()], arr)
    assert [p.name for p in tmp_path.iterdir()] == ["lfads_output_x.h5"]


def test_bad_sampling_arguments(data_with_test):
    with pytest.raises(ConfigError, match="num_samples >= 1"):
        posterior_sample(_session(data_with_test), data_with_test, num_samples=0)


def test_h5_with_data_also_holds_the_inputs(tmp_path, data_with_test):
    out = posterior_sample(_session(data_with_test), data_with_test, num_samples=2)
    path = tmp_path / "lfads_output_x.h5"
    write_lfads_output(out, path, data=data_with_test)
    blob = write_lfads_output(out, data=data_with_test)
    assert blob is not None
    with (
        h5py.File(io.BytesIO(blob), "r") as mem,
        h5py.File(path, "r") as f,
    ):
        for h5 in (mem, f):
            assert set(out) <= set(h5.keys())
            np.testing.assert_array_equal(
                h5["valid_recon_data"][()], data_with_test.valid.recon_data
            )
            np.testing.assert_array_equal(h5["train_output_params"][()], out["train_output_params"])
