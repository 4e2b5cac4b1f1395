"""`autolfads train` end to end on tiny configs, and its one-line errors."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import pytest
import torch
import yaml

from autolfads.cli import main
from autolfads.cli.train_cmd import load_run_data
from autolfads.config import load_config
from autolfads.trainer.data.lfads_h5 import write_lfads_h5
from autolfads.trainer.data.synth import make_chaotic_rnn
from autolfads.trainer.model.session import TrainingSession

torch.set_num_threads(1)

MODEL = {
    "gen_dim": 12,
    "fac_dim": 4,
    "ic_enc_dim": 6,
    "ci_enc_dim": 4,
    "con_dim": 4,
    "co_dim": 1,
    "ic_dim": 4,
}


def _write_config(tmp_path, data_path="data.h5", **extra):
    raw = {
        "name": "tiny",
        "data": {"path": data_path},
        "model": MODEL,
        "training": {
            "batch_size": 32,
            "max_epochs": 3,
            "device": "cpu",
            "num_threads": 1,
            "posterior_samples": 3,
            "l2_increase_epochs": 1,
            "kl_increase_epochs": 1,
        },
        "pbt": {"burn_in_epochs": 2},
        **extra,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def tiny_run(tmp_path):
    data = make_chaotic_rnn(
        seed=0, n_conditions=6, n_replications=10, n_neurons=10, n_heldout=2, n_bins=10, n_fp_bins=2
    )
    write_lfads_h5(data, tmp_path / "data.h5")
    return _write_config(tmp_path), data


def test_train_writes_metrics_checkpoint_and_posterior_outputs(tmp_path, tiny_run, capsys):
    config, data = tiny_run
    out = tmp_path / "out"
    assert main(["train", str(config), "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert {"train_loss", "valid_recon_smth", "valid_bps", "lr"} <= set(lines[-1])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs"] == 3 and summary["last_epoch"] == lines[-1]
    assert {"bps", "co_bps", "fp_bps"} <= set(summary["evaluation"])
    with h5py.File(out / "lfads_output_data.h5", "r") as f:
        assert f["valid_output_params"].shape == data.valid.recon_data.shape
        assert f["train_factors"].shape == (data.train.n_trials, data.recon_seq_len, 4)
    blob = (out / "checkpoint.pt").read_bytes()
    restored = TrainingSession.from_checkpoint(load_config(config), data, blob)
    assert restored.epoch == 3
    assert restored.valid_recon_smth == pytest.approx(lines[-1]["valid_recon_smth"])
    err = capsys.readouterr().err
    assert "epoch 3/3" in err and "ETA" in err and "valid_recon_smth" in err


def test_epochs_quiet_and_jsonl_options(tmp_path, tiny_run, capsys):
    config, _ = tiny_run
    jsonl = tmp_path / "log.jsonl"
    args = [
        "train",
        str(config),
        "--out",
        str(tmp_path / "o"),
        "--epochs",
        "1",
        "--quiet",
        "--jsonl",
        str(jsonl),
    ]
    assert main(args) == 0
    assert len(jsonl.read_text().splitlines()) == 1
    assert capsys.readouterr().err == ""


def test_existing_output_folder_is_refused_unless_forced(tmp_path, tiny_run, capsys):
    config, _ = tiny_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["train", str(config), "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autolfads: error:") and "--force" in err and "\n" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (
        main(["train", str(config), "--out", str(out), "--epochs", "1", "--quiet", "--force"]) == 0
    )
    assert (out / "checkpoint.pt").exists()


def test_missing_data_is_generated_from_synth_once(tmp_path):
    # The data step of `autolfads train` alone, with generator sizes from the config.
    config = _write_config(tmp_path, "gen/chaotic.h5")
    raw = yaml.safe_load(config.read_text())
    sizes = {"n_conditions": 12, "n_replications": 5, "n_bins": 20}
    raw["data"]["synth"] = {"kind": "chaotic-rnn", "seed": 3, "sizes": sizes}
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    data = load_run_data(cfg)
    path = tmp_path / "gen" / "chaotic.h5"
    assert path.exists() and data.train.n_trials > 0 and data.heldout_dim > 0
    assert data.train.n_trials + data.valid.n_trials == 12 * 5 and data.encod_seq_len == 20
    stamp = path.stat().st_mtime_ns
    again = load_run_data(cfg)  # present now: loaded, not regenerated
    assert path.stat().st_mtime_ns == stamp
    assert (again.train.encod_data == data.train.encod_data).all()


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("missing_config", "config file not found"),
        ("bad_config", "model.gen_dim"),
        ("missing_data", "data file not found"),
        ("bad_epochs", "--epochs must be >= 1"),
    ],
)
def test_bad_input_gives_one_line_errors(tmp_path, capsys, setup, fragment):
    config = _write_config(tmp_path)
    args = ["train", str(config), "--out", str(tmp_path / "out"), "--quiet"]
    if setup == "missing_config":
        args[1] = str(tmp_path / "nope.yaml")
    elif setup == "bad_config":
        raw = yaml.safe_load(config.read_text())
        raw["model"]["gen_dim"] = -3
        config.write_text(yaml.safe_dump(raw))
    elif setup == "bad_epochs":
        args += ["--epochs", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autolfads: error:") and fragment in err and "\n" not in err
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_apply_on_the_train_folder_reproduces_its_outputs(tmp_path, capsys):
    # `apply` samples the posterior with `training.seed`; `train` used seed 0,
    # so with any other seed the two disagreed on the same checkpoint and data.
    data = make_chaotic_rnn(
        seed=0, n_conditions=6, n_replications=10, n_neurons=10, n_heldout=2, n_bins=10, n_fp_bins=2
    )
    write_lfads_h5(data, tmp_path / "data.h5")
    config = _write_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["training"].update(seed=3, max_epochs=1)
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["train", str(config), "--out", str(out)]) == 0
    applied = tmp_path / "applied.h5"
    assert main(["apply", str(out), str(tmp_path / "data.h5"), "--out", str(applied)]) == 0
    with h5py.File(out / "lfads_output_data.h5", "r") as a, h5py.File(applied, "r") as b:
        for name in ("train_output_params", "valid_output_params", "valid_factors"):
            assert (a[name][()] == b[name][()]).all(), name
    # Data whose valid held-out neurons never spike: co-bps is NaN, which the
    # printed summary must give as null (strict JSON: jq refuses NaN).
    assert data.valid.recon_data is not None
    recon = data.valid.recon_data.copy()
    recon[:, :, data.encod_data_dim :] = 0
    quiet = replace(data, valid=replace(data.valid, recon_data=recon))
    write_lfads_h5(quiet, tmp_path / "quiet.h5")
    capsys.readouterr()
    args = ["apply", str(out), str(tmp_path / "quiet.h5"), "--out", str(tmp_path / "q.h5")]
    assert main(args) == 0

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    summary = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert summary["co_bps"] is None and summary["bps"] is not None
