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
and transposed weights. Per bin only the recurrent matmuls remain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from autolfads.trainer.modules.dropout import apply_dropout, dropout_scale_mask
from autolfads.trainer.modules.gru import ClippedGRUCell, gru_step
from autolfads.trainer.modules.recons import FanInLinear, KernelNormalizedLinear


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
        factor = apply_dropout(gen_init, dropout_rate, generator) @ w_fac_t
        gen = _GeneratorLoop.build(self, ext_input, seq_len, batch, dropout_rate, generator)
        con = self._controller_setup(ci, batch, seq_len, dropout_rate, sample_posteriors, generator)
        gen_h = gen_init
        gen_states, factors = [], []
        con_states, co_means, co_stds, co_outs = [], [], [], []
        for t in range(seq_len):
            if con is None:
                gen_zr, gen_n = gen.x_zr[t], gen.x_n[t]
            else:
                con.h, co_mean, co_std, co = con.step(t, factor)
                gen_zr = torch.addmm(gen.x_zr[t], co, gen.w_co_zr)
                gen_n = torch.addmm(gen.x_n[t], co, gen.w_co_n)
                con_states.append(con.h)
                co_means.append(co_mean)
                co_stds.append(co_std)
                co_outs.append(co)
            gen_h = gru_step(gen_zr, gen_n, gen_h, gen.w_zr, gen.w_n, gen.clip)
            gen_states.append(gen_h)
            factor = (gen_h if gen.drop is None else gen_h * gen.drop[t]) @ w_fac_t
            factors.append(factor)
        return self._collect(
            gen_init, gen_states, factors, con_states, co_means, co_stds, co_outs, ext_input
        )

    def _controller_setup(
        self,
        ci: torch.Tensor | None,
        batch: int,
        seq_len: int,
        dropout_rate: float,
        sample_posteriors: bool,
        generator: torch.Generator | None,
    ) -> _ControllerLoop | None:
        if not self.use_con:
            return None
        assert ci is not None, "the controller needs controller inputs"
        cell, con_dim, ci_dim = self.con_cell, self.con_dim, self.ci_dim
        ci_tm = apply_dropout(ci, dropout_rate, generator).transpose(0, 1)  # (T, B, ci_dim)
        w_ci, w_fac = cell.weight_ih[:, :ci_dim], cell.weight_ih[:, ci_dim:]
        fac_dim = w_fac.shape[1]
        fac_drop = dropout_scale_mask((seq_len, batch, fac_dim), dropout_rate, generator, ci)
        eps = None
        if sample_posteriors:
            eps = torch.empty(seq_len, batch, self.co_dim, dtype=ci.dtype, device=ci.device)
            eps.normal_(generator=generator)
        w_zr, w_n = cell.recurrent_weights()
        w_co = self.co_linear.weight
        b_co = self.co_linear.bias
        zr, n = slice(0, 2 * con_dim), slice(2 * con_dim, 3 * con_dim)
        return _ControllerLoop(
            h=self.con_h0.expand(batch, -1),
            ci_zr=F.linear(ci_tm, w_ci[zr], cell.bias_ih[zr]).unbind(0),
            ci_n=F.linear(ci_tm, w_ci[n], cell.bias_ih[n]).unbind(0),
            fac_drop=fac_drop,
            eps=eps,
            w_fac_zr=w_fac[zr].t(),
            w_fac_n=w_fac[n].t(),
            w_zr=w_zr,
            w_n=w_n,
            w_mean=w_co[: self.co_dim].t(),
            b_mean=b_co[: self.co_dim],
            w_logvar=w_co[self.co_dim :].t(),
            b_logvar=b_co[self.co_dim :],
            clip=cell.clip_value,
        )

    def _collect(
        self, gen_init, gen_states, factors, con_states, co_means, co_stds, co_outs, ext_input
    ) -> DecoderOutput:
        batch, seq_len = gen_init.shape[0], len(gen_states)
        empty = gen_init.new_zeros(batch, seq_len, 0)

        def stack(xs: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(xs, dim=1) if xs else empty

        gen_inputs = stack(co_outs)
        if ext_input is not None and self.ext_input_dim > 0:
            gen_inputs = torch.cat([gen_inputs, ext_input], dim=2)
        return DecoderOutput(
            gen_init=gen_init,
            gen_states=stack(gen_states),
            factors=stack(factors),
            gen_inputs=gen_inputs,
            con_states=stack(con_states),
            co_means=stack(co_means),
            co_stds=stack(co_stds),
        )


@dataclass
class _GeneratorLoop:
    """Hoisted generator operands. Per-bin tensors are tuples from `unbind`:
    indexing a tensor inside the loop would cost a full-size zero gradient per
    bin in the backward pass (quadratic in T); unbind's backward is one stack."""

    x_zr: Sequence[torch.Tensor]  # T x (B, 2G) ext-input projection incl. bias
    x_n: Sequence[torch.Tensor]  # T x (B, G)
    drop: torch.Tensor | None  # (T, B, G) dropout multipliers of gen states
    w_co_zr: torch.Tensor  # (co_dim, 2G)
    w_co_n: torch.Tensor  # (co_dim, G)
    w_zr: torch.Tensor  # (G, 2G)
    w_n: torch.Tensor  # (G, G)
    clip: float

    @classmethod
    def build(
        cls,
        dec: LfadsDecoder,
        ext_input: torch.Tensor | None,
        seq_len: int,
        batch: int,
        dropout_rate: float,
        generator: torch.Generator | None,
    ) -> _GeneratorLoop:
        cell, co_dim = dec.gen_cell, dec.co_dim
        gen_dim = cell.hidden_size
        zr, n = slice(0, 2 * gen_dim), slice(2 * gen_dim, 3 * gen_dim)
        w_co, w_ext = cell.weight_ih[:, :co_dim], cell.weight_ih[:, co_dim:]
        if ext_input is None or dec.ext_input_dim == 0:
            x_zr = [cell.bias_ih[zr].expand(batch, -1)] * seq_len
            x_n = [cell.bias_ih[n].expand(batch, -1)] * seq_len
        else:
            ext = apply_dropout(ext_input, dropout_rate, generator).transpose(0, 1)
            x_zr = F.linear(ext, w_ext[zr], cell.bias_ih[zr]).unbind(0)
            x_n = F.linear(ext, w_ext[n], cell.bias_ih[n]).unbind(0)
        like = cell.bias_ih
        w_zr, w_n = cell.recurrent_weights()
        return cls(
            x_zr=x_zr,
            x_n=x_n,
            drop=dropout_scale_mask((seq_len, batch, gen_dim), dropout_rate, generator, like),
            w_co_zr=w_co[zr].t(),
            w_co_n=w_co[n].t(),
            w_zr=w_zr,
            w_n=w_n,
            clip=cell.clip_value,
        )


@dataclass
class _ControllerLoop:
    """Hoisted controller operands; `step` advances the controller one bin."""

    h: torch.Tensor  # (B, C)
    ci_zr: Sequence[torch.Tensor]  # T x (B, 2C) CI projection incl. bias
    ci_n: Sequence[torch.Tensor]  # T x (B, C)
    fac_drop: torch.Tensor | None  # (T, B, fac_dim) dropout multipliers
    eps: torch.Tensor | None  # (T, B, co_dim) posterior noise; None = use means
    w_fac_zr: torch.Tensor  # (fac_dim, 2C)
    w_fac_n: torch.Tensor  # (fac_dim, C)
    w_zr: torch.Tensor  # (C, 2C)
    w_n: torch.Tensor  # (C, C)
    w_mean: torch.Tensor  # (C, co_dim)
    b_mean: torch.Tensor  # (co_dim,)
    w_logvar: torch.Tensor  # (C, co_dim)
    b_logvar: torch.Tensor  # (co_dim,)
    clip: float

    def step(
        self, t: int, factor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """factor_{t-1} (B, fac_dim) -> (con_t, co_mean_t, co_std_t, co_t)."""
        fac_in = factor if self.fac_drop is None else factor * self.fac_drop[t]
        x_zr = torch.addmm(self.ci_zr[t], fac_in, self.w_fac_zr)
        x_n = torch.addmm(self.ci_n[t], fac_in, self.w_fac_n)
        h = gru_step(x_zr, x_n, self.h, self.w_zr, self.w_n, self.clip)
        co_mean = torch.addmm(self.b_mean, h, self.w_mean)
        # sqrt(exp(logvar)) == exp(0.5 logvar); no variance floor (lfads-torch).
        co_std = torch.exp(0.5 * torch.addmm(self.b_logvar, h, self.w_logvar))
        co = co_mean if self.eps is None else torch.addcmul(co_mean, co_std, self.eps[t])
        return h, co_mean, co_std, co
