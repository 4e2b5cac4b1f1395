"""Katib trial names: the one identity Katib hands a trial container.

Katib passes a trial only `${trialSpec.Name}` and its declared parameters,
so the name this service chooses carries the run, the member and the
generation (the unit the coordinator leases):

    <run>-<member>-g<generation>     one training segment, e.g. "tiny-m003-g7"
    <run>-end-<n>                    a no-op trial once the search has ended

Names must be Kubernetes names (lowercase alphanumerics and '-'); Katib's
webhook keeps Experiment names to 40 characters, so these stay under 63.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autolfads.coordinator.search.errors import InvalidRequest

# Katib's webhook limit on Experiment names (its trials and jobs append to it).
MAX_EXPERIMENT_NAME = 40
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SEGMENT = re.compile(r"^(?P<run>.+)-(?P<member>m\d{3,})-g(?P<generation>\d{1,9})$")
_END = re.compile(r"^(?P<run>.+)-end-(?P<index>\d{1,9})$")


@dataclass(frozen=True)
class TrialName:
    run: str
    member: str = ""  # "" for an end trial
    generation: int = 0
    end_index: int = -1

    @property
    def is_end(self) -> bool:
        return self.end_index >= 0

    def __str__(self) -> str:
        if self.is_end:
            return f"{self.run}-end-{self.end_index}"
        return f"{self.run}-{self.member}-g{self.generation}"


def check_run_name(run: str) -> str:
    """A run usable as a Katib Experiment name; InvalidRequest otherwise."""
    if len(run) > MAX_EXPERIMENT_NAME or not _K8S_NAME.fullmatch(run):
        raise InvalidRequest(
            f"experiment name {run[:80]!r} must be the run name and a Kubernetes name of at most "
            f"{MAX_EXPERIMENT_NAME} lowercase letters, digits and '-'"
        )
    return run


def segment_trial(run: str, member: str, generation: int) -> TrialName:
    return TrialName(run, member, generation)


def end_trial(run: str, index: int) -> TrialName:
    return TrialName(run, end_index=index)


def parse_trial_name(name: str, run: str | None = None) -> TrialName:
    """The trial's run, member and generation; InvalidRequest for a name this
    service never makes (or one of another run, when `run` is given)."""
    shown = name[:100]
    if len(name) > 63 or not _K8S_NAME.fullmatch(name):
        raise InvalidRequest(f"unknown trial name {shown!r}: not a name this service makes")
    if match := _SEGMENT.fullmatch(name):
        parsed = TrialName(match["run"], match["member"], int(match["generation"]))
    elif match := _END.fullmatch(name):
        parsed = TrialName(match["run"], end_index=int(match["index"]))
    else:
        raise InvalidRequest(f"unknown trial name {shown!r}: not a name this service makes")
    check_run_name(parsed.run)
    if run is not None and parsed.run != run:
        raise InvalidRequest(f"unknown trial name {shown!r}: not a trial of run {run!r}")
    return parsed
