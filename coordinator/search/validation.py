"""Request checks that need no state: a malformed request is refused before
the service looks at (or changes) anything.

Size limits bound what one request can make the coordinator hold (the 4 MiB
message cap of `limits` bounds the bytes; these bound the parts): ids and
keys have short maximum lengths, a report carries at most MAX_REPORT_EPOCHS
epochs of at most MAX_EPOCH_METRICS named metrics each.
"""

from __future__ import annotations

import re

from autolfads.config import MAX_SEGMENT_EPOCHS, TUNABLE_HPARAMS, hparam_problem
from autolfads.coordinator.search.errors import InvalidRequest
from autolfads.coordinator.search.messages import SegmentReport

WORKER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
METRIC_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")

MAX_ID_CHARS = 128  # lease ids, request ids, member names
MAX_KEY_CHARS = 1024  # storage keys
MAX_MESSAGE_CHARS = 4096
MAX_REPORT_EPOCHS = MAX_SEGMENT_EPOCHS  # the config bounds a segment's epochs alike
MAX_EPOCH_METRICS = 64
MAX_CORRUPT_POINTS = 64


def check_hparams(values: dict[str, float]) -> str | None:
    """Why a hyperparameter dict is malformed, or None if it is fine."""
    for name, value in values.items():
        problem = hparam_problem(name, value)
        if problem:
            return problem
    return None


def check_worker_id(worker_id: str) -> None:
    if not WORKER_ID_PATTERN.fullmatch(worker_id or ""):
        raise InvalidRequest(
            f"invalid worker id {worker_id[:80]!r}: use 1-128 letters, digits or ._:@- "
            "starting with a letter or digit"
        )


def check_lease_id(lease_id: str) -> None:
    if not lease_id:
        raise InvalidRequest("lease_id is empty")
    if len(lease_id) > MAX_ID_CHARS:
        raise InvalidRequest(f"lease_id is longer than {MAX_ID_CHARS} characters")


def _check_sizes(report: SegmentReport) -> None:
    """Bounds on every part of a report, whatever its outcome."""
    for name, text, limit in (
        ("member", report.member, MAX_ID_CHARS),
        ("checkpoint_key", report.checkpoint_key, MAX_KEY_CHARS),
        ("message", report.message, MAX_MESSAGE_CHARS),
    ):
        if len(text) > limit:
            raise InvalidRequest(f"{name} is longer than {limit} characters")
    if len(report.hparams) > len(TUNABLE_HPARAMS):
        raise InvalidRequest(
            f"{len(report.hparams)} hyperparameters; at most {len(TUNABLE_HPARAMS)}"
        )
    if len(report.corrupt) > MAX_CORRUPT_POINTS:
        raise InvalidRequest(f"more than {MAX_CORRUPT_POINTS} corrupt checkpoints reported")
    if any(len(p.checkpoint) > MAX_KEY_CHARS for p in report.corrupt):
        raise InvalidRequest(f"a corrupt checkpoint key is longer than {MAX_KEY_CHARS} characters")
    if len(report.epochs) > MAX_REPORT_EPOCHS:
        raise InvalidRequest(f"{len(report.epochs)} epochs reported; at most {MAX_REPORT_EPOCHS}")
    for epoch, values in report.epochs:
        if len(values) > MAX_EPOCH_METRICS:
            raise InvalidRequest(f"epoch {epoch} has more than {MAX_EPOCH_METRICS} metrics")
        bad = next((n for n in values if not METRIC_NAME_PATTERN.fullmatch(n)), None)
        if bad is not None:
            raise InvalidRequest(
                f"epoch {epoch}: metric name {bad[:80]!r} is not 1-64 letters, digits or _.:/-"
            )


def check_report_shape(report: SegmentReport) -> None:
    """Checks that need no state: malformed requests change nothing."""
    check_lease_id(report.lease_id)
    _check_sizes(report)
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
        if isinstance(report.fitness, bool) or not isinstance(report.fitness, float):
            raise InvalidRequest("fitness must be a float (NaN for a diverged member)")
    for epoch, values in report.epochs:
        if epoch < 0 or not all(isinstance(v, float) for v in values.values()):
            raise InvalidRequest(f"epoch metrics of epoch {epoch} are malformed")
