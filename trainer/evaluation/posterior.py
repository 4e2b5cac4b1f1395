"""Posterior sampling: average the model's outputs over posterior samples.

For every split, each trial is run `num_samples` times with the IC and CO
posteriors sampled (eval mode: no dropout, no coordinated dropout) and the
outputs are averaged, as lfads-torch does. Trials are repeated along the batch
dimension, and at most `batch_size` repeated rows run per forward pass; each
chunk's results move to the CPU at once, so device memory stays bounded.

Output names follow lfads-torch: `{split}_{field}` with field in OUTPUT_FIELDS;
`output_params` are Poisson rates in counts per bin.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np
import torch

from autolfads.errors import ConfigError
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import write_lfads_h5
from autolfads.trainer.model.batches import SplitTensors
from autolfads.trainer.model.lfads import LfadsModel, LfadsOutput

OUTPUT_FIELDS = (
    "output_params",
    "factors",
    "ic_mean",
    "ic_std",
    "co_means",
    "co_stds",
    "gen_states",
    "gen_init",
    "gen_inputs",
    "con_states",
)


def _fields(out: LfadsOutput) -> dict[str, torch.Tensor]:
    return {
        "output_params": torch.exp(out.logrates),
        "factors": out.factors,
        "ic_mean": out.ic_mean,
        "ic_std": out.ic_std,
        "co_means": out.co_means,
        "co_stds": out.co_stds,
        "gen_states": out.gen_states,
        "gen_init": out.gen_init,
        "gen_inputs": out.gen_inputs,
        "con_states": out.con_states,
    }


def posterior_sample(
    model_or_session: object,
    data: LfadsData,
    num_samples: int = 50,
    batch_size: int = 512,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Posterior-averaged outputs for train, valid and (if present) test.

    `model_or_session` is an `LfadsModel` or a `TrainingSession`. Sampling
    noise comes from a generator seeded with `seed` (reproducible; the
    session's training RNG is not touched). Returns float32 arrays.
    """
    if num_samples < 1 or batch_size < 1:
        raise ConfigError(
            f"posterior sampling needs num_samples >= 1 and batch_size >= 1, "
            f"got {num_samples} and {batch_size}"
        )
    model = getattr(model_or_session, "model", model_or_session)
    if not isinstance(model, LfadsModel):
        raise TypeError(f"expected an LfadsModel or TrainingSession, got {type(model).__name__}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: dict[str, np.ndarray] = {}
    try:
        for name, split in data.splits().items():
            tensors = SplitTensors.build(split, device)
            generator = torch.Generator(device=device)
            generator.manual_seed(_split_seed(seed, name))
            averaged = _sample_split(model, tensors, num_samples, batch_size, generator)
            outputs.update({f"{name}_{key}": value for key, value in averaged.items()})
    finally:
        model.train(was_training)
    return outputs


def _split_seed(seed: int, split: str) -> int:
    """An independent 63-bit seed per (seed, split name)."""
    entropy = [int(seed), *split.encode()]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _sample_split(
    model: LfadsModel,
    tensors: SplitTensors,
    num_samples: int,
    batch_size: int,
    generator: torch.Generator,
) -> dict[str, np.ndarray]:
    n_trials = tensors.n_trials
    # Row r of the repeated batch is trial r // num_samples.
    rows = torch.arange(n_trials * num_samples, device=tensors.encod.device)
    sums: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for chunk in rows.split(batch_size):
            trial = chunk // num_samples
            encod, _, ext, _ = tensors.batch(trial)
            out = model(encod, ext, 0.0, True, generator)
            trial_cpu = trial.cpu()
            for key, value in _fields(out).items():
                value = value.detach().to("cpu", torch.float64)
                if key not in sums:
                    sums[key] = torch.zeros((n_trials, *value.shape[1:]), dtype=torch.float64)
                sums[key].index_add_(0, trial_cpu, value)
    return {k: (v / num_samples).to(torch.float32).numpy() for k, v in sums.items()}


def write_lfads_output(
    outputs: dict[str, np.ndarray],
    dest: str | Path | BinaryIO | None = None,
    data: LfadsData | None = None,
) -> bytes | None:
    """Write posterior outputs as an lfads-torch style h5.

    With `data`, the file also holds the input datasets, as lfads-torch users
    expect (their output file starts as a copy of the input). `dest` is a path
    or a writable binary file object; with None the file is returned as bytes
    (for object storage). Writes to a path go through a temporary file so a
    failure never leaves a half-written output.
    """
    if dest is None:
        buffer = io.BytesIO()
        _write(outputs, buffer, data)
        return buffer.getvalue()
    if isinstance(dest, (str, Path)):
        path = Path(dest)
        tmp = path.with_name(f".{path.name}.partial")
        try:
            _write(outputs, tmp, data)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return None
    _write(outputs, dest, data)
    return None


def _write(
    outputs: dict[str, np.ndarray], target: str | Path | BinaryIO, data: LfadsData | None
) -> None:
    mode = "w"
    if data is not None:
        write_lfads_h5(data, target)
        mode = "a"
    with h5py.File(target, mode) as f:
        for key in sorted(outputs):
            arr = np.asarray(outputs[key])
            f.create_dataset(key, data=arr, compression="gzip" if arr.size > 4096 else None)
