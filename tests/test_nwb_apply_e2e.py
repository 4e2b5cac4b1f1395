"""NWB -> from-nwb -> `autolfads run` -> apply on new trials -> to-nwb -> pynwb.

One tiny search on an MC_Maze-like NWB file is shared by the tests; the model
is then applied to a second recording holding the validation trials and a few
others, which must reproduce finalize's validation outputs exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from autolfads.cli import main
from autolfads.storage import open_store
from autolfads.trainer.data.lfads_h5 import load_lfads_h5

pytest.importorskip("pynwb")
pytest.importorskip("torch")

from nwb_fixtures import make_maze_truth, write_maze_nwb  # noqa: E402

pytestmark = pytest.mark.slow

RUN = "nwb-tiny"
CONFIG = """\
name: nwb-tiny
data: {{path: {data}}}
model: {{ic_enc_dim: 8, ci_enc_dim: 8, con_dim: 8, co_dim: 2, ic_dim: 8, gen_dim: {gen_dim}, fac_dim: 8}}
training: {{batch_size: 32, l2_increase_epochs: 1, kl_increase_epochs: 1, posterior_samples: 4, seed: 5}}
pbt: {{population: 2, burn_in_epochs: 1, generation_epochs: 1, max_generations: 1,
      fitness: valid_heldout_recon_smth}}
