"""Clipped GRU cells (lfads-torch semantics) and a fast multi-stream GRU loop.

The LFADS GRU differs from `torch.nn.GRU` in two ways, so the cuDNN/MKL fused
kernels cannot be used: the reset gate multiplies the hidden state *before* the
recurrent candidate matmul, and the hidden state is clamped to +-clip after
every step. Gate order in the stacked weights is (z, r, n) = (update, reset,
candidate). `bias_hh` is zero and frozen in lfads-torch, so it is omitted here;
the maths is identical.

Speed: the recurrence is latency bound (one small matmul per gate per step), so
input projections for every time step are computed in one matmul outside the
loop, independent recurrences of equal hidden size (forward and backward
directions of the IC and CI encoders) advance together through one batched
matmul per step, and the loop runs as `StreamRecurrence`, a custom autograd
Function with hand-written backpropagation through time (gru_tape.py).
`gru_step` is the same maths through autograd, for the single-step cell API.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from autolfads.trainer.model.modules.gru_tape import GruTape


class ClippedGRUCell(nn.Module):
    """GRU cell with the LFADS reset-gate placement and a hidden-state clamp.

    Encoder cells scale both initial weight matrices by fan-in input+hidden (as
    lfads-torch does for `is_encoder`); decoder cells use input and hidden size.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        clip_value: float = math.inf,
        is_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.clip_value = float(clip_value)
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        ih_fan = input_size + hidden_size if is_encoder else input_size
        hh_fan = input_size + hidden_size if is_encoder else hidden_size
        with torch.no_grad():
            self.weight_ih.normal_(0.0, 1.0 / math.sqrt(max(ih_fan, 1)))
            self.weight_hh.normal_(0.0, 1.0 / math.sqrt(max(hh_fan, 1)))
            # Gates start open-ish (bias 1 for z and r), candidate bias 0.
            self.bias_ih.fill_(1.0)
            self.bias_ih[2 * hidden_size :] = 0.0

    @property
    def rec_weight(self) -> torch.Tensor:
        """The recurrent kernel the L2 penalty applies to."""
        return self.weight_hh

    def project_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_size) -> (..., 3*hidden_size): x @ W_ih^T + b_ih."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrent_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_hh_zr^T (H, 2H), W_hh_n^T (H, H)): loop operands, built once per forward."""
        w_zr, w_n = self.weight_hh.split((2 * self.hidden_size, self.hidden_size))
        return w_zr.t(), w_n.t()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step like `nn.GRUCell`: x (B, I), h (B, H) -> (B, H)."""
        x_proj = self.project_inputs(x)
        hidden = self.hidden_size
        w_zr, w_n = self.recurrent_weights()
        return gru_step(
            x_proj[:, : 2 * hidden], x_proj[:, 2 * hidden :], h, w_zr, w_n, self.clip_value
        )


def gru_step(
    x_zr: torch.Tensor,
    x_n: torch.Tensor,
    h: torch.Tensor,
    w_zr: torch.Tensor,
    w_n: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """Clipped GRU update from projected inputs x_zr (.., B, 2H), x_n (.., B, H).

    Works for one stream, h (B, H) with w_zr (H, 2H), w_n (H, H), and for K
    stacked streams, h (K, B, H) with w_zr (K, H, 2H), w_n (K, H, H). Inputs and
    weights arrive pre-split: splitting inside the loop would add a gradient
    concatenation per step in the backward pass.
    """
    zr = torch.sigmoid(x_zr + torch.matmul(h, w_zr))
    z, r = zr.chunk(2, dim=-1)
    n = torch.tanh(x_n + torch.matmul(r * h, w_n))
    # z*h + (1-z)*n == n + z*(h-n)
    return torch.clamp(n + z * (h - n), -clip, clip)


class BidirectionalClippedGRU(nn.Module):
    """Forward + backward clipped GRU over a sequence, learned initial states."""

    def __init__(self, input_size: int, hidden_size: int, clip_value: float) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.fwd = ClippedGRUCell(input_size, hidden_size, clip_value, is_encoder=True)
        self.bwd = ClippedGRUCell(input_size, hidden_size, clip_value, is_encoder=True)
        self.h0 = nn.Parameter(torch.zeros(2, hidden_size))  # (fwd, bwd)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, I) -> (fwd_out (B,T,H), bwd_out (B,T,H), final (B, 2H))."""
        return run_bidirectional([self], x)[0]


