"""Drive lfads-torch's LFADS for `bench_lfads_torch.py` (runs in the peer interpreter).

Not run by hand: `bench_lfads_torch.py` starts it with the `--peer-python`
interpreter, in which `lfads_torch` and `pytorch_lightning` are importable and
`autolfads` need not be. It builds lfads-torch's own `LFADS` LightningModule
with the objects its `configs/model/nlb_mc_maze.yaml` names (identity read-in,
`FanInLinear` read-out, Poisson reconstruction, AR(1) controller-output prior,
Gaussian IC prior, coordinated dropout), with the sizes and hyperparameters the
controller sends, and its `BasicDataModule` on the controller's HDF5 file.

    speed:   JSON lines on stdin/stdout, one command at a time, so the controller
             can interleave these timings with autolfads' in the same run:
             {"cmd": "steps", "n": N}        -> {"wall": [...], "cpu": [...]} (s)
             {"cmd": "epochs_begin", "n": N} -> then N x {"cmd": "epoch"}, each
                                                answered {"seconds": s}; then
                                                {"done": true} when the fit ends
    quality: train for E epochs with a Lightning Trainer, then write the
             posterior-mean rates of train and valid (K samples) to an .npz.

A training step here is what Lightning's automatic optimisation does on one
batch: training_step, zero_grad, backward, on_before_optimizer_step,
clip_grad_norm_(gradient_clip_val), AdamW step. Epochs go through a real
`pytorch_lightning.Trainer` (train + validation loop, `self.log` and all).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lfads_torch.datamodules import BasicDataModule
from lfads_torch.model import LFADS
from lfads_torch.modules.augmentations import AugmentationStack, CoordinatedDropout
from lfads_torch.modules.priors import AutoregressiveMultivariateNormal, MultivariateNormal
from lfads_torch.modules.readin_readout import FanInLinear
from lfads_torch.modules.recons import Poisson
from lfads_torch.tuples import SessionBatch
from torch import nn

GRAD_CLIP = 200.0  # configs/single.yaml: trainer.gradient_clip_val


def build_model(spec: dict[str, Any]) -> LFADS:
    """lfads-torch's LFADS with nlb_mc_maze.yaml's structure and `spec`'s numbers.

    spec["dims"]: encod_data_dim, encod_seq_len, recon_seq_len, recon_data_dim,
    ic_enc_dim, ci_enc_dim, con_dim, co_dim, ic_dim, gen_dim, fac_dim;
    spec["hparams"]: the training values (same names as lfads-torch's).
    """
    d, hp = spec["dims"], spec["hparams"]
    cd = CoordinatedDropout(cd_rate=hp["cd_rate"], cd_pass_rate=0.0, ic_enc_seq_len=0)
    return LFADS(
        encod_data_dim=d["encod_data_dim"],
        encod_seq_len=d["encod_seq_len"],
        recon_seq_len=d["recon_seq_len"],
        ext_input_dim=0,
        ic_enc_seq_len=0,
        ic_enc_dim=d["ic_enc_dim"],
        ci_enc_dim=d["ci_enc_dim"],
        ci_lag=1,
        con_dim=d["con_dim"],
        co_dim=d["co_dim"],
        ic_dim=d["ic_dim"],
        gen_dim=d["gen_dim"],
        fac_dim=d["fac_dim"],
        dropout_rate=hp["dropout_rate"],
        reconstruction=nn.ModuleList([Poisson()]),
        variational=True,
        co_prior=AutoregressiveMultivariateNormal(tau=10.0, nvar=0.1, shape=d["co_dim"]),
        ic_prior=MultivariateNormal(mean=0.0, variance=0.1, shape=d["ic_dim"]),
        ic_post_var_min=1e-4,
        cell_clip=5.0,
        train_aug_stack=AugmentationStack(transforms=[cd], batch_order=[0], loss_order=[0]),
        infer_aug_stack=AugmentationStack(),
        readin=nn.ModuleList([nn.Identity()]),
        readout=nn.ModuleList([FanInLinear(d["fac_dim"], d["recon_data_dim"])]),
        lr_scheduler=False,
        lr_stop=1e-5,
        lr_decay=0.95,
        lr_patience=6,
        recon_reduce_mean=True,
        **{k: hp[k] for k in _PASSED_HPARAMS},
    )


_PASSED_HPARAMS = (
    "loss_scale",
    "lr_init",
    "lr_adam_beta1",
    "lr_adam_beta2",
    "lr_adam_epsilon",
    "weight_decay",
    "l2_start_epoch",
    "l2_increase_epoch",
    "l2_ic_enc_scale",
    "l2_ci_enc_scale",
    "l2_gen_scale",
    "l2_con_scale",
    "kl_start_epoch",
    "kl_increase_epoch",
    "kl_ic_scale",
    "kl_co_scale",
)


def make_trainer(max_epochs: int, callbacks: list[pl.Callback]) -> pl.Trainer:
    """configs/single.yaml's Trainer less its loggers, checkpoints and early stopping."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        gradient_clip_val=GRAD_CLIP,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def first_batch(dm: BasicDataModule, batch_size: int) -> dict[int, tuple[SessionBatch, tuple]]:
    """The first `batch_size` training trials, shaped as the train dataloader's batches."""
    tensors = dm.train_ds[0].model_tensors
    return {0: (SessionBatch(*[t[:batch_size] for t in tensors]), ())}


def time_steps(model: LFADS, opt: torch.optim.Optimizer, batch: dict, n: int) -> dict:
    """Wall and CPU seconds of `n` training steps on one batch, Lightning's order."""
    model.train()
    wall, cpu = [], []
    for _ in range(n):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = model.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.on_before_optimizer_step(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        loss.item()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu}


class EpochOnCommand(pl.Callback):
    """Hold each epoch until the controller asks for it; report its wall time."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        msg = self.channel.read()
        if msg.get("cmd") != "epoch":
            raise SystemExit(f"lfads_torch_driver: expected an epoch command, got {msg}")
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs the validation loop before this hook: train + valid.
        self.channel.write({"seconds": time.perf_counter() - self.start})


class Channel:
    """JSON lines: commands on stdin, replies on the original stdout (everything
    else the libraries print goes to stderr)."""

    def __init__(self) -> None:
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def read(self) -> dict:
        line = sys.stdin.readline()
        return json.loads(line) if line.strip() else {"cmd": "quit"}

    def write(self, msg: dict) -> None:
        self.out.write(json.dumps(msg) + "\n")


def serve_speed(spec: dict, dm: BasicDataModule) -> None:
    channel = Channel()
    pl.seed_everything(spec["seed"], verbose=False)
    model = build_model(spec)
    opt = model.configure_optimizers()
    batch = first_batch(dm, spec["batch_size"])
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    channel.write({"ready": True, "trainable_parameters": n_params})
    while True:
        msg = channel.read()
        if msg["cmd"] == "steps":
            channel.write(time_steps(model, opt, batch, int(msg["n"])))
        elif msg["cmd"] == "epochs_begin":
            trainer = make_trainer(int(msg["n"]), [EpochOnCommand(channel)])
            trainer.fit(model, datamodule=dm)
            channel.write({"done": True})
        elif msg["cmd"] == "quit":
            return
        else:
            raise SystemExit(f"lfads_torch_driver: unknown command {msg}")


def posterior_means(model: LFADS, dm: BasicDataModule, n_samples: int) -> dict[str, np.ndarray]:
    """Rates (trials, recon_seq_len, recon_data_dim) averaged over posterior
    samples, as lfads-torch's run_posterior_sampling computes them."""
    model.eval()
    out = {}
    with torch.no_grad():
        for split, ds in (("train", dm.train_ds[0]), ("valid", dm.valid_ds[0])):
            chunks = []
            for start in range(0, len(ds), 512):
                part = SessionBatch(*[t[start : start + 512] for t in ds.model_tensors])
                batch = {0: (part, ())}
                total = sum(
                    model.predict_step(batch, 0, sample_posteriors=True)[0].output_params
                    for _ in range(n_samples)
                )
                chunks.append((total / n_samples).numpy())
            out[f"{split}_output_params"] = np.concatenate(chunks)
    return out


def run_quality(spec: dict, dm: BasicDataModule, epochs: int, samples: int, out: str) -> None:
    pl.seed_everything(spec["seed"], verbose=False)
    model = build_model(spec)
    start = time.perf_counter()
    make_trainer(epochs, []).fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    rates = posterior_means(model, dm, samples)
    payload: dict[str, Any] = {"seconds": seconds, **rates}
    np.savez(out, **payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["speed", "quality"])
    parser.add_argument("--data", required=True, help="HDF5 file, lfads-torch layout")
    parser.add_argument("--spec", required=True, help="JSON: dims, hparams, batch_size, seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="quality: epochs to train")
    parser.add_argument("--samples", type=int, default=20, help="quality: posterior samples")
    parser.add_argument("--out", default="", help="quality: .npz for the rates")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # its banner and tips
    spec = json.loads(args.spec)
    dm = BasicDataModule(datafile_pattern=args.data, batch_size=spec["batch_size"])
    dm.setup()
    if args.mode == "speed":
        serve_speed(spec, dm)
    else:
        run_quality(spec, dm, args.epochs, args.samples, args.out)


if __name__ == "__main__":
    main()
