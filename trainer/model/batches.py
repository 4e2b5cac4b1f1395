"""One data split as device tensors, batched by index (no DataLoader), plus the
bits-per-spike bookkeeping the session logs every epoch.

Bits per spike (NLB): (NLL_null - NLL_model) / (n_spikes * ln 2), with the null
model predicting each neuron's mean count per bin over the evaluated slice:
    valid_bps     held-in channels, observed bins   [:, :Te, :Ne]
    valid_co_bps  held-out channels, observed bins  [:, :Te, Ne:]
    valid_fp_bps  all channels, forward bins        [:, Te:, :]
The Stirling term of the full Poisson NLL cancels in the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from autolfads.trainer.data.dataset import Split
from autolfads.trainer.model.augment import make_sv_mask
from autolfads.trainer.model.lfads import DataDims
from autolfads.trainer.model.modules.recons import poisson_nll, stirling_term

BPS_SLICES = ("bps", "co_bps", "fp_bps")


def _slices(dims: DataDims) -> dict[str, tuple[slice, slice]]:
    """(bins, channels) slices per metric; absent ones when the data has none."""
    te, ne = dims.encod_seq_len, dims.encod_data_dim
    out = {"bps": (slice(0, te), slice(0, ne))}
    if dims.recon_data_dim > ne:
        out["co_bps"] = (slice(0, te), slice(ne, None))
    if dims.recon_seq_len > te:
        out["fp_bps"] = (slice(te, None), slice(None))
    return out


def bits_per_spike_terms(
    logrates: torch.Tensor,
    recon: torch.Tensor,
    dims: DataDims,
    stirling: torch.Tensor | None = None,
) -> dict[str, float]:
    """Summed model NLL per bps slice for one batch (B, Tr, Nr)."""
    nll = poisson_nll(logrates, recon, stirling)
    return {
        name: float(nll[:, t, n].sum(dtype=torch.float64)) for name, (t, n) in _slices(dims).items()
    }


@dataclass
class SplitTensors:
    encod: torch.Tensor  # (n, Te, Ne) float32
    recon: torch.Tensor | None  # (n, Tr, Nr) float32; None for test
    ext: torch.Tensor | None  # (n, Tr, E) float32
    sv_mask: torch.Tensor | None  # (n, Te, Ne) 1 = used for training
    # (n, Tr, Nr) Stirling term of the full Poisson NLL: it depends on the
    # counts only, so it is computed once here rather than in every loss.
    recon_stirling: torch.Tensor | None = None
    null_nll: dict[str, float] = field(default_factory=dict)
    n_spikes: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(
        cls, split: Split, device: torch.device, sv_rate: float = 0.0, sv_seed: int = 0
    ) -> SplitTensors:
        def to_dev(arr: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(arr, dtype=np.float32), device=device)

        def maybe(arr: np.ndarray | None) -> torch.Tensor | None:
            return None if arr is None else to_dev(arr)

        sv: torch.Tensor | None = None
        if sv_rate > 0.0:
            sv = to_dev(make_sv_mask(split.encod_data.shape, sv_rate, sv_seed))
        tensors = cls(to_dev(split.encod_data), maybe(split.recon_data), maybe(split.ext_input), sv)
        tensors._null_model()
        if tensors.recon is not None:
            tensors.recon_stirling = stirling_term(tensors.recon)
        return tensors

    @property
    def n_trials(self) -> int:
        return int(self.encod.shape[0])

    def batch(
        self, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(encod, recon, ext, sv_mask) of the trials in idx."""

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, idx)

        return self.encod.index_select(0, idx), take(self.recon), take(self.ext), take(self.sv_mask)

    def stirling(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Precomputed Stirling term (B, Tr, Nr) of the trials in idx."""
        return None if self.recon_stirling is None else self.recon_stirling.index_select(0, idx)

    def _null_model(self) -> None:
        if self.recon is None:
            return
        dims = DataDims(
            encod_data_dim=self.encod.shape[2],
            recon_data_dim=self.recon.shape[2],
            encod_seq_len=self.encod.shape[1],
            recon_seq_len=self.recon.shape[1],
        )
        for name, (t, n) in _slices(dims).items():
            counts = self.recon[:, t, n].double()
            mean_rate = counts.mean(dim=(0, 1), keepdim=True).expand_as(counts)
            nll = F.poisson_nll_loss(
                mean_rate, counts, log_input=False, full=True, eps=1e-30, reduction="sum"
            )
            self.null_nll[name] = float(nll)
            self.n_spikes[name] = float(counts.sum())

    def heldout_nll(self, nll_sums: dict[str, float], dims: DataDims) -> float | None:
        """Mean model NLL per element of the held-out channels in the observed
        bins (the co-bps slice); None if the data has no held-out channels."""
        if "co_bps" not in nll_sums:
            return None
        elements = dims.encod_seq_len * (dims.recon_data_dim - dims.encod_data_dim)
        return nll_sums["co_bps"] / (self.n_trials * elements)

    def bits_per_spike(
        self, nll_sums: dict[str, float], dims: DataDims, prefix: str = ""
    ) -> dict[str, float]:
        out = {}
        for name in _slices(dims):
            spikes = self.n_spikes.get(name, 0.0)
            bps = math.nan
            if spikes > 0 and name in nll_sums:
                bps = (self.null_nll[name] - nll_sums[name]) / (spikes * math.log(2.0))
            out[f"{prefix}{name}"] = bps
        return out
