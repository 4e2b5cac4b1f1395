"""LFADS datasets in memory (numpy only; no torch here).

Arrays are (trials, bins, channels). Held-out channels come after the held-in
ones and forward-prediction bins after the observed ones, as in lfads-torch:

    encod_data: (n, encod_seq_len, encod_data_dim)       model input
    recon_data: (n, recon_seq_len, recon_data_dim)       reconstruction target
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split (train / valid / test) of a dataset."""

    encod_data: np.ndarray  # (n, encod_seq_len, encod_data_dim) float32 counts
    recon_data: np.ndarray | None  # (n, recon_seq_len, recon_data_dim); None for test
    ext_input: np.ndarray | None = None  # (n, recon_seq_len, ext_input_dim)
    truth: np.ndarray | None = None  # (n, recon_seq_len, recon_data_dim) rates in counts/bin
    behavior: np.ndarray | None = None  # (n, encod_seq_len, behavior_dim), e.g. velocity
    cond_idx: np.ndarray | None = None  # (n,) integer condition id per trial

    @property
    def n_trials(self) -> int:
        return int(self.encod_data.shape[0])


@dataclass(frozen=True)
class LfadsData:
    """A validated dataset; build it with `load_lfads_h5` (see below)."""

    train: Split
    valid: Split
    test: Split | None = None
    source: str = "<memory>"
    attrs: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "psth"

    @property
    def encod_seq_len(self) -> int:
        return int(self.train.encod_data.shape[1])

    @property
    def encod_data_dim(self) -> int:
        return int(self.train.encod_data.shape[2])

    @property
    def recon_seq_len(self) -> int:
        assert self.train.recon_data is not None
        return int(self.train.recon_data.shape[1])

    @property
    def recon_data_dim(self) -> int:
        assert self.train.recon_data is not None
        return int(self.train.recon_data.shape[2])

    @property
    def ext_input_dim(self) -> int:
        ext = self.train.ext_input
        return 0 if ext is None else int(ext.shape[2])
