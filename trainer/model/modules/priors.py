"""LFADS priors: Gaussian IC prior and AR(1) controller-output prior.

KL terms are returned per trial (B,); the objective averages over the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_LOG_2PI = math.log(2.0 * math.pi)


def normal_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(z; mean, exp(logvar))."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar))


class GaussianPrior(nn.Module):
    """N(mean, variance*I) with trainable mean (init 0) and fixed variance."""

    def __init__(self, dim: int, variance: float) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim))
        self.logvar: torch.Tensor
        self.register_buffer("logvar", torch.full((dim,), math.log(variance)))

    def kl(self, post_mean: torch.Tensor, post_std: torch.Tensor) -> torch.Tensor:
        """Analytic KL(N(post_mean, post_std^2) || prior), summed over dims: (B,)."""
        prior_var = torch.exp(self.logvar)
        post_var = post_std**2
        kl = 0.5 * (
            self.logvar
            - torch.log(post_var)
            + (post_var + (post_mean - self.mean) ** 2) / prior_var
            - 1.0
        )
        return kl.sum(dim=-1)


class AutoregressivePrior(nn.Module):
    """Independent AR(1) processes per controller-output dim.

    alpha = exp(-1/tau); z_0 ~ N(0, nvar/(1-alpha^2)) (the stationary variance),
    z_t | z_{t-1} ~ N(alpha*z_{t-1}, nvar). tau and nvar are trainable in log space.
    """

    def __init__(self, dim: int, tau: float, nvar: float) -> None:
        super().__init__()
        self.logtaus = nn.Parameter(torch.full((dim,), math.log(tau)))
        self.lognvars = nn.Parameter(torch.full((dim,), math.log(nvar)))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T, D) -> log p(z) summed over time and dims: (B,)."""
        alpha = torch.exp(-1.0 / torch.exp(self.logtaus))  # (D,)
        logvar0 = self.lognvars - torch.log1p(-(alpha**2))
        first = normal_log_prob(z[:, :1], torch.zeros_like(z[:, :1]), logvar0)
        rest = normal_log_prob(z[:, 1:], alpha * z[:, :-1], self.lognvars)
        return first.sum(dim=(1, 2)) + rest.sum(dim=(1, 2))

    def kl(
        self, post_mean: torch.Tensor, post_std: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """Single-sample Monte Carlo KL: log q(z) - log p(z), z = mean + std*eps.

        All (B, T, D); returns (B,). eps comes from the session generator.
        """
        z = post_mean + post_std * eps
        log_q = normal_log_prob(z, post_mean, 2.0 * torch.log(post_std)).sum(dim=(1, 2))
        return log_q - self.log_prob(z)