"""
MAZE_20 = ("--preset", "mc_maze", "--bin-ms", "20")


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    truth = make_maze_truth(n_trials=160, n_units=20, n_heldout=5, seed=1)
    nwb = write_maze_nwb(root / "maze.nwb", truth)
    data = root / "maze.h5"
    assert main(["data", "from-nwb", str(nwb), "--out", str(data), *MAZE_20]) == 0
    config = root / "tiny.yaml"
    config.write_text(CONFIG.format(data=data, gen_dim=16))
    proc = subprocess.run(
        [sys.executable, "-m", "autolfads", "run", str(config), "--storage", str(root / "runs"),
         "--workers", "1", "--threads", "1", "--progress", "plain", "--no-report"],
        cwd=root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = root / "runs" / RUN / "best"
    # A new recording: the validation trials and the first 20 training trials.
    val_rows = np.flatnonzero(truth.split == "val")
    subset = np.sort(np.concatenate([val_rows, np.flatnonzero(truth.split == "train")[:20]]))
    new_nwb = write_maze_nwb(root / "new.nwb", truth, trials=subset)
    new = root / "new.h5"
    flags = ("--units-from", str(data))
    assert main(["data", "from-nwb", str(new_nwb), "--out", str(new), *MAZE_20, *flags]) == 0
    return {
        "root": root,
        "truth": truth,
        "nwb": nwb,
        "data": data,
        "best": best,
        "config": config,
        "finalized": next(best.glob("lfads_output_*.h5")),
        "new_nwb": new_nwb,
        "new": new,
        "subset": subset,
    }


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), lines
    return lines[0]


def test_apply_on_new_trials_reproduces_finalize_and_goes_back_to_nwb(search, capsys) -> None:
    applied = search["root"] / "applied.h5"
    assert main(["apply", str(search["best"]), str(search["new"]), "--out", str(applied)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["posterior_samples"] == 4 and summary["seed"] == 5
    assert {"co_bps", "fp_bps", "vel_r2", "psth_r2"} <= summary.keys()
    with h5py.File(search["finalized"]) as fin, h5py.File(applied) as app:
        assert app["train_output_params"].shape[0] == 20 != fin["train_output_params"].shape[0]
        for key in ("valid_output_params", "valid_factors", "valid_co_means"):
            np.testing.assert_array_equal(app[key][()], fin[key][()])
        assert "test_output_params" not in app  # the new recording has no test trials
        rates = {s: app[f"{s}_output_params"][()] for s in ("train", "valid")}
    # to-nwb: a copy of the new recording with the outputs, read back by pynwb alone.
    result = search["root"] / "result.nwb"
    args = [str(applied), "--nwb", str(search["new_nwb"]), "--out", str(result)]
    assert main(["data", "to-nwb", *args]) == 0
    _check_result_nwb(result, load_lfads_h5(search["new"]), rates)


def _check_result_nwb(result: Path, data, rates: dict[str, np.ndarray]) -> None:
    from pynwb import NWBHDF5IO

    rows = np.concatenate([getattr(data, s).trial_idx for s in rates])
    order = np.argsort(rows)
    want = np.concatenate(list(rates.values()))[order] / 0.020  # spikes/s
    starts = np.concatenate([data.attrs[f"nwb_{s}_start"] for s in rates])[order]
    with NWBHDF5IO(str(result), "r") as io:
        nwb = io.read()
        assert "hand_vel" in nwb.processing["behavior"].data_interfaces  # the copy is whole
        assert len(nwb.trials) == rows.size and len(nwb.units) == 20
        module = nwb.processing["lfads"]
        series = module["rates"]
        assert series.unit == "spikes/s"
        np.testing.assert_allclose(series.data[:].reshape(want.shape), want, rtol=1e-6)
        times = series.timestamps[:].reshape(want.shape[:2])
        np.testing.assert_allclose(times[:, 0], starts + 0.010)
        assert module["factors"].data.shape == (want.shape[0] * want.shape[1], 8)
        assert module["inferred_inputs"].data.shape[1] == 2
        units = module["rates_units"]
        np.testing.assert_array_equal(units["unit"].data[:], data.attrs["nwb_unit_index"])
        assert units["heldout"].data[:].sum() == data.heldout_dim
        trials = module["lfads_trials"]
        np.testing.assert_array_equal(trials["trial"].data[:], np.sort(rows))
        assert set(trials["split"].data[:]) == {"train", "valid"}
        ref = trials["timeseries"][3][0]
        assert (ref.idx_start, ref.count) == (3 * want.shape[1], want.shape[1])


def test_apply_refuses_data_or_config_that_do_not_fit(search, tmp_path, capsys) -> None:
    five_ms = tmp_path / "five.h5"
    assert main(["data", "from-nwb", str(search["new_nwb"]), "--out", str(five_ms),
                 "--preset", "mc_maze", "--units-from", str(search["data"])]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "out.h5"
    assert main(["apply", str(search["best"]), str(five_ms), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "140 observed bins (encod_seq_len)" in line and "trained on 35" in line
    other_units = tmp_path / "other.h5"
    assert main(["data", "from-nwb", str(search["nwb"]), "--out", str(other_units),
                 *MAZE_20, "--heldout", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["apply", str(search["best"]), str(other_units), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "17 held-in neurons (encod_data_dim)" in line and "trained on 14" in line
    other_config = tmp_path / "other.yaml"
    other_config.write_text(CONFIG.format(data=search["data"], gen_dim=32))
    args = [str(search["best"]), str(search["new"]), "--out", str(out)]
    assert main(["apply", *args, "--config", str(other_config)]) == 2
    assert "model.gen_dim = 16 but the config says 32" in one_error_line(capsys)
    assert main(["apply", str(search["root"] / "runs" / RUN), *args[1:]]) == 2
    assert "expected <run>/best or" in one_error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_to_nwb_refuses_another_source_or_a_taken_module(search, tmp_path, capsys) -> None:
    out = tmp_path / "r.nwb"
    # finalize's outputs refer to trial rows the new recording does not have.
    args = [str(search["finalized"]), "--nwb", str(search["new_nwb"]), "--out", str(out)]
    assert main(["data", "to-nwb", *args]) == 2
    assert "pass the NWB file the data was converted from" in one_error_line(capsys)
    assert main(["data", "to-nwb", str(search["data"]), "--nwb", str(search["nwb"]),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "not the input data" in one_error_line(capsys)
    first = tmp_path / "first.nwb"
    args = [str(search["finalized"]), "--nwb", str(search["nwb"])]
    assert main(["data", "to-nwb", *args, "--out", str(first)]) == 0
    capsys.readouterr()
    assert main(["data", "to-nwb", str(search["finalized"]), "--nwb", str(first),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "already has a processing module 'lfads'" in one_error_line(capsys)
    assert main(["data", "to-nwb", *args, "--out", str(out), "--module", "a/b"]) == 2
    assert "cannot contain '/'" in one_error_line(capsys)
    folder = tmp_path / "folder"
    folder.mkdir()  # used to end in IsADirectoryError (a traceback)
    assert main(["data", "to-nwb", *args, "--out", str(folder), "--force"]) == 2
    assert "is a folder" in one_error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_apply_reads_the_model_from_s3(search, s3_store_url, tmp_path, capsys) -> None:
    store = open_store(s3_store_url)
    run_dir = search["root"] / "runs" / RUN
    store.put_bytes(f"{RUN}/config.yaml", (run_dir / "config.yaml").read_bytes())
    store.put_bytes(f"{RUN}/best/checkpoint.pt", (run_dir / "best" / "checkpoint.pt").read_bytes())
    bucket_prefix, query = s3_store_url.split("?", 1)
    model = f"{bucket_prefix}/{RUN}/best?{query}"
    out = tmp_path / "s3.h5"
    assert main(["apply", model, str(search["new"]), "--out", str(out)]) == 0
    local = tmp_path / "local.h5"
    assert main(["apply", str(search["best"]), str(search["new"]), "--out", str(local)]) == 0
    with h5py.File(out) as a, h5py.File(local) as b:
        np.testing.assert_array_equal(a["valid_output_params"][()], b["valid_output_params"][()])


def test_apply_takes_any_member_checkpoint_or_a_train_folder(search, tmp_path, capsys) -> None:
    members = search["root"] / "runs" / RUN / "members"
    checkpoint = sorted(members.glob("*/gen-*/checkpoint.pt"))[0]
    out = tmp_path / "member.h5"
    assert main(["apply", str(checkpoint), str(search["new"]), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["model"].endswith("/".join(checkpoint.parts[-5:]))
    folder = tmp_path / "trained"
    assert main(["train", str(search["config"]), "--out", str(folder), "--epochs", "1",
                 "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "trained.h5"
    assert main(["apply", str(folder), str(search["new"]), "--out", str(out)]) == 0
    with h5py.File(out) as f:
        assert f["valid_output_params"].shape == (38, 45, 19)
