"""The LFADS training objective (lfads-torch semantics).

    total = loss_scale * (recon + l2_ramp * l2 + kl_ramp * (kl_ic_scale * ic_kl
                                                           + kl_co_scale * co_kl))

recon: Poisson NLL (with Stirling term) per element, masked by coordinated
dropout / sample validation, averaged over all elements.
l2: sum_k scale_k * 0.5 * ||W_hh,k||^2 / sum_k numel(W_hh,k) over the recurrent
kernels whose group scale is > 0 (the scales live inside l2).
ic_kl: analytic KL to the Gaussian IC prior, averaged over the batch.
co_kl: single-sample Monte Carlo KL to the AR(1) prior, summed over time and
dims, averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from autolfads.trainer.model.augment import apply_grad_mask, sample_validation_losses
from autolfads.trainer.model.lfads import LfadsModel, LfadsOutput
from autolfads.trainer.model.modules.recons import poisson_nll


def ramp(epoch: int, start: int, increase: int) -> float:
    """Regulariser ramp weight for a 0-based epoch: clamp((e+1-start)/(inc+1), 0, 1)."""
    return min(max((epoch + 1 - start) / (increase + 1), 0.0), 1.0)


def l2_penalty(
    kernel_groups: Mapping[str, list[torch.Tensor]], scales: Mapping[str, float]
) -> torch.Tensor:
    """Scaled, size-normalised L2 of recurrent kernels; groups with scale 0 are
    left out of both the sum and the normaliser. Returns a scalar tensor."""
    total: torch.Tensor | None = None
    numel = 0
    for group, kernels in kernel_groups.items():
        scale = float(scales.get(group, 0.0))
        if scale <= 0.0:
            continue
        for weight in kernels:
            term = scale * 0.5 * weight.pow(2).sum()
            total = term if total is None else total + term
            numel += weight.numel()
    if total is None:
        any_kernel = next(iter(kernel_groups.values()))[0]
        return any_kernel.new_zeros(())
    return total / numel


@dataclass(frozen=True)
class LossWeights:
    """Everything that scales the loss terms for one epoch."""

    loss_scale: float
    kl_ic_scale: float
    kl_co_scale: float
    l2_scales: Mapping[str, float]  # per group: ic_enc, ci_enc, gen, con
    l2_ramp: float
    kl_ramp: float


@dataclass
class LossTerms:
    total: torch.Tensor  # scalar, what is optimised
    recon: torch.Tensor  # scalar, mean masked NLL
    ic_kl: torch.Tensor
    co_kl: torch.Tensor
    l2: torch.Tensor
    recon_sv: torch.Tensor | None  # SV held-out NLL (logged only)


def reconstruction(
    logrates: torch.Tensor,
    recon_data: torch.Tensor,
    grad_mask: torch.Tensor | None = None,
    sv_mask: torch.Tensor | None = None,
    sv_rate: float = 0.0,
    recon_stirling: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean masked Poisson NLL over (B, Tr, Nr) and the SV held-out NLL (or None).
    `recon_stirling`: the data's precomputed Stirling term (`stirling_term`)."""
    nll = apply_grad_mask(poisson_nll(logrates, recon_data, recon_stirling), grad_mask)
    if sv_mask is None or sv_rate <= 0.0:
        return nll.mean(), None
    train_part, held_part = sample_validation_losses(nll, sv_mask, sv_rate)
    return train_part.mean(), held_part.mean().detach()


def kl_terms(
    model: LfadsModel, output: LfadsOutput, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ic_kl, co_kl), each averaged over the batch; co_kl is 0 without controller."""
    ic_kl = model.ic_prior.kl(output.ic_mean, output.ic_std).mean()
    if model.co_prior is None:
        return ic_kl, ic_kl.new_zeros(())
    eps = torch.empty_like(output.co_means).normal_(generator=generator)
    co_kl = model.co_prior.kl(output.co_means, output.co_stds, eps).mean()
    return ic_kl, co_kl


def combine(
    recon: torch.Tensor,
    ic_kl: torch.Tensor,
    co_kl: torch.Tensor,
    l2: torch.Tensor,
    weights: LossWeights,
) -> torch.Tensor:
    kl = weights.kl_ic_scale * ic_kl + weights.kl_co_scale * co_kl
    return weights.loss_scale * (recon + weights.l2_ramp * l2 + weights.kl_ramp * kl)


def lfads_loss(
    model: LfadsModel,
    output: LfadsOutput,
    recon_data: torch.Tensor,
    weights: LossWeights,
    generator: torch.Generator | None,
    grad_mask: torch.Tensor | None = None,
    sv_mask: torch.Tensor | None = None,
    sv_rate: float = 0.0,
    recon_stirling: torch.Tensor | None = None,
) -> LossTerms:
    recon, recon_sv = reconstruction(
        output.logrates, recon_data, grad_mask, sv_mask, sv_rate, recon_stirling
    )
    ic_kl, co_kl = kl_terms(model, output, generator)
    l2 = l2_penalty(model.recurrent_kernels(), weights.l2_scales)
    total = combine(recon, ic_kl, co_kl, l2, weights)
    return LossTerms(total, recon, ic_kl, co_kl, l2, recon_sv)
