"""Poisson observation model: fan-in readout to log-rates and the likelihood."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class FanInLinear(nn.Linear):
    """Linear layer with W ~ N(0, 1/sqrt(fan_in)) and zero bias (lfads-torch)."""

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0 / math.sqrt(max(self.in_features, 1)))
            if self.bias is not None:
                self.bias.zero_()


class KernelNormalizedLinear(nn.Linear):
    """Linear map whose weight rows are L2-normalised at every call (factors)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0 / math.sqrt(max(in_features, 1)))

    def normalized_weight(self) -> torch.Tensor:
        return F.normalize(self.weight, p=2.0, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight())


def poisson_nll(
    logrates: torch.Tensor, counts: torch.Tensor, stirling: torch.Tensor | None = None
) -> torch.Tensor:
    """Element-wise Poisson NLL with the Stirling term (`full=True`).

    exp(l) - k*l + [k*log k - k + 0.5*log(2*pi*k) for k > 1]; same shape as input.
    `stirling` is that bracket precomputed by `stirling_term(counts)` (it depends
    on the data only, so a split computes it once); the result is bitwise the same.
    """
    if stirling is None:
        return F.poisson_nll_loss(logrates, counts, log_input=True, full=True, reduction="none")
    return (torch.exp(logrates) - counts * logrates).add_(stirling)


def stirling_term(counts: torch.Tensor) -> torch.Tensor:
    """k*log k - k + 0.5*log(2*pi*k) where k > 1, else 0 (as `poisson_nll_loss`)."""
    term = counts * torch.log(counts) - counts + 0.5 * torch.log(2 * math.pi * counts)
    return term.masked_fill(counts <= 1, 0.0)
