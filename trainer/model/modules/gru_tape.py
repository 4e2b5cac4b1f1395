"""Hand-written forward and backward-through-time of one clipped GRU.

Why: the LFADS recurrences are latency bound. Stepped through autograd, every
bin records ~12 graph nodes per GRU, each with engine overhead, the backward
pass concatenates gradients for every gate split, and the shared weights
receive T separate gradient accumulations. A `GruTape` runs the forward loop
without a graph and its backward loop as a fixed sequence of ~17 small tensor
ops per bin (in place where possible), with the weight gradients accumulated
by `addmm_` into one buffer.

Measured on the 2-core Xeon (benchmarks/README.md "Training speed"): per-bin
tensors must stay small. A first version kept every gate in (T, ..) buffers
and computed the backward factors in bulk; those 10-40 MB buffers are
returned to the OS after each step by glibc and page-faulted in again on the
next (100k minor faults per step), and bulk element-wise passes over them run
from DRAM, so it was slower than autograd. Per-bin tensors of (B, H) floats
are reused from malloc's free lists and stay in cache.

Shapes: S is the stream shape, () for one GRU or (K,) for K GRUs advanced
together by batched matmuls (the encoder directions). H is the hidden size.
    h0       (*S, B, H)      initial state (may be an expanded view)
    w_hh_t   (*S, H, 3H)     transposed recurrent kernel, gate order (z, r, n)
    x_t      (*S, B, 3H)     projected input of one bin, bias included
    states   (T, *S, B, H)   hidden state after every bin
The clamp's gradient follows `torch.clamp`: it passes where the unclamped
state lies inside [-clip, clip], bounds included (and not for NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def addmm_out(
    bias: torch.Tensor, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """bias + a @ w for 2-D a (mm) or 3-D a (one matmul per stream)."""
    if a.dim() == 2:
        return torch.addmm(bias, a, w, out=out)
    return torch.baddbmm(bias, a, w, out=out)


class GruTape:
    """Per-bin saved tensors and step functions of one clipped GRU over T bins."""

    def __init__(self, h0: torch.Tensor, w_hh_t: torch.Tensor, seq_len: int, clip: float) -> None:
        hidden = h0.shape[-1]
        assert w_hh_t.shape[-2:] == (hidden, 3 * hidden), "w_hh_t must be (*S, H, 3H)"
        self.hidden = hidden
        self.clip = float(clip)
        self.h0 = h0
        self.w_hh_t = w_hh_t
        self.states = h0.new_empty(seq_len, *h0.shape)
        self.save = False  # set by the caller when a backward pass will follow
        self.saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def step(
        self, t: int, x_zr: torch.Tensor, x_n: torch.Tensor, h_prev: torch.Tensor
    ) -> torch.Tensor:
        """Advance one bin: projected inputs x_zr (*S, B, 2H), x_n (*S, B, H),
        bias included -> states[t] (*S, B, H)."""
        hidden = self.hidden
        w = self.w_hh_t
        zr = addmm_out(x_zr, h_prev, w[..., : 2 * hidden]).sigmoid_()
        z, r = zr[..., :hidden], zr[..., hidden:]
        rh = r * h_prev
        n = addmm_out(x_n, rh, w[..., 2 * hidden :]).tanh_()
        # z*h + (1-z)*n == n + z*(h-n) == lerp(n, h, z)
        hp = torch.lerp(n, h_prev, z)
        h = torch.clamp(hp, -self.clip, self.clip, out=self.states[t])
        if self.save:
            # Clamp pass-through mask: clamp(hp) == hp exactly inside the bounds.
            self.saved.append((zr, n, rh, torch.eq(h, hp)))
        return h

    def detach_saved(self) -> GruTape:
        """Drop the tensors the caller passes through `save_for_backward`: the
        tape lives on the autograd node, and an output referenced from there
        would form a reference cycle through C++ that is never collected."""
        self.states = self.h0 = self.w_hh_t = None  # type: ignore[assignment]  # spent
        return self

    def backward(self, states: torch.Tensor, h0: torch.Tensor, w_hh_t: torch.Tensor) -> GruBackward:
        """Start a backward pass with the saved (states, h0, w_hh_t)."""
        return GruBackward(self.saved, self.hidden, states, h0, w_hh_t)


class GruBackward:
    """One backward pass over a finished `GruTape`'s saved tensors (the tape is
    not modified, so a retained graph can be differentiated again)."""

    def __init__(
        self,
        saved: Sequence[tuple[torch.Tensor, ...]],
        hidden: int,
        states: torch.Tensor,
        h0: torch.Tensor,
        w: torch.Tensor,
    ) -> None:
        self.saved, self.hidden, self.states, self.h0 = saved, hidden, states, h0
        self.w_zr_t = w[..., : 2 * hidden].transpose(-1, -2)  # (*S, 2H, H)
        self.w_n_t = w[..., 2 * hidden :].transpose(-1, -2)  # (*S, H, H)
        lead = states.shape[:-1]  # (T, *S, B)
        self.da_zr = states.new_empty(*lead, 2 * hidden)  # dL/dx_zr
        self.da_n = states.new_empty(*lead, hidden)  # dL/dx_n
        # dL/dw_hh_t, accumulated bin by bin into contiguous buffers.
        zeros = states.new_zeros
        self.grad_zr = zeros(*w.shape[:-1], 2 * hidden)
        self.grad_n = zeros(*w.shape[:-1], hidden)

    def step(self, t: int, dh: torch.Tensor) -> torch.Tensor:
        """dL/dstates[t] (*S, B, H) -> dL/dh_prev; fills da_zr[t] and da_n[t]
        (the gradients of the projected inputs = of the gate pre-activations)."""
        zr, n, rh, inside = self.saved[t]
        z, r = zr[..., : self.hidden], zr[..., self.hidden :]
        h_prev = self.states[t - 1] if t > 0 else self.h0
        dhp = dh * inside  # through the clamp
        dh_direct = dhp * z  # hp = z*h_prev + (1-z)*n
        dz = dhp * (h_prev - n)
        dn = dhp.sub_(dh_direct)
        # tanh': da_n = dn * (1 - n^2)
        da_n = torch.addcmul(dn, dn * n, n, value=-1.0, out=self.da_n[t])
        d_rh = torch.matmul(da_n, self.w_n_t)
        # sigmoid': da = d * s * (1 - s) for s = (z | r)
        dzr = torch.cat([dz, d_rh * h_prev], dim=-1).mul_(zr)
        da_zr = torch.addcmul(dzr, dzr, zr, value=-1.0, out=self.da_zr[t])
        addmm_out(self.grad_zr, h_prev.transpose(-1, -2), da_zr, out=self.grad_zr)
        addmm_out(self.grad_n, rh.transpose(-1, -2), da_n, out=self.grad_n)
        return addmm_out(dh_direct.addcmul_(d_rh, r), da_zr, self.w_zr_t)

    def weight_grad(self) -> torch.Tensor:
        """dL/dw_hh_t (*S, H, 3H); complete once `step` has run for every bin."""
        return torch.cat([self.grad_zr, self.grad_n], dim=-1)


def sum_outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over bins and trials of a^T b: a (T, *S, B, I), b (T, *S, B, J) -> (*S, I, J)."""
    if a.dim() == 3:
        return torch.mm(a.reshape(-1, a.shape[-1]).t(), b.reshape(-1, b.shape[-1]))
    # (T, K, B, I) -> (K, T*B, I): one batched matmul over the streams.
    k = a.shape[1]
    a_k = a.transpose(0, 1).reshape(k, -1, a.shape[-1])
    b_k = b.transpose(0, 1).reshape(k, -1, b.shape[-1])
    return torch.bmm(a_k.transpose(1, 2), b_k)