def run_bidirectional(
    grus: Sequence[BidirectionalClippedGRU], x: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run several bidirectional GRUs over the same input x (B, T, I).

    GRUs with equal hidden size share one time loop: their 2 directions each
    become streams of a (K, B, H) state advanced by batched matmuls. Returns,
    per GRU, (fwd_out, bwd_out) both (B, T, H) aligned to input time, and the
    final states cat(fwd_last, bwd_first) (B, 2H).
    """
    batch, seq_len, _ = x.shape
    x_tm = x.transpose(0, 1)  # (T, B, I)
    x_rev = x_tm.flip(0)
    results: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    groups: dict[int, list[int]] = {}
    for i, gru in enumerate(grus):
        groups.setdefault(gru.hidden_size, []).append(i)
    for hidden, members in groups.items():
        cells = [c for i in members for c in (grus[i].fwd, grus[i].bwd)]
        k = len(cells)
        clip = cells[0].clip_value
        assert all(c.clip_value == clip for c in cells), "grouped GRUs share one clip"
        # Input projections of all bins, one batched matmul per gate group:
        # (K, T*B, I) @ (K, I, G) + bias -> (K, T, B, G); even streams read the
        # input forward in time, odd ones (backward directions) reversed.
        x_k = torch.stack([x_tm, x_rev] * (k // 2)).reshape(k, seq_len * batch, -1)
        w_ih = torch.stack([c.weight_ih for c in cells]).transpose(1, 2)  # (K, I, 3H)
        b_ih = torch.stack([c.bias_ih for c in cells]).unsqueeze(1)  # (K, 1, 3H)
        x_zr, x_n = (
            torch.baddbmm(b_ih[..., g], x_k, w_ih[..., g]).view(k, seq_len, batch, -1)
            for g in (slice(0, 2 * hidden), slice(2 * hidden, None))
        )
        w_hh_t = torch.stack([c.weight_hh for c in cells]).transpose(1, 2)  # (K, H, 3H)
        h0 = torch.cat([grus[i].h0 for i in members]).unsqueeze(1).expand(-1, batch, -1)
        # (T, K, B, H): the hand-written recurrence (gru_tape.py).
        out = StreamRecurrence.apply(x_zr.transpose(0, 1), x_n.transpose(0, 1), h0, w_hh_t, clip)
        for j, i in enumerate(members):
            fwd_out = out[:, 2 * j].transpose(0, 1)  # (B, T, H)
            bwd_out = out[:, 2 * j + 1].flip(0).transpose(0, 1)  # back to input time order
            final = torch.cat([out[-1, 2 * j], out[-1, 2 * j + 1]], dim=1)
            results[i] = (fwd_out, bwd_out, final)
    return [results[i] for i in range(len(grus))]


class StreamRecurrence(torch.autograd.Function):
    """K clipped GRUs over T bins with hand-written backpropagation through time.

    x_zr (T, K, B, 2H) and x_n (T, K, B, H) projected inputs, h0 (K, B, H),
    w_hh_t (K, H, 3H) -> states (T, K, B, H). See gru_tape.py for why this is
    faster than stepping `gru_step` through autograd; the maths is identical.
    """

    @staticmethod
    def forward(ctx, x_zr, x_n, h0, w_hh_t, clip):  # noqa: ANN001, ANN205 (autograd API)
        tape = GruTape(h0, w_hh_t, x_zr.shape[0], clip)
        tape.save = any(ctx.needs_input_grad)
        h = h0
        for t in range(x_zr.shape[0]):
            h = tape.step(t, x_zr[t], x_n[t], h)
        states = tape.states
        ctx.tape = None
        if tape.save:
            # Outputs and inputs via save_for_backward: no reference cycles.
            ctx.save_for_backward(states, h0, w_hh_t)
            ctx.tape = tape.detach_saved()
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):  # noqa: ANN001, ANN205
        bwd = ctx.tape.backward(*ctx.saved_tensors)
        dh = torch.zeros_like(grad_states[0])
        for t in reversed(range(grad_states.shape[0])):
            dh = bwd.step(t, dh.add_(grad_states[t]))
        return bwd.da_zr, bwd.da_n, dh, bwd.weight_grad(), None
