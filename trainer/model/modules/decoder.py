"""LFADS decoder: controller + generator unrolled over recon_seq_len bins.

Per bin t (lfads-torch order):
    con_t    = ConGRU(dropout([ci_t, factor_{t-1}]), con_{t-1})
    co_t     ~ N(co_mean_t, co_std_t^2) from Linear(con_t)   (mean when not sampling)
    gen_t    = GenGRU([co_t, ext_input_t], gen_{t-1})
    factor_t = KernelNormalizedLinear(dropout(gen_t))
with gen_0 = Linear(ic) and factor_0 = KernelNormalizedLinear(dropout(gen_0)).

Speed: the loop is latency bound. Everything that does not depend on the
recurrence is hoisted out of it: the CI and external-input projections for all
bins (one matmul each), all dropout masks and posterior noise (one draw each),
and transposed weights. The loop itself runs in decoder_loop.py, a custom
autograd Function with hand-written backpropagation through time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from autolfads.trainer.model.modules.decoder_loop import (
    ControllerOperands,
    GeneratorOperands,
    run_decoder_loop,
)
from autolfads.trainer.model.modules.dropout import apply_dropout, dropout_scale_mask
from autolfads.trainer.model.modules.gru import ClippedGRUCell
from autolfads.trainer.model.modules.recons import FanInLinear, KernelNormalizedLinear


@dataclass
class DecoderOutput:
    gen_init: torch.Tensor  # (B, gen_dim)
    gen_states: torch.Tensor  # (B, T, gen_dim)
    factors: torch.Tensor  # (B, T, fac_dim)
    gen_inputs: torch.Tensor  # (B, T, co_dim + ext_input_dim)
    con_states: torch.Tensor  # (B, T, con_dim); con_dim 0 without controller
    co_means: torch.Tensor  # (B, T, co_dim)
    co_stds: torch.Tensor  # (B, T, co_dim)


class LfadsDecoder(nn.Module):
    def __init__(
        self,
        ic_dim: int,
        gen_dim: int,
        fac_dim: int,
        ci_dim: int,
        con_dim: int,
        co_dim: int,
        ext_input_dim: int,
        cell_clip: float,
    ) -> None:
        super().__init__()
        self.ci_dim = ci_dim
        self.con_dim = con_dim
        self.co_dim = co_dim
        self.ext_input_dim = ext_input_dim
        self.ic_to_g0 = FanInLinear(ic_dim, gen_dim)
        self.gen_cell = ClippedGRUCell(co_dim + ext_input_dim, gen_dim, cell_clip)
        self.fac_linear = KernelNormalizedLinear(gen_dim, fac_dim)
        self.use_con = co_dim > 0
        if self.use_con:
            self.con_cell = ClippedGRUCell(ci_dim + fac_dim, con_dim, cell_clip)
            self.co_linear = FanInLinear(con_dim, 2 * co_dim)
            self.con_h0 = nn.Parameter(torch.zeros(con_dim))

    def forward(
        self,
        ic_sample: torch.Tensor,
        ci: torch.Tensor | None,
        ext_input: torch.Tensor | None,
        seq_len: int,
        dropout_rate: float,
        sample_posteriors: bool,
        generator: torch.Generator | None,
    ) -> DecoderOutput:
        """ic_sample (B, ic_dim); ci (B, T, ci_dim); ext_input (B, T, ext_dim)
        already zero in forward bins."""
        batch = ic_sample.shape[0]
        gen_init = self.ic_to_g0(ic_sample)
        w_fac_t = self.fac_linear.normalized_weight().t()  # (gen_dim, fac_dim)
        factor0 = apply_dropout(gen_init, dropout_rate, generator) @ w_fac_t
        # Random draws in a fixed order: ext-input dropout, generator-state
        # dropout, then the controller's (CI dropout, factor dropout, noise).
        gen_x_zr, gen_x_n = self._generator_inputs(
            ext_input, seq_len, batch, dropout_rate, generator
        )
        gen_drop = dropout_scale_mask(
            (seq_len, batch, self.gen_cell.hidden_size), dropout_rate, generator, gen_init
        )
        con = self._controller_operands(
            ci, batch, seq_len, dropout_rate, sample_posteriors, generator
        )
        gen = GeneratorOperands(
            factor0=factor0,
            gen_h0=gen_init,
            gen_x_zr=gen_x_zr,
            gen_x_n=gen_x_n,
            w_gen_hh_t=self.gen_cell.weight_hh.t(),
            w_fac_t=w_fac_t,
            clip=self.gen_cell.clip_value,
            gen_drop=gen_drop,
        )
        gen_states, factors, con_states, co_means, co_stds, co = run_decoder_loop(gen, con)
        gen_inputs = co.transpose(0, 1)  # (B, T, co_dim)
        if ext_input is not None and self.ext_input_dim > 0:
            gen_inputs = torch.cat([gen_inputs, ext_input], dim=2)
        return DecoderOutput(
            gen_init=gen_init,
            gen_states=gen_states.transpose(0, 1),
            factors=factors.transpose(0, 1),
            gen_inputs=gen_inputs,
            con_states=con_states.transpose(0, 1),
            co_means=co_means.transpose(0, 1),
            co_stds=co_stds.transpose(0, 1),
        )

    def _generator_inputs(
        self,
        ext_input: torch.Tensor | None,
        seq_len: int,
        batch: int,
        dropout_rate: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, B, 2G) and (T, B, G): projections of the (dropped-out) external
        inputs of every bin per gate group, bias included; just the bias
        without external inputs."""
        cell, gen_dim = self.gen_cell, self.gen_cell.hidden_size
        groups = (slice(0, 2 * gen_dim), slice(2 * gen_dim, None))
        if ext_input is None or self.ext_input_dim == 0:
            zr, n = (cell.bias_ih[g].expand(seq_len, batch, -1) for g in groups)
            return zr, n
        ext = apply_dropout(ext_input, dropout_rate, generator).transpose(0, 1)
        w_ext = cell.weight_ih[:, self.co_dim :]
        zr, n = (F.linear(ext, w_ext[g], cell.bias_ih[g]) for g in groups)
        return zr, n

    def _controller_operands(
        self,
        ci: torch.Tensor | None,
        batch: int,
        seq_len: int,
        dropout_rate: float,
        sample_posteriors: bool,
        generator: torch.Generator | None,
    ) -> ControllerOperands | None:
        if not self.use_con:
            return None
        assert ci is not None, "the controller needs controller inputs"
        cell, ci_dim, con_dim = self.con_cell, self.ci_dim, self.con_dim
        ci_tm = apply_dropout(ci, dropout_rate, generator).transpose(0, 1)  # (T, B, ci_dim)
        fac_dim = cell.weight_ih.shape[1] - ci_dim
        fac_drop = dropout_scale_mask((seq_len, batch, fac_dim), dropout_rate, generator, ci)
        eps = None
        if sample_posteriors:
            eps = torch.empty(seq_len, batch, self.co_dim, dtype=ci.dtype, device=ci.device)
            eps.normal_(generator=generator)
        w_ci, groups = cell.weight_ih[:, :ci_dim], (slice(0, 2 * con_dim), slice(2 * con_dim, None))
        ci_x_zr, ci_x_n = (F.linear(ci_tm, w_ci[g], cell.bias_ih[g]) for g in groups)
        return ControllerOperands(
            con_h0=self.con_h0.expand(batch, -1),
            ci_x_zr=ci_x_zr,
            ci_x_n=ci_x_n,
            w_con_fac_t=cell.weight_ih[:, ci_dim:].t(),
            w_con_hh_t=cell.weight_hh.t(),
            w_co_t=self.co_linear.weight.t(),
            b_co=self.co_linear.bias,
            w_gen_co_t=self.gen_cell.weight_ih[:, : self.co_dim].t(),
            clip=cell.clip_value,
            fac_drop=fac_drop,
            eps=eps,
        )
