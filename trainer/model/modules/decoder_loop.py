"""The controller + generator loop with hand-written backpropagation through time.

Per bin t, all tensors time-major (lfads-torch order; see decoder.py):
    fin_t  = factor_{t-1} * fac_drop_t                         (B, F)
    con_t  = ConGRU(ci_x_t + fin_t @ w_con_fac, con_{t-1})      (B, C)
    mlv_t  = con_t @ w_co + b_co = (co_mean_t | co_logvar_t)    (B, 2D)
    co_std_t = exp(0.5 * co_logvar_t);  co_t = co_mean_t + co_std_t * eps_t
    gen_t  = GenGRU(gen_x_t + co_t @ w_gen_co, gen_{t-1})      (B, G)
    factor_t = (gen_t * gen_drop_t) @ w_fac                     (B, F)
factor_{-1}, con_{-1} and gen_{-1} are inputs (computed by the caller). Without
a controller only the generator lines run, with gen_x as its whole input.

Why a custom autograd Function: see gru_tape.py. The forward loop records no
graph and writes into preallocated buffers; the backward loop carries only the
three recurrent gradients (gen, con, factor) and every weight gradient is one
large matmul over all bins afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from autolfads.trainer.model.modules.gru_tape import GruTape, sum_outer


@dataclass
class GeneratorOperands:
    """The generator's part of the loop (tensors carry grads)."""

    factor0: torch.Tensor  # (B, F) factors of gen_h0, the controller's first input
    gen_h0: torch.Tensor  # (B, G)
    gen_x_zr: torch.Tensor  # (T, B, 2G) input projection without co, z and r gates
    gen_x_n: torch.Tensor  # (T, B, G) candidate gate
    w_gen_hh_t: torch.Tensor  # (G, 3G)
    w_fac_t: torch.Tensor  # (G, F) normalised factor readout, transposed
    clip: float
    gen_drop: torch.Tensor | None  # (T, B, G) dropout multipliers, no grad

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (
            self.factor0,
            self.gen_h0,
            self.gen_x_zr,
            self.gen_x_n,
            self.w_gen_hh_t,
            self.w_fac_t,
        )


@dataclass
class ControllerOperands:
    """What the controller adds to the generator loop (tensors carry grads)."""

    con_h0: torch.Tensor  # (B, C)
    ci_x_zr: torch.Tensor  # (T, B, 2C) CI projection incl. bias, z and r gates
    ci_x_n: torch.Tensor  # (T, B, C) candidate gate
    w_con_fac_t: torch.Tensor  # (F, 3C) factor part of the input kernel, transposed
    w_con_hh_t: torch.Tensor  # (C, 3C)
    w_co_t: torch.Tensor  # (C, 2D) co_linear weight transposed (mean | logvar)
    b_co: torch.Tensor  # (2D,)
    w_gen_co_t: torch.Tensor  # (D, 3G) co part of the generator input kernel
    clip: float
    fac_drop: torch.Tensor | None  # (T, B, F) dropout multipliers, no grad
    eps: torch.Tensor | None  # (T, B, D) posterior noise; None = use the means

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (
            self.con_h0,
            self.ci_x_zr,
            self.ci_x_n,
            self.w_con_fac_t,
            self.w_con_hh_t,
            self.w_co_t,
            self.b_co,
            self.w_gen_co_t,
        )


N_CON_TENSORS = 8


def run_decoder_loop(
    gen: GeneratorOperands, con: ControllerOperands | None
) -> tuple[torch.Tensor, ...]:
    """Returns time-major (gen_states, factors, con_states, co_means, co_stds, co);
    the last four are (T, B, 0) without a controller."""
    con_tensors = (None,) * N_CON_TENSORS if con is None else con.tensors()
    con_consts = (None, None, None) if con is None else (con.clip, con.fac_drop, con.eps)
    return DecoderRecurrence.apply(
        *gen.tensors(), *con_tensors, gen.clip, gen.gen_drop, *con_consts
    )


