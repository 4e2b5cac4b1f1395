"""A trained model on new trials (`autolfads apply MODEL NEW_DATA.h5 --out OUT.h5`).

MODEL names a checkpoint inside a run in storage, local or S3, or the output
folder of `autolfads train`:

    runs/NAME/best                              the search's best model
    runs/NAME/members/m003/gen-0007[/checkpoint.pt]
    s3://bucket/prefix/NAME/best?endpoint=...   (same, in object storage)
    runs/NAME-train[/checkpoint.pt]             (config.yaml beside it)

The run's config.yaml gives the model and the posterior sampling defaults
(samples, seed), so apply samples exactly as finalize does; the output has the
same datasets as finalize's lfads_output_*.h5.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from autolfads.config import RunConfig, load_config
from autolfads.coordinator.search.staging import read_run_config
from autolfads.errors import DataError
from autolfads.storage import ObjectNotFound, Store, open_store
from autolfads.trainer.data.dataset import LfadsData
from autolfads.trainer.data.lfads_h5 import load_lfads_h5
from autolfads.trainer.evaluation.finalize import sample_checkpoint
from autolfads.trainer.evaluation.metrics import evaluate
from autolfads.trainer.evaluation.posterior import write_lfads_output
from autolfads.trainer.model.lfads import DataDims
from autolfads.trainer.model.session import checkpoint_data_dims

_GEN = re.compile(r"^gen-\d{4,}$")
MODEL_FORMS = "<run>/best or <run>/members/<member>/gen-NNNN[/checkpoint.pt]"
# DataDims field -> what a user calls it, and how to fix a mismatch.
DIM_WORDS = {
    "encod_data_dim": "held-in neurons",
    "recon_data_dim": "held-in + held-out neurons",
    "encod_seq_len": "observed bins",
    "recon_seq_len": "observed + forward bins",
    "ext_input_dim": "external inputs",
}


@dataclass(frozen=True)
class ModelRef:
    store: Store
    run: str
    key: str  # the checkpoint's key in `store`

    @property
    def url(self) -> str:
        return f"{self.store.url}/{self.key}"


def resolve_model(model: str) -> ModelRef:
    """Split MODEL into a store, a run name and a checkpoint key."""
    is_s3 = model.startswith("s3://")
    if is_s3:
        parts = urlsplit(model)
        components = [p for p in parts.path.split("/") if p]
    else:
        components = list(Path(model.removeprefix("file://")).resolve().parts)
    if components and components[-1] == "checkpoint.pt":
        components = components[:-1]
    if len(components) >= 2 and components[-1] == "best":
        run, root, tail = components[-2], components[:-2], ["best"]
    elif len(components) >= 4 and components[-3] == "members" and _GEN.match(components[-1]):
        run, root, tail = components[-4], components[:-4], components[-3:]
    else:
        raise DataError(f"MODEL {model!r}: expected {MODEL_FORMS}")
    if is_s3:
        root_url = urlunsplit(("s3", parts.netloc, "/".join(root), parts.query, ""))
    else:
        root_url = str(Path(*root))
    key = "/".join([run, *tail, "checkpoint.pt"])
    return ModelRef(open_store(root_url), run, key)


def _train_folder(model: str) -> Path | None:
    """The folder of a local `autolfads train` output (checkpoint.pt + config.yaml)."""
    if model.startswith("s3://"):
        return None
    path = Path(model.removeprefix("file://"))
    folder = path.parent if path.name == "checkpoint.pt" else path
    has_run_layout = folder.name == "best" or _GEN.match(folder.name)
    found = (folder / "checkpoint.pt").is_file() and (folder / "config.yaml").is_file()
    return folder if found and not has_run_layout else None


def load_checkpoint(model: str, config: str | Path | None) -> tuple[RunConfig, bytes, str]:
    """The config (its run's, or `config` if given), checkpoint bytes and URL of MODEL."""
    folder = _train_folder(model)
    if folder is not None:
        cfg = load_config(config if config is not None else folder / "config.yaml")
        return cfg, (folder / "checkpoint.pt").read_bytes(), str(folder / "checkpoint.pt")
    ref = resolve_model(model)
    try:
        checkpoint = ref.store.get_bytes(ref.key)
    except ObjectNotFound:
        raise DataError(f"no checkpoint at {ref.url}") from None
    cfg = load_config(config) if config is not None else read_run_config(ref.store, ref.run)
    return cfg, checkpoint, ref.url


def check_data_fits_model(dims: DataDims, data: LfadsData, model: str) -> None:
    """New data must have the channels, bins and inputs the model was trained on."""
    have = DataDims.from_data(data).to_dict()
    for name, want in dims.to_dict().items():
        if have[name] != want:
            hint = (
                "; convert the new recording with --units-from TRAINING_DATA.h5"
                if name in ("encod_data_dim", "recon_data_dim")
                else ""
            )
            raise DataError(
                f"{data.source}: {have[name]} {DIM_WORDS[name]} ({name}), but the model "
                f"{model} was trained on {want}{hint}"
            )


def apply_model(
    model: str,
    data_path: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    device: str = "auto",
    num_samples: int | None = None,
    seed: int | None = None,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Posterior-sample MODEL on the trials of `data_path`, write `out`; return a summary."""
    out = Path(out)
    if not out.parent.is_dir():
        raise DataError(f"{out}: folder {out.parent} does not exist")
    data = load_lfads_h5(data_path)
    cfg, checkpoint, url = load_checkpoint(model, config)
    check_data_fits_model(checkpoint_data_dims(checkpoint), data, url)
    samples = num_samples or cfg.training.posterior_samples
    seed = cfg.training.seed if seed is None else seed
    outputs = sample_checkpoint(
        cfg, data, checkpoint, device=device, num_samples=samples, seed=seed, batch_size=batch_size
    )
    write_lfads_output(outputs, out, data=data)
    metrics = evaluate(data, outputs, split="valid")
    return {
        "model": url,
        "data": str(data_path),
        "lfads_output": str(out),
        "posterior_samples": samples,
        "seed": seed,
        "trials": {name: split.n_trials for name, split in data.splits().items()},
        "split": "valid",
        # JSON has no NaN (strict parsers such as jq refuse it): null instead.
        **{k: float(v) if math.isfinite(float(v)) else None for k, v in metrics.items()},
    }
