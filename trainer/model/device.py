"""Device selection and random-number-generator state for reproducible training.

All randomness of a training session (batch order, dropout, coordinated
dropout, posterior noise) comes from one seeded `torch.Generator` on the
session's device. The global RNGs (torch CPU/CUDA, numpy, python) are captured
too, so that code outside the session that uses them also resumes exactly.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any, cast

import numpy as np
import torch

from autolfads.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def restore_generator(generator: torch.Generator, saved: torch.Tensor) -> None:
    """Set `generator` to a checkpoint's state of it.

    A state saved on another kind of device cannot be set: a CPU generator's
    is the Mersenne Twister's 5,056 bytes, a CUDA one's its seed and offset
    (16 bytes). Such a checkpoint (trained on a GPU, finalized on a laptop,
    or continued by a CPU trainer of a mixed pool) seeds the generator from
    the saved bytes instead: the same checkpoint always continues the same
    way, though not with the draws it would have had on its own device.
    """
    if saved.numel() == generator.get_state().numel():
        generator.set_state(saved)
        return
    digest = hashlib.sha256(saved.cpu().numpy().tobytes()).digest()
    generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    log.info(
        "checkpoint's random state is from another kind of device than %s; seeded from it instead",
        generator.device.type,
    )


def capture_global_rng(device: torch.device) -> dict[str, Any]:
    """Global RNG states in types `torch.load(weights_only=True)` accepts:
    the CPU's, and the CUDA one of `device` only. Reading every GPU's state
    would create a CUDA context (hundreds of MB) on each GPU of the host, in
    every trainer, even one that trains on the CPU."""
    np_state = cast(tuple, np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": (
            str(np_state[0]),
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ),
        "python": _python_state_to_lists(random.getstate()),
    }
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_global_rng(state: dict[str, Any], device: torch.device) -> None:
    """Back to `capture_global_rng`'s states; CUDA's only on a CUDA `device`."""
    torch.set_rng_state(state["torch_cpu"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("torch_cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, list):  # older checkpoints: every GPU's state, by index
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def _python_state_to_lists(state: tuple) -> tuple:
    version, internal, gauss_next = state
    return (int(version), list(internal), gauss_next)
