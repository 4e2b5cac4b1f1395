"""What a Katib trial needs and leaves, kept in storage under the run.

    <run>/katib/trials/<trial>/lease.json    written by the suggestion service
                                             before it names the trial: the
                                             lease (start checkpoint + sha256,
                                             keys to write, hyperparameters)
    <run>/katib/trials/<trial>/report.json   written by the trial: its
                                             segment report (as a trainer
                                             would send it to the coordinator)

The service turns a finished trial's report into a coordinator report; the
trial container needs only its name and the storage URL.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from autolfads.coordinator.search.messages import Lease, SegmentReport
from autolfads.coordinator.search.state import StartPoint
from autolfads.errors import AutolfadsError
from autolfads.katib.names import TrialName
from autolfads.storage import ObjectNotFound, Store


class TrialRecordError(AutolfadsError):
    """A trial's lease or report in storage is missing or unreadable."""


def trial_prefix(trial: TrialName) -> str:
    return f"{trial.run}/katib/trials/{trial}/"


def lease_key(trial: TrialName) -> str:
    return trial_prefix(trial) + "lease.json"


def report_key(trial: TrialName) -> str:
    return trial_prefix(trial) + "report.json"


def _dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def put_lease(store: Store, trial: TrialName, grant: Lease) -> None:
    """Idempotent: a retried GetSuggestions rewrites the same bytes."""
    store.put_bytes(lease_key(trial), _dumps(asdict(grant)), content_type="application/json")


def get_lease(store: Store, trial: TrialName) -> Lease:
    doc = _load(store, lease_key(trial), f"trial {trial} has no lease")
    try:
        doc["start"] = StartPoint(**doc["start"])
        doc["fallbacks"] = tuple(StartPoint(**p) for p in doc["fallbacks"])
        return Lease(**doc)
    except (KeyError, TypeError) as err:
        raise TrialRecordError(f"lease of trial {trial} is malformed: {err}") from None


def put_report(store: Store, trial: TrialName, report: SegmentReport) -> None:
    doc = asdict(report)
    doc["fitness"] = _finite(report.fitness)
    doc["epochs"] = [
        [epoch, {k: _finite(v) for k, v in values.items()}] for epoch, values in report.epochs
    ]
    store.put_bytes(report_key(trial), _dumps(doc), content_type="application/json")


def get_report(store: Store, trial: TrialName) -> SegmentReport | None:
    """The trial's report, or None if it wrote none (killed before the end)."""
    try:
        doc = _load(store, report_key(trial), "")
    except ObjectNotFound:
        return None
    nan = math.nan
    try:
        doc["fitness"] = nan if doc["fitness"] is None else float(doc["fitness"])
        doc["hparams"] = {k: float(v) for k, v in doc["hparams"].items()}
        doc["epochs"] = tuple(
            (int(e), {k: nan if v is None else float(v) for k, v in values.items()})
            for e, values in doc["epochs"]
        )
        doc["corrupt"] = tuple(StartPoint(**p) for p in doc["corrupt"])
        return SegmentReport(**doc)
    except (KeyError, TypeError, ValueError) as err:
        raise TrialRecordError(f"report of trial {trial} is malformed: {err}") from None


def _load(store: Store, key: str, missing: str) -> dict[str, Any]:
    try:
        raw = store.get_bytes(key)
    except ObjectNotFound:
        if not missing:
            raise
        raise TrialRecordError(f"{missing} in {store.url}/{key}") from None
    try:
        doc = json.loads(raw)
    except ValueError as err:
        raise TrialRecordError(f"{key} is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise TrialRecordError(f"{key} is not a JSON object")
    return doc
