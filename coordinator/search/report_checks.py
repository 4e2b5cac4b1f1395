"""Checks of a worker's report against the segment its lease was for.

Pure functions of the report, the segment and the run layout: the service
calls them under its lock before accepting a report, so a report that fails
here changes nothing.
"""

from __future__ import annotations

from autolfads.coordinator.search.errors import InvalidRequest
from autolfads.coordinator.search.messages import SegmentReport
from autolfads.coordinator.search.state import Segment, StartPoint
from autolfads.storage.keys import RunLayout


def check_report(report: SegmentReport, segment: Segment, layout: RunLayout) -> None:
    """Raise InvalidRequest unless the report fits the segment it claims to finish."""
    if len(report.epochs) > segment.epochs:
        raise InvalidRequest(
            f"{len(report.epochs)} epochs reported; the lease was for {segment.epochs}"
        )
    if report.hparams != segment.hparams:
        raise InvalidRequest(
            f"hyperparameters {report.hparams} differ from the lease's {segment.hparams}"
        )
    expected = layout.checkpoint(segment.member, segment.generation)
    if report.outcome == "succeeded" and report.checkpoint_key != expected:
        raise InvalidRequest(
            f"checkpoint key {report.checkpoint_key!r} is not the lease's {expected!r}"
        )
    starts = [segment.start, *segment.fallbacks]
    known = {s.checkpoint for s in starts if s.checkpoint}
    for point in report.corrupt:
        if point.checkpoint not in known:
            raise InvalidRequest(
                f"corrupt checkpoint {point.checkpoint!r} is not a start point of the lease"
            )
    if report.outcome == "succeeded" and not loaded_start(segment, report):
        raise InvalidRequest("every start point is reported corrupt, yet the outcome is SUCCEEDED")


def loaded_start(segment: Segment, report: SegmentReport) -> StartPoint | None:
    """The first start point not reported corrupt: the one the worker loaded."""
    corrupt = {p.checkpoint for p in report.corrupt}
    for point in [segment.start, *segment.fallbacks]:
        if point.fresh or point.checkpoint not in corrupt:
            return point
    return None
