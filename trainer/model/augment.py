"""Training-time augmentations that act on both the input and the loss.

Coordinated dropout (CD): drop encoder-input elements and let gradients flow
only through the reconstruction of *dropped* elements, so the model cannot
learn the identity map. Sample validation (SV): a fixed, seeded set of
held-in elements is hidden from the input and from the training loss and its
reconstruction is only logged.

Masks over the encoder input are (B, encod_seq_len, encod_data_dim); loss
masks are padded with ones to (B, recon_seq_len, recon_data_dim) so held-out
channels and forward bins always contribute.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from autolfads.trainer.model.modules.dropout import bernoulli_mask


def pad_to_recon(mask: torch.Tensor, recon_seq_len: int, recon_data_dim: int) -> torch.Tensor:
    """Pad an encoder-shaped mask (B, Te, Ne) with ones to (B, Tr, Nr)."""
    _, enc_t, enc_n = mask.shape
    return F.pad(mask, (0, recon_data_dim - enc_n, 0, recon_seq_len - enc_t), value=1.0)


def coordinated_dropout(
    encod_data: torch.Tensor,
    cd_rate: float,
    cd_pass_rate: float,
    recon_seq_len: int,
    recon_data_dim: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (masked input, loss grad mask (B, Tr, Nr) or None when cd_rate 0).

    input = data * cd_mask / (1 - cd_rate) with cd_mask ~ Bernoulli(1 - cd_rate);
    grad_mask = (NOT cd_mask) OR Bernoulli(cd_pass_rate).
    """
    if cd_rate <= 0.0:
        return encod_data, None
    keep = bernoulli_mask(encod_data.shape, 1.0 - cd_rate, generator, encod_data)
    masked = encod_data * keep * (1.0 / (1.0 - cd_rate))
    grad_mask = 1.0 - keep
    if cd_pass_rate > 0.0:
        passed = bernoulli_mask(encod_data.shape, cd_pass_rate, generator, encod_data)
        grad_mask = torch.maximum(grad_mask, passed)
    return masked, pad_to_recon(grad_mask, recon_seq_len, recon_data_dim)


def apply_grad_mask(loss: torch.Tensor, grad_mask: torch.Tensor | None) -> torch.Tensor:
    """Same loss values, gradients only where grad_mask is 1.

    loss*mask + stop_grad(loss*(1-mask)).
    """
    if grad_mask is None:
        return loss
    return loss * grad_mask + (loss * (1.0 - grad_mask)).detach()


def make_sv_mask(shape: tuple[int, int, int], sv_rate: float, seed: int) -> np.ndarray:
    """Fixed SV mask for one split: 1 = element used for training (float32).

    Seeded per call so that the same data + seed always hide the same elements.
    """
    rng = np.random.default_rng(seed)
    return (rng.random(shape) >= sv_rate).astype(np.float32)


def sample_validation_input(
    encod_data: torch.Tensor, sv_mask: torch.Tensor, sv_rate: float
) -> torch.Tensor:
    """Hide SV elements from the input: data * sv_mask / (1 - sv_rate)."""
    return encod_data * sv_mask * (1.0 / (1.0 - sv_rate))


def sample_validation_losses(
    loss: torch.Tensor, sv_mask: torch.Tensor, sv_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an element-wise loss (B, Tr, Nr) by an SV mask (B, Te, Ne).

    Returns (training elements (B, Tr, Nr): loss*sv/(1-sv_rate) on held-in
    observed elements, unchanged on held-out channels and forward bins;
    SV elements (B, Te, Ne): loss*(1-sv)/sv_rate over the encoder's elements
    only, as lfads-torch does, so that its mean estimates the mean NLL of the
    hidden elements and compares with the held-in reconstruction; only logged).
    """
    _, recon_t, recon_n = loss.shape
    _, enc_t, enc_n = sv_mask.shape
    train_w = pad_to_recon(sv_mask * (1.0 / (1.0 - sv_rate)), recon_t, recon_n)
    held = loss[:, :enc_t, :enc_n] * ((1.0 - sv_mask) * (1.0 / sv_rate))
    return loss * train_w, held
