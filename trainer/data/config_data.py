"""The data file a config names, generated from `data.synth` if missing (numpy only)."""

from __future__ import annotations

from pathlib import Path

from autolfads.config import RunConfig
from autolfads.errors import ConfigError, DataError
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import load_lfads_h5, write_lfads_h5
from autolfads.trainer.data.synth import make_synthetic


def ensure_data_file(cfg: RunConfig) -> Path:
    """Path of the run's data; generate it first when `data.synth` says how."""
    path = Path(cfg.data.path)
    if path.exists():
        return path
    if cfg.data.synth is None:
        raise DataError(
            f"{path}: data file not found (set data.synth in the config to generate one)"
        )
    synth = cfg.data.synth
    data = make_synthetic(synth.kind, seed=synth.seed, **synth.sizes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a file where a folder of the path should be
        raise DataError(f"{path}: cannot make its folder ({err.strerror}); fix data.path") from None
    write_lfads_h5(data, path)  # atomic: a crash never leaves a partial file
    return path


def load_config_data(cfg: RunConfig) -> tuple[Path, LfadsData]:
    """Ensure, load and validate the run's data (bad files fail here, before any run exists)."""
    path = ensure_data_file(cfg)
    data = load_lfads_h5(path)
    check_data_fits_config(cfg, data)
    return path, data


def check_data_fits_config(cfg: RunConfig, data: LfadsData) -> None:
    """What the config asks of the data beyond a valid file. Raises ConfigError."""
    if cfg.pbt.fitness == "valid_heldout_recon_smth" and not data.heldout_dim:
        raise ConfigError(
            f"pbt.fitness valid_heldout_recon_smth needs held-out neurons, but {data.source} "
            "has none (recon_data has no channels beyond encod_data); "
            "use pbt.fitness valid_recon_smth"
        )
