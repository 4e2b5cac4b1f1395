"""LFADS encoders: initial-condition (IC) posterior and controller inputs (CI).

Both are bidirectional clipped GRUs over the dropped-out encoder data; they
advance in one shared time loop when their sizes match (see gru.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autolfads.trainer.model.modules.dropout import apply_dropout
from autolfads.trainer.model.modules.gru import BidirectionalClippedGRU, run_bidirectional
from autolfads.trainer.model.modules.recons import FanInLinear


@dataclass
class EncoderOutput:
    ic_mean: torch.Tensor  # (B, ic_dim)
    ic_std: torch.Tensor  # (B, ic_dim)
    ci: torch.Tensor | None  # (B, recon_seq_len, 2*ci_enc_dim); None without controller


class LfadsEncoder(nn.Module):
    def __init__(
        self,
        encod_data_dim: int,
        ic_enc_dim: int,
        ic_dim: int,
        ci_enc_dim: int,
        ci_lag: int,
        cell_clip: float,
        ic_post_var_min: float,
    ) -> None:
        super().__init__()
        self.ci_enc_dim = ci_enc_dim
        self.ci_lag = ci_lag
        self.ic_post_var_min = ic_post_var_min
        self.ic_enc = BidirectionalClippedGRU(encod_data_dim, ic_enc_dim, cell_clip)
        self.ic_linear = FanInLinear(2 * ic_enc_dim, 2 * ic_dim)
        self.ci_enc = (
            BidirectionalClippedGRU(encod_data_dim, ci_enc_dim, cell_clip)
            if ci_enc_dim > 0
            else None
        )

    def forward(
        self,
        data: torch.Tensor,
        recon_seq_len: int,
        dropout_rate: float,
        generator: torch.Generator | None,
    ) -> EncoderOutput:
        """data (B, encod_seq_len, encod_data_dim), already augmented."""
        data = apply_dropout(data, dropout_rate, generator)
        grus = [self.ic_enc] if self.ci_enc is None else [self.ic_enc, self.ci_enc]
        runs = run_bidirectional(grus, data)
        ic_final = apply_dropout(runs[0][2], dropout_rate, generator)  # (B, 2*ic_enc_dim)
        ic_mean, ic_logvar = self.ic_linear(ic_final).chunk(2, dim=1)
        ic_std = torch.sqrt(torch.exp(ic_logvar) + self.ic_post_var_min)
        ci = None
        if self.ci_enc is not None:
            ci = self._lag_and_pad(runs[1][0], runs[1][1], recon_seq_len)
        return EncoderOutput(ic_mean, ic_std, ci)

    def _lag_and_pad(
        self, fwd: torch.Tensor, bwd: torch.Tensor, recon_seq_len: int
    ) -> torch.Tensor:
        """Delay fwd (B,T,H) and advance bwd by ci_lag bins so the controller at
        time t has not seen bin t yet from either side; zeros in forward bins."""
        batch, seq_len, hidden = fwd.shape
        lag = min(self.ci_lag, seq_len)
        ci = fwd.new_zeros(batch, recon_seq_len, 2 * hidden)
        # fwd output at t-lag and bwd output at t+lag; out-of-range bins stay 0.
        ci[:, lag:seq_len, :hidden] = fwd[:, : seq_len - lag]
        ci[:, : seq_len - lag, hidden:] = bwd[:, lag:]
        return ci
