"""`autolfads trainer --katib-trial NAME`: one Katib trial = one segment.

The trial's name says which run, member and generation it is; its lease
(start checkpoint and checksum, keys to write, hyperparameters) waits in
storage, put there by the suggestion service. The worker's own segment code
trains it: `TrialClient` plays the coordinator for that one lease, handing it
out once and writing the report to storage instead of sending it, where the
suggestion service picks it up when Katib next calls. The last stdout line,
`fitness=<value>`, is what Katib's StdOut metrics collector reads.

Exit codes: 0 trained and published (or an "end" trial, or the report was
already written by an earlier attempt); 1 the segment failed (Katib marks
the trial FAILED; the service counts a failed segment); 143 SIGTERM.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

from autolfads.coordinator.search.messages import (
    HeartbeatReply,
    Lease,
    ReportAck,
    SegmentReport,
    WorkReply,
)
from autolfads.coordinator.search.recovery import read_state
from autolfads.errors import AutolfadsError
from autolfads.katib import records
from autolfads.katib.names import TrialName, parse_trial_name
from autolfads.storage import Store

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


class TrialClient:
    """The coordinator as one Katib trial sees it: storage."""

    def __init__(self, store: Store, trial: TrialName, grant: Lease) -> None:
        self.store = store
        self.trial = trial
        self.grant = grant
        self.report_sent: SegmentReport | None = None
        self._handed_out = False

    def request_work(
        self,
        worker_id: str,
        max_leases: int = 1,
        *,
        wait_s: float = 0.0,
        cancel: threading.Event | None = None,
        request_id: str | None = None,
    ) -> WorkReply:
        if self._handed_out:
            return WorkReply("done", search_state="running")
        self._handed_out = True
        return WorkReply("train", (self.grant,))

    # `**_`: the worker's `cancel` (ends retries through an outage): no calls here.
    def heartbeat(
        self, lease_id: str, worker_id: str, epochs_done: int = 0, **_: object
    ) -> HeartbeatReply:
        # Katib, not a lease, decides how long a trial may run.
        return HeartbeatReply("continue", deadline=self.grant.deadline)

    def report(self, report: SegmentReport, **_: object) -> ReportAck:
        if report.outcome != "abandoned":  # a stopped pod leaves no report: Katib says why
            records.put_report(self.store, self.trial, report)
        self.report_sent = report
        return ReportAck(accepted=True)


def fitness_line(value: float) -> str:
    return f"fitness={value!r}" if math.isfinite(value) else "fitness=nan"


def run_trial(
    store: Store,
    name: str,
    *,
    cache_dir: Path,
    device: str,
    stop: threading.Event,
    worker_id: str,
) -> int:
    trial = parse_trial_name(name)
    if trial.is_end:
        print(fitness_line(_best_metric(store, trial.run)), flush=True)
        return EXIT_OK
    earlier = records.get_report(store, trial)
    if earlier is not None and earlier.outcome == "succeeded":
        # A retried pod: the segment is trained and published already.
        print(fitness_line(earlier.fitness), flush=True)
        return EXIT_OK
    from autolfads.trainer.worker import EXIT_TERMINATED, Worker

    client = TrialClient(store, trial, records.get_lease(store, trial))
    worker = Worker(client, store, worker_id, cache_dir=cache_dir, device=device, stop=stop)
    code = worker.run()
    report = client.report_sent
    if code == EXIT_TERMINATED or report is None or report.outcome == "abandoned":
        return EXIT_TERMINATED
    if report.outcome != "succeeded":
        log.error("trial %s failed: %s", trial, report.message)
        return EXIT_FAILED
    print(fitness_line(report.fitness), flush=True)
    return EXIT_OK


def _best_metric(store: Store, run: str) -> float:
    """The search's best metric (what an end trial shows Katib)."""
    try:
        state = read_state(store, run, history=False)
    except AutolfadsError:
        return math.nan
    return state.best.metric if state is not None and state.best is not None else math.nan