class DecoderRecurrence(torch.autograd.Function):
    # forward is one long loop on purpose: every bin reads and writes the same
    # preallocated buffers, and splitting it into helpers would either pass a
    # dozen buffers per call or allocate per bin. The plain statement of the
    # same equations is `reference.decoder_loop_reference`.
    @staticmethod
    def forward(  # noqa: PLR0913 (autograd passes operands positionally)
        ctx,
        factor0,
        gen_h0,
        gen_x_zr,
        gen_x_n,
        w_gen_hh_t,
        w_fac_t,
        con_h0,
        ci_x_zr,
        ci_x_n,
        w_con_fac_t,
        w_con_hh_t,
        w_co_t,
        b_co,
        w_gen_co_t,
        gen_clip,
        gen_drop,
        con_clip,
        fac_drop,
        eps,
    ):  # noqa: ANN001, ANN205
        seq_len, batch = gen_x_zr.shape[0], gen_h0.shape[0]
        gen = GruTape(gen_h0, w_gen_hh_t, seq_len, gen_clip)
        gen.save = any(ctx.needs_input_grad)
        factors = gen_h0.new_empty(seq_len, batch, w_fac_t.shape[1])
        con, co_dim = None, 0
        if con_h0 is not None:
            con = GruTape(con_h0, w_con_hh_t, seq_len, con_clip)
            con.save = gen.save
            co_dim = w_gen_co_t.shape[0]
            w_cf_zr, w_cf_n = _split_gates(w_con_fac_t)
            w_gc_zr, w_gc_n = _split_gates(w_gen_co_t)
        mlv = gen_h0.new_empty(seq_len, batch, 2 * co_dim)  # (co_mean | co_logvar)
        co_stds = gen_h0.new_empty(seq_len, batch, co_dim)
        co = gen_h0.new_empty(seq_len, batch, co_dim)
        f_prev, c, g = factor0, con_h0, gen_h0
        for t in range(seq_len):
            x_zr, x_n = gen_x_zr[t], gen_x_n[t]
            if con is not None:
                fin = f_prev if fac_drop is None else f_prev * fac_drop[t]
                c_zr = torch.addmm(ci_x_zr[t], fin, w_cf_zr)
                c = con.step(t, c_zr, torch.addmm(ci_x_n[t], fin, w_cf_n), c)
                mlv_t = torch.addmm(b_co, c, w_co_t, out=mlv[t])
                std_t = torch.mul(mlv_t[:, co_dim:], 0.5, out=co_stds[t]).exp_()
                if eps is None:
                    co_t = co[t].copy_(mlv_t[:, :co_dim])
                else:
                    co_t = torch.addcmul(mlv_t[:, :co_dim], std_t, eps[t], out=co[t])
                x_zr = torch.addmm(x_zr, co_t, w_gc_zr)
                x_n = torch.addmm(x_n, co_t, w_gc_n)
            g = gen.step(t, x_zr, x_n, g)
            g_in = g if gen_drop is None else g * gen_drop[t]
            f_prev = torch.mm(g_in, w_fac_t, out=factors[t])
        gen_states = gen.states
        con_states = con.states if con is not None else gen_h0.new_empty(seq_len, batch, 0)
        co_means = mlv[..., :co_dim].contiguous()
        ctx.set_materialize_grads(False)
        ctx.tapes = None
        if gen.save:
            # Outputs and inputs via save_for_backward: no reference cycles.
            ctx.save_for_backward(
                factor0, gen_h0, w_gen_hh_t, w_fac_t, gen_states, factors,
                con_h0, w_con_fac_t, w_con_hh_t, w_co_t, w_gen_co_t, con_states, co_stds, co,
            )  # fmt: skip
            ctx.tapes = (gen.detach_saved(), con.detach_saved() if con is not None else None)
            ctx.drops = (gen_drop, fac_drop, eps)
        return gen_states, factors, con_states, co_means, co_stds, co

    @staticmethod
    @once_differentiable
    def backward(ctx, d_gen_states, d_factors, d_con_states, d_co_means, d_co_stds, d_co):  # noqa: ANN001, ANN205, PLR0913
        (
            factor0, gen_h0, w_gen_hh_t, w_fac_t, gen_states, factors,
            con_h0, w_con_fac_t, w_con_hh_t, w_co_t, w_gen_co_t, con_states, co_stds, co,
        ) = ctx.saved_tensors  # fmt: skip
        gen_tape, con_tape = ctx.tapes
        gen_drop, fac_drop, eps = ctx.drops
        gen = gen_tape.backward(gen_states, gen_h0, w_gen_hh_t)
        con = None
        if con_tape is not None:
            con = con_tape.backward(con_states, con_h0, w_con_hh_t)
        grads = _BackwardLoop(
            gen, con, w_fac_t, w_co_t, w_gen_co_t, w_con_fac_t, co_stds, gen_drop, fac_drop, eps
        )
        grads.run(d_gen_states, d_factors, d_con_states, d_co_means, d_co_stds, d_co)

        # Weight gradients: one matmul each over all bins and trials.
        g_in = gen_states if gen_drop is None else gen_states * gen_drop
        out = [grads.d_factor0, grads.d_gen, gen.da_zr, gen.da_n, gen.weight_grad()]
        out.append(sum_outer(g_in, grads.df))
        if con is None:
            return (*out, *(None,) * (N_CON_TENSORS + 5))
        fin = torch.cat([factor0.unsqueeze(0), factors[:-1]])
        if fac_drop is not None:
            fin = fin * fac_drop
        out += [
            grads.d_con,
            con.da_zr,
            con.da_n,
            torch.cat([sum_outer(fin, con.da_zr), sum_outer(fin, con.da_n)], dim=1),
            con.weight_grad(),
            sum_outer(con_states, grads.dmlv),
            grads.dmlv.sum(dim=(0, 1)),
            torch.cat([sum_outer(co, gen.da_zr), sum_outer(co, gen.da_n)], dim=1),
        ]
        return (*out, *(None,) * 5)


