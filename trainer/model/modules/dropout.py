"""Dropout with a runtime rate and an explicit generator.

PBT changes `dropout_rate` between segments without rebuilding the model, so
the rate is a float argument rather than an `nn.Dropout` attribute, and masks
come from the session's seeded `torch.Generator` so that they are part of the
checkpointed RNG state (bitwise-reproducible training and resume).
"""

from __future__ import annotations

import torch


def dropout_scale_mask(
    shape: tuple[int, ...] | torch.Size,
    rate: float,
    generator: torch.Generator | None,
    like: torch.Tensor,
) -> torch.Tensor | None:
    """Inverted-dropout multiplier (0 or 1/(1-rate)) of `shape`; None if rate 0.

    Masks for a whole sequence are drawn at once (T, B, D) so the time loop
    only multiplies.
    """
    if rate <= 0.0:
        return None
    keep = 1.0 - rate
    return bernoulli_mask(shape, keep, generator, like).mul_(1.0 / keep)


def bernoulli_mask(
    shape: tuple[int, ...] | torch.Size,
    p: float,
    generator: torch.Generator | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """0/1 tensor (dtype of `like`), each element 1 with probability p.

    rand + compare: several times faster on CPU than `bernoulli_` with a generator.
    """
    mask = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return mask.lt_(p)


def apply_dropout(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout of x at `rate` (callers pass rate 0 outside training)."""
    mask = dropout_scale_mask(x.shape, rate, generator, x)
    return x if mask is None else x * mask
