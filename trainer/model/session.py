"""One LFADS model being trained: a resumable sequence of epochs.

A `TrainingSession` is what a PBT worker runs for one segment: build it fresh
or from checkpoint bytes, optionally change the tunable hyperparameters, call
`train_epoch()` a number of times, and save `checkpoint()` bytes. On CPU the
same seed and hyperparameters give bitwise-identical results, and a session
restored from a checkpoint continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from autolfads.config import RunConfig, hparam_problem
from autolfads.errors import AutolfadsError, ConfigError
from autolfads.trainer.data.config_data import check_data_fits_config
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.model.augment import coordinated_dropout, sample_validation_input
from autolfads.trainer.model.batches import SplitTensors, bits_per_spike_terms
from autolfads.trainer.model.device import (
    capture_global_rng,
    make_generator,
    resolve_device,
    restore_generator,
    restore_global_rng,
)
from autolfads.trainer.model.lfads import DataDims, LfadsModel
from autolfads.trainer.model.objective import LossTerms, LossWeights, lfads_loss, ramp

CHECKPOINT_FORMAT = "autolfads-lfads-session"
CHECKPOINT_VERSION = 1
SMOOTHING_PREV = 0.3  # smth = 0.3*prev + 0.7*current (lfads-torch ExpSmoothedMetric)
# Validation NLLs smoothed every epoch; either can be a search's fitness
# (`pbt.fitness`). valid_heldout_recon covers only the held-out neurons in the
# observed bins: what co-bps scores, and nothing the encoder sees.
SMOOTHED_METRICS = ("valid_recon", "valid_heldout_recon")


class CheckpointError(AutolfadsError):
    """Checkpoint bytes are unreadable or belong to a different model/data."""


def validate_hparams(hparams: Mapping[str, float]) -> dict[str, float]:
    """Check names and values (`config.HPARAM_BOUNDS`); return them as floats.
    Raises ConfigError."""
    for name, value in hparams.items():
        problem = hparam_problem(name, value)
        if problem:
            raise ConfigError(problem)
    return {name: float(value) for name, value in hparams.items()}


@dataclass(frozen=True)
class BatchLoss:
    """What one batch leaves: the loss terms and what the metrics need."""

    terms: LossTerms
    logrates: torch.Tensor  # (B, recon_seq_len, recon_data_dim)
    recon: torch.Tensor  # the batch's targets, same shape
    stirling: torch.Tensor | None  # the Stirling term of the Poisson NLL per entry


class TrainingSession:
    """One member's model, optimizer and random state on one run's data.

    `fresh` and `from_checkpoint` build a session at a start point. A trainer
    that trains many segments of the same run keeps one session and moves it
    to each lease's start point with `start_fresh` / `start_from`: the data
    tensors, the model and the optimizer are built once, and every start
    resets everything a new process would initialise (weights, optimizer
    moments and groups, random generators, hyperparameters, epoch and
    smoothed metrics), so a reused session trains bit for bit like a new one.
    """

    def __init__(self, cfg: RunConfig, data: LfadsData, device: str = "cpu") -> None:
        # A trainer may get a run staged elsewhere: refuse before any epoch.
        check_data_fits_config(cfg, data)
        self.cfg = cfg
        self.device = resolve_device(device)
        self.dims = DataDims.from_data(data)
        # The global RNGs as a new process has them when it builds a session
        # (nothing here draws from them): where every fresh start puts them back.
        self._global_rng_at_build = capture_global_rng(self.device)
        self.model = _seeded_model(cfg, self.dims, 0, self.device)
        self.generator = make_generator(self.device, 0)
        self._hparams = cfg.initial_hparams()
        self._epoch = 0
        # name + "_smth" -> smoothed value (nan before the first epoch), for the
        # metrics this data has (no held-out one without held-out neurons).
        self._smth = {
            f"{name}_smth": math.nan
            for name in SMOOTHED_METRICS
            if name != "valid_heldout_recon" or data.heldout_dim
        }
        train = cfg.training
        # The data as device tensors (with their Stirling terms and null-model
        # NLLs): the costly part of a build, the same for every member.
        self._train = SplitTensors.build(data.train, self.device, train.sv_rate, train.sv_seed)
        self._valid = SplitTensors.build(data.valid, self.device, train.sv_rate, train.sv_seed + 1)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self._params,
            lr=self._hparams["lr_init"],
            betas=(train.adam_beta1, train.adam_beta2),
            eps=train.adam_eps,
            weight_decay=0.0,  # set per epoch: l2_ramp * weight_decay
        )
        # The optimizer as built (no moments, no step count): a fresh start's.
        self._blank_optimizer = copy.deepcopy(self.optimizer.state_dict())

    # ------------------------------------------------------------ construction

    @classmethod
    def fresh(
        cls,
        cfg: RunConfig,
        data: LfadsData,
        hparams: Mapping[str, float],
        seed: int,
        device: str = "cpu",
    ) -> TrainingSession:
        """A new model with weights drawn from `seed` (global RNGs untouched)."""
        session = cls(cfg, data, device)
        session.start_fresh(hparams, seed)
        return session

    @classmethod
    def from_checkpoint(
        cls,
        cfg: RunConfig,
        data: LfadsData,
        checkpoint: bytes,
        hparams: Mapping[str, float] | None = None,
        device: str = "cpu",
        generator_seed: int | None = None,
    ) -> TrainingSession:
        """Restore a session; `hparams` None keeps the checkpoint's values
        (`generator_seed`: see `start_from`)."""
        state = read_checkpoint(checkpoint)
        _check_compatible(state, cfg, DataDims.from_data(data))
        session = cls(cfg, data, device)
        session.start_from(state, hparams, generator_seed)
        return session

    def start_fresh(self, hparams: Mapping[str, float], seed: int) -> None:
        """Start again from new weights drawn from `seed`, at the config's
        hyperparameters updated by `hparams`: what `fresh` builds."""
        merged = self.cfg.initial_hparams()
        merged.update(validate_hparams(hparams))
        restore_global_rng(self._global_rng_at_build, self.device)
        seeded = _seeded_model(self.cfg, self.dims, seed, self.device)
        self.model.load_state_dict(seeded.state_dict())
        self.generator.manual_seed(int(seed))
        self.optimizer.load_state_dict(self._blank_optimizer)
        self._restart(merged, 0, {})

    def start_from(
        self,
        state: Mapping[str, Any],
        hparams: Mapping[str, float] | None,
        generator_seed: int | None = None,
    ) -> None:
        """Continue a checkpoint (`read_checkpoint`'s state), its hyperparameters
        updated by `hparams`: what `from_checkpoint` builds. `generator_seed`
        starts the generator (batch order, dropout, posterior samples) on a
        stream of its own instead of the checkpoint's: an exploiting member
        must not draw the same randomness as the member it copied. Raises
        CheckpointError (nothing is usable then until the next start)."""
        _check_compatible(state, self.cfg, self.dims)
        merged = dict(state["hparams"])
        if hparams is not None:
            merged.update(validate_hparams(hparams))
        try:
            self.model.load_state_dict(state["model_state"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint weights do not fit the model: {err}") from None
        restore_generator(self.generator, state["generator_state"])
        if generator_seed is not None:
            self.generator.manual_seed(int(generator_seed))
        self.optimizer.load_state_dict(state["optimizer_state"])
        # Checkpoints from before held-out smoothing carry only valid_recon_smth.
        self._restart(merged, int(state["epoch"]), state)
        restore_global_rng(state["global_rng"], self.device)

    def _restart(self, hparams: dict[str, float], epoch: int, smoothed: Mapping[str, Any]) -> None:
        self._hparams = hparams
        self._epoch = epoch
        for key in self._smth:
            self._smth[key] = float(smoothed.get(key, math.nan))
        # The optimizer state carries the old lr; apply the (possibly new) one.
        self._apply_lr()
        # As built: training mode, no gradients left from the previous segment.
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------ public state

    @property
    def epoch(self) -> int:
        """Epochs completed so far."""
        return self._epoch

    @property
    def valid_recon_smth(self) -> float:
        """Smoothed validation NLL (the default PBT fitness); nan before the first epoch."""
        return self._smth["valid_recon_smth"]

    def smoothed(self, name: str) -> float:
        """A smoothed validation metric by name (`pbt.fitness`); nan before the
        first epoch. Raises ConfigError if this data has no such metric."""
        if name not in self._smth:
            raise ConfigError(
                f"metric {name!r} is not available for this data (it has {sorted(self._smth)}); "
                "valid_heldout_recon_smth needs held-out neurons"
            )
        return self._smth[name]

    @property
    def hparams(self) -> dict[str, float]:
        return dict(self._hparams)

    def apply_hparams(self, hparams: Mapping[str, float]) -> None:
        """Change tunable hyperparameters in place (no model rebuild)."""
        self._hparams.update(validate_hparams(hparams))
        self._apply_lr()

    def _apply_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self._hparams["lr_init"]

    def loss_weights(self, epoch: int) -> LossWeights:
        train = self.cfg.training
        return LossWeights(
            loss_scale=train.loss_scale,
            kl_ic_scale=self._hparams["kl_ic_scale"],
            kl_co_scale=self._hparams["kl_co_scale"],
            l2_scales={
                "ic_enc": train.l2_ic_enc_scale,
                "ci_enc": train.l2_ci_enc_scale,
                "gen": self._hparams["l2_gen_scale"],
                "con": self._hparams["l2_con_scale"],
            },
            l2_ramp=ramp(epoch, train.l2_start_epoch, train.l2_increase_epochs),
            kl_ramp=ramp(epoch, train.kl_start_epoch, train.kl_increase_epochs),
        )

    # ------------------------------------------------------------ training

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training trials, then validation.

        Returns per-epoch metrics; `epoch` is the number of epochs completed.
        """
        start = time.perf_counter()
        weights = self.loss_weights(self._epoch)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = weights.l2_ramp * self.cfg.training.weight_decay
        self._apply_lr()
        train_stats = self._run_training(weights)
        valid_stats = self._run_validation(weights)
        for key in self._smth:
            self._smooth(key, valid_stats[key.removesuffix("_smth")])
        self._epoch += 1
        return {
            "epoch": self._epoch,
            **train_stats,
            **valid_stats,
            **self._smth,
            "kl_ramp": weights.kl_ramp,
            "l2_ramp": weights.l2_ramp,
            "lr": self._hparams["lr_init"],
            "seconds": time.perf_counter() - start,
        }

    def _smooth(self, key: str, current: float) -> None:
        prev = self._smth[key]
        if math.isnan(prev):
            self._smth[key] = current
        else:
            self._smth[key] = SMOOTHING_PREV * prev + (1.0 - SMOOTHING_PREV) * current

    def _run_training(self, weights: LossWeights) -> dict[str, float]:
        train_cfg, split = self.cfg.training, self._train
        self.model.train()
        perm = torch.randperm(
            split.n_trials, generator=self.generator, device=self.generator.device
        )
        names = ("train_loss", "train_recon", "kl_ic", "kl_co", "l2")
        # Trial-weighted sums stay on the device (float64): no host sync per step.
        sums = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        for idx in perm.split(train_cfg.batch_size):
            terms = self._batch_loss(split, idx, weights, training=True).terms
            self.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            torch.nn.utils.clip_grad_norm_(self._params, train_cfg.max_grad_norm)
            self.optimizer.step()
            step = torch.stack([terms.total, terms.recon, terms.ic_kl, terms.co_kl, terms.l2])
            sums.add_(step.detach().double(), alpha=len(idx))
        return dict(zip(names, (sums / split.n_trials).tolist(), strict=True))

    def _batch_loss(
        self, split: SplitTensors, idx: torch.Tensor, weights: LossWeights, training: bool
    ) -> BatchLoss:
        """One batch through the model and the loss. Training adds coordinated
        dropout and the model's dropout; both passes use the same generator
        in the same order (sample-validation input, dropout masks, posterior
        noise), so a replayed epoch draws the same numbers."""
        train_cfg, dims = self.cfg.training, self.dims
        encod, recon, ext, sv = split.batch(idx)
        assert recon is not None, "training and validation splits carry their targets"
        if sv is not None:
            encod = sample_validation_input(encod, sv, train_cfg.sv_rate)
        grad_mask, dropout_rate = None, 0.0
        if training:
            encod, grad_mask = coordinated_dropout(
                encod,
                cd_rate=self._hparams["cd_rate"],
                cd_pass_rate=train_cfg.cd_pass_rate,
                recon_seq_len=dims.recon_seq_len,
                recon_data_dim=dims.recon_data_dim,
                generator=self.generator,
            )
            dropout_rate = self._hparams["dropout_rate"]
        out = self.model(encod, ext, dropout_rate, True, self.generator)
        stirling = split.stirling(idx)
        terms = lfads_loss(
            self.model,
            out,
            recon,
            weights,
            self.generator,
            grad_mask=grad_mask,
            sv_mask=sv,
            sv_rate=train_cfg.sv_rate,
            recon_stirling=stirling,
        )
        return BatchLoss(terms, out.logrates, recon, stirling)

    def _run_validation(self, weights: LossWeights) -> dict[str, float]:
        train_cfg, split, dims = self.cfg.training, self._valid, self.dims
        self.model.eval()
        sums = {"valid_loss": 0.0, "valid_recon": 0.0, "valid_recon_sv": 0.0}
        nll_sums: dict[str, float] = {}
        with torch.inference_mode():
            for idx in torch.arange(split.n_trials, device=self.device).split(train_cfg.batch_size):
                batch = self._batch_loss(split, idx, weights, training=False)
                terms, n = batch.terms, len(idx)
                sums["valid_loss"] += terms.total.item() * n
                sums["valid_recon"] += terms.recon.item() * n
                if terms.recon_sv is not None:
                    sums["valid_recon_sv"] += terms.recon_sv.item() * n
                bps_terms = bits_per_spike_terms(batch.logrates, batch.recon, dims, batch.stirling)
                for key, value in bps_terms.items():
                    nll_sums[key] = nll_sums.get(key, 0.0) + value
        stats = {k: v / split.n_trials for k, v in sums.items()}
        if train_cfg.sv_rate <= 0.0:
            del stats["valid_recon_sv"]
        stats.update(split.bits_per_spike(nll_sums, dims, prefix="valid_"))
        heldout = split.heldout_nll(nll_sums, dims)
        if heldout is not None:
            stats["valid_heldout_recon"] = heldout
        return stats

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> bytes:
        """Everything needed to continue exactly, as `torch.save` bytes."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_config": self.cfg.model.model_dump(mode="json"),
            "data_dims": self.dims.to_dict(),
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer_state": self.optimizer.state_dict(),
            "epoch": self._epoch,
            **self._smth,
            "hparams": dict(self._hparams),
            "generator_state": self.generator.get_state(),
            "global_rng": capture_global_rng(self.device),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()


def _seeded_model(cfg: RunConfig, dims: DataDims, seed: int, device: torch.device) -> LfadsModel:
    """The model's initial weights drawn from `seed`; the global CPU RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return LfadsModel(cfg.model, dims).to(device)


def checkpoint_data_dims(checkpoint: bytes) -> DataDims:
    """The data sizes a checkpoint's model was built for."""
    return DataDims.from_dict(read_checkpoint(checkpoint)["data_dims"])


def read_checkpoint(checkpoint: bytes) -> dict[str, Any]:
    """The state inside checkpoint bytes (CPU tensors); raises CheckpointError."""
    if not isinstance(checkpoint, (bytes, bytearray, memoryview)):
        raise CheckpointError(f"checkpoint must be bytes, got {type(checkpoint).__name__}")
    try:
        state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt archives
        raise CheckpointError(
            f"checkpoint is not a readable torch archive ({type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("checkpoint is not an autolfads training-session checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {state.get('version')!r} is not supported "
            f"(expected {CHECKPOINT_VERSION})"
        )
    return state


def _check_compatible(state: Mapping[str, Any], cfg: RunConfig, dims: DataDims) -> None:
    """The checkpoint must be of the model the config describes, for this data."""
    saved_model = state["model_config"]
    for name, value in cfg.model.model_dump(mode="json").items():
        if saved_model.get(name) != value:
            raise CheckpointError(
                f"checkpoint was trained with model.{name} = {saved_model.get(name)!r} "
                f"but the config says {value!r}"
            )
    for name, value in dims.to_dict().items():
        saved = state["data_dims"].get(name)
        if saved != value:
            raise CheckpointError(
                f"checkpoint was trained on data with {name} = {saved} but this data has {value}"
            )
