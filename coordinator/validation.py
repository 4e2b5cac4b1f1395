"""Request checks that need no state: a malformed request is refused before
the service looks at (or changes) anything."""

from __future__ import annotations

import math
import re

from autolfads.config import TUNABLE_HPARAMS
from autolfads.coordinator.errors import InvalidRequest
from autolfads.coordinator.messages import SegmentReport

WORKER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def check_hparams(values: dict[str, float]) -> str | None:
    """Why a hyperparameter dict is malformed, or None if it is fine."""
    unknown = sorted(set(values) - set(TUNABLE_HPARAMS))
    if unknown:
        return f"unknown hyperparameter(s) {unknown}; tunable ones are {list(TUNABLE_HPARAMS)}"
    for name, value in values.items():
        if not isinstance(value, float) or not math.isfinite(value) or value < 0:
            return f"hyperparameter {name}={value!r} is not a finite number >= 0"
    return None


def check_worker_id(worker_id: str) -> None:
    if not WORKER_ID_PATTERN.fullmatch(worker_id or ""):
        raise InvalidRequest(
            f"invalid worker id {worker_id[:80]!r}: use 1-128 letters, digits or ._:@- "
            "starting with a letter or digit"
        )


def check_report_shape(report: SegmentReport) -> None:
    """Checks that need no state: malformed requests change nothing."""
    if not report.lease_id:
        raise InvalidRequest("lease_id is empty")
    if report.outcome not in ("succeeded", "failed", "abandoned"):
        raise InvalidRequest(f"outcome {report.outcome!r} must be succeeded, failed or abandoned")
    if report.outcome == "abandoned":
        return
    problem = check_hparams(report.hparams)
    if problem:
        raise InvalidRequest(problem)
    if report.outcome == "succeeded":
        if not SHA256_PATTERN.fullmatch(report.checkpoint_sha256):
            raise InvalidRequest("checkpoint_sha256 must be 64 lowercase hex digits")
        if report.checkpoint_size <= 0:
            raise InvalidRequest("checkpoint_size must be > 0 for a published checkpoint")
        if isinstance(report.valid_recon_smth, bool) or not isinstance(
            report.valid_recon_smth, float
        ):
            raise InvalidRequest("valid_recon_smth must be a float (NaN for a diverged member)")
    for epoch, values in report.epochs:
        if epoch < 0 or not all(isinstance(v, float) for v in values.values()):
            raise InvalidRequest(f"epoch metrics of epoch {epoch} are malformed")
