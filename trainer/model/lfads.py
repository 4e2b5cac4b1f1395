"""The LFADS sequential VAE (single session, Poisson observations).

    encod_data (B, encod_seq_len, encod_data_dim)
      -> IC encoder -> ic posterior (mean, std) -> ic sample -> gen_init
      -> CI encoder -> ci (B, recon_seq_len, 2*ci_enc_dim)
      -> controller + generator loop -> factors (B, recon_seq_len, fac_dim)
      -> readout -> logrates (B, recon_seq_len, recon_data_dim)

Held-out channels (recon_data_dim > encod_data_dim) and forward-prediction bins
(recon_seq_len > encod_seq_len) are only reconstructed, never encoded.
Hyperparameters PBT tunes (dropout) are forward arguments, not attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from autolfads.config import ModelConfig
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.model.modules.decoder import LfadsDecoder
from autolfads.trainer.model.modules.encoder import LfadsEncoder
from autolfads.trainer.model.modules.priors import AutoregressivePrior, GaussianPrior
from autolfads.trainer.model.modules.recons import FanInLinear


@dataclass(frozen=True)
class DataDims:
    """Data sizes the model is built for; stored in checkpoints for validation."""

    encod_data_dim: int
    recon_data_dim: int
    encod_seq_len: int
    recon_seq_len: int
    ext_input_dim: int = 0

    @classmethod
    def from_data(cls, data: LfadsData) -> DataDims:
        return cls(
            encod_data_dim=data.encod_data_dim,
            recon_data_dim=data.recon_data_dim,
            encod_seq_len=data.encod_seq_len,
            recon_seq_len=data.recon_seq_len,
            ext_input_dim=data.ext_input_dim,
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, int]) -> DataDims:
        return cls(**{f.name: int(raw[f.name]) for f in fields(cls)})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class LfadsOutput:
    logrates: torch.Tensor  # (B, recon_seq_len, recon_data_dim)
    ic_mean: torch.Tensor  # (B, ic_dim)
    ic_std: torch.Tensor  # (B, ic_dim)
    gen_init: torch.Tensor  # (B, gen_dim)
    gen_states: torch.Tensor  # (B, T, gen_dim)
    factors: torch.Tensor  # (B, T, fac_dim)
    gen_inputs: torch.Tensor  # (B, T, co_dim + ext_input_dim)
    con_states: torch.Tensor  # (B, T, con_dim)
    co_means: torch.Tensor  # (B, T, co_dim)
    co_stds: torch.Tensor  # (B, T, co_dim)


class LfadsModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dims: DataDims) -> None:
        super().__init__()
        self.cfg = cfg
        self.dims = dims
        ci_enc_dim = cfg.ci_enc_dim if cfg.has_controller else 0
        self.encoder = LfadsEncoder(
            encod_data_dim=dims.encod_data_dim,
            ic_enc_dim=cfg.ic_enc_dim,
            ic_dim=cfg.ic_dim,
            ci_enc_dim=ci_enc_dim,
            ci_lag=cfg.ci_lag,
            cell_clip=cfg.cell_clip,
            ic_post_var_min=cfg.ic_post_var_min,
        )
        self.decoder = LfadsDecoder(
            ic_dim=cfg.ic_dim,
            gen_dim=cfg.gen_dim,
            fac_dim=cfg.fac_dim,
            ci_dim=2 * ci_enc_dim,
            con_dim=cfg.con_dim if cfg.has_controller else 0,
            co_dim=cfg.co_dim if cfg.has_controller else 0,
            ext_input_dim=dims.ext_input_dim,
            cell_clip=cfg.cell_clip,
        )
        self.readout = FanInLinear(cfg.fac_dim, dims.recon_data_dim)
        self.ic_prior = GaussianPrior(cfg.ic_dim, cfg.ic_prior_var)
        self.co_prior = (
            AutoregressivePrior(cfg.co_dim, cfg.co_prior_tau, cfg.co_prior_nvar)
            if cfg.has_controller
            else None
        )

    def forward(
        self,
        encod_data: torch.Tensor,
        ext_input: torch.Tensor | None = None,
        dropout_rate: float = 0.0,
        sample_posteriors: bool = True,
        generator: torch.Generator | None = None,
    ) -> LfadsOutput:
        """encod_data (B, encod_seq_len, encod_data_dim), augmented by the caller;
        ext_input (B, recon_seq_len, ext_input_dim) or None. Pass dropout_rate 0
        outside training."""
        dims = self.dims
        enc = self.encoder(encod_data, dims.recon_seq_len, dropout_rate, generator)
        ic_sample = enc.ic_mean
        if sample_posteriors:
            eps = torch.empty_like(enc.ic_mean).normal_(generator=generator)
            ic_sample = torch.addcmul(enc.ic_mean, enc.ic_std, eps)
        if ext_input is not None and dims.ext_input_dim > 0:
            # Measured inputs are unknown in forward-prediction bins.
            ext_input = ext_input.clone()
            ext_input[:, dims.encod_seq_len :] = 0.0
        dec = self.decoder(
            ic_sample,
            enc.ci,
            ext_input,
            dims.recon_seq_len,
            dropout_rate,
            sample_posteriors,
            generator,
        )
        return LfadsOutput(
            logrates=self.readout(dec.factors),
            ic_mean=enc.ic_mean,
            ic_std=enc.ic_std,
            gen_init=dec.gen_init,
            gen_states=dec.gen_states,
            factors=dec.factors,
            gen_inputs=dec.gen_inputs,
            con_states=dec.con_states,
            co_means=dec.co_means,
            co_stds=dec.co_stds,
        )

    def recurrent_kernels(self) -> dict[str, list[torch.Tensor]]:
        """Recurrent weights per L2 group (keys match `l2_<group>_scale`)."""
        groups: dict[str, list[torch.Tensor]] = {
            "ic_enc": [self.encoder.ic_enc.fwd.rec_weight, self.encoder.ic_enc.bwd.rec_weight],
            "gen": [self.decoder.gen_cell.rec_weight],
        }
        if self.encoder.ci_enc is not None:
            ci_enc = self.encoder.ci_enc
            groups["ci_enc"] = [ci_enc.fwd.rec_weight, ci_enc.bwd.rec_weight]
        if self.decoder.use_con:
            groups["con"] = [self.decoder.con_cell.rec_weight]
        return groups

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