def _split_gates(w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(in, 3H) -> (in, 2H) z/r part and (in, H) candidate part (views)."""
    hidden = w_t.shape[1] // 3
    return w_t[:, : 2 * hidden], w_t[:, 2 * hidden :]


class _BackwardLoop:
    """The reverse-time loop of DecoderRecurrence.backward; keeps the per-bin
    gradients the weight-gradient matmuls need (df, dmlv) and the initial-state
    gradients."""

    def __init__(
        self, gen, con, w_fac_t, w_co_t, w_gen_co_t, w_con_fac_t, co_stds, gen_drop, fac_drop, eps
    ) -> None:  # noqa: ANN001
        self.gen, self.con = gen, con
        self.w_fac = w_fac_t.t()  # (F, G)
        self.gen_drop, self.fac_drop, self.eps = gen_drop, fac_drop, eps
        self.co_stds = co_stds
        seq_len, batch = gen.da_n.shape[:2]
        self.df = gen.da_n.new_empty(seq_len, batch, w_fac_t.shape[1])  # dL/dfactor_t
        if con is not None:
            self.w_co = w_co_t.t()  # (2D, C)
            self.w_gc_zr, self.w_gc_n = (w.t() for w in _split_gates(w_gen_co_t))  # (2G|G, D)
            self.w_cf_zr, self.w_cf_n = (w.t() for w in _split_gates(w_con_fac_t))  # (2C|C, F)
            self.co_dim = w_gen_co_t.shape[0]
            self.dmlv = gen.da_n.new_empty(seq_len, batch, w_co_t.shape[1])  # (T, B, 2D)

    def run(self, d_gen_states, d_factors, d_con_states, d_co_means, d_co_stds, d_co) -> None:  # noqa: ANN001
        gen, con = self.gen, self.con
        seq_len = self.df.shape[0]
        dg = torch.zeros_like(gen.h0)  # dL/dgen_t from bin t+1
        dc = torch.zeros_like(con.h0) if con is not None else None
        df_next = None  # dL/dfactor_t from the controller input of bin t+1
        for t in reversed(range(seq_len)):
            df = self.df[t]
            _sum_into(df, d_factors, t, df_next)
            dg = (
                dg.addmm_(df, self.w_fac)
                if self.gen_drop is None
                else dg.addcmul_(df @ self.w_fac, self.gen_drop[t])
            )
            if d_gen_states is not None:
                dg.add_(d_gen_states[t])
            dg = gen.step(t, dg)
            if con is None:
                continue
            dc = self._controller_step(t, dc, d_con_states, d_co_means, d_co_stds, d_co)
            df_next = torch.mm(con.da_zr[t], self.w_cf_zr).addmm_(con.da_n[t], self.w_cf_n)
            if self.fac_drop is not None:
                df_next.mul_(self.fac_drop[t])
        self.d_gen = dg
        self.d_con = dc
        self.d_factor0 = df_next

    def _controller_step(self, t, dc, d_con_states, d_co_means, d_co_stds, d_co):  # noqa: ANN001, ANN202
        """Backward through co_t, (co_mean_t, co_std_t) and the controller GRU."""
        co_dim = self.co_dim
        gen = self.gen
        du = torch.mm(gen.da_zr[t], self.w_gc_zr).addmm_(gen.da_n[t], self.w_gc_n)  # dL/dco_t
        if d_co is not None:
            du.add_(d_co[t])
        dm, dlv = self.dmlv[t][:, :co_dim], self.dmlv[t][:, co_dim:]
        _sum_into(dm, d_co_means, t, du)
        # co_t depends on co_std_t only through the posterior noise.
        ds = None if self.eps is None else du.mul_(self.eps[t])
        _sum_into(dlv, d_co_stds, t, ds)
        dlv.mul_(self.co_stds[t]).mul_(0.5)  # d exp(0.5 lv)/d lv = 0.5 * std
        dc = dc.addmm_(self.dmlv[t], self.w_co)
        if d_con_states is not None:
            dc.add_(d_con_states[t])
        return self.con.step(t, dc)


def _sum_into(
    out: torch.Tensor, grads: torch.Tensor | None, t: int, extra: torch.Tensor | None
) -> None:
    """out = grads[t] + extra, either of them possibly absent (zero)."""
    if grads is None and extra is None:
        out.zero_()
    elif grads is None:
        assert extra is not None
        out.copy_(extra)
    elif extra is None:
        out.copy_(grads[t])
    else:
        torch.add(grads[t], extra, out=out)
