"""The fused recurrences written plainly: one bin at a time, through autograd.

`gru_tape.py`, `gru.StreamRecurrence` and `decoder_loop.py` compute the
encoder and decoder loops with hand-written backpropagation through time,
which is fast but long. The functions here take the same operands and return
the same values with every step an ordinary autograd operation, so they are
the readable statement of the equations, and the tests check the fast kernels
against them (values and gradients, float64). Too slow to train with: each bin
adds a graph node per operation and the backward pass replays them all.
"""

from __future__ import annotations

import torch

from autolfads.trainer.model.modules.decoder_loop import ControllerOperands, GeneratorOperands
from autolfads.trainer.model.modules.gru import gru_step


def stream_recurrence_reference(
    x_zr: torch.Tensor, x_n: torch.Tensor, h0: torch.Tensor, w_hh_t: torch.Tensor, clip: float
) -> torch.Tensor:
    """`StreamRecurrence.apply` stepped plainly: x_zr (T, K, B, 2H), x_n
    (T, K, B, H), h0 (K, B, H), w_hh_t (K, H, 3H) -> states (T, K, B, H)."""
    hidden = h0.shape[-1]
    w_zr, w_n = w_hh_t[..., : 2 * hidden], w_hh_t[..., 2 * hidden :]
    states, h = [], h0
    for t in range(x_zr.shape[0]):
        h = gru_step(x_zr[t], x_n[t], h, w_zr, w_n, clip)
        states.append(h)
    return torch.stack(states)


def decoder_loop_reference(
    gen: GeneratorOperands, con: ControllerOperands | None
) -> tuple[torch.Tensor, ...]:
    """`run_decoder_loop` stepped plainly (same operands, same outputs):
    time-major (gen_states, factors, con_states, co_means, co_stds, co), the
    last four (T, B, 0) without a controller. The equations per bin t are in
    decoder_loop.py's docstring; this is them, line by line."""
    seq_len, batch, gen_dim = gen.gen_x_zr.shape[0], gen.gen_h0.shape[0], gen.gen_h0.shape[1]
    w_gen_zr, w_gen_n = gen.w_gen_hh_t[:, : 2 * gen_dim], gen.w_gen_hh_t[:, 2 * gen_dim :]
    co_dim = 0 if con is None else con.w_gen_co_t.shape[0]
    factor, gen_h = gen.factor0, gen.gen_h0
    con_h = gen.gen_h0.new_zeros(batch, 0) if con is None else con.con_h0
    outs: list[list[torch.Tensor]] = [[] for _ in range(6)]
    for t in range(seq_len):
        x_gen = torch.cat([gen.gen_x_zr[t], gen.gen_x_n[t]], dim=1)  # (B, 3G)
        if con is not None:
            con_h, mean, std, co = _controller_step(con, t, factor, con_h)
            x_gen = x_gen + co @ con.w_gen_co_t
        else:
            mean = std = co = gen.gen_h0.new_zeros(batch, co_dim)
        gen_h = gru_step(
            x_gen[:, : 2 * gen_dim], x_gen[:, 2 * gen_dim :], gen_h, w_gen_zr, w_gen_n, gen.clip
        )
        dropped = gen_h if gen.gen_drop is None else gen_h * gen.gen_drop[t]
        factor = dropped @ gen.w_fac_t
        for out, value in zip(outs, (gen_h, factor, con_h, mean, std, co), strict=True):
            out.append(value)
    return tuple(torch.stack(o) for o in outs)


def _controller_step(
    con: ControllerOperands, t: int, factor: torch.Tensor, con_h: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """One controller bin: (con_h, co_mean, co_std, co), each (B, .)."""
    con_dim, co_dim = con_h.shape[1], con.w_gen_co_t.shape[0]
    fin = factor if con.fac_drop is None else factor * con.fac_drop[t]
    x_con = torch.cat([con.ci_x_zr[t], con.ci_x_n[t]], dim=1) + fin @ con.w_con_fac_t
    w_zr, w_n = con.w_con_hh_t[:, : 2 * con_dim], con.w_con_hh_t[:, 2 * con_dim :]
    con_h = gru_step(x_con[:, : 2 * con_dim], x_con[:, 2 * con_dim :], con_h, w_zr, w_n, con.clip)
    mlv = con_h @ con.w_co_t + con.b_co  # (B, 2D): mean | logvar
    mean, std = mlv[:, :co_dim], torch.exp(0.5 * mlv[:, co_dim:])
    co = mean if con.eps is None else mean + std * con.eps[t]
    return con_h, mean, std, co
