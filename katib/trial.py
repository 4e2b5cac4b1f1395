"""`autolfads trainer --katib-trial NAME`: one Katib trial = one segment.

The trial's name says which run, member and generation it is; its lease
(start checkpoint and checksum, keys to write, hyperparameters) waits in
storage, put there by the suggestion service. The worker's own segment code
trains it: `TrialClient` plays the coordinator for that one lease, handing it
out once and writing the report to storage instead of sending it, where the
suggestion service picks it up when Katib next calls. The last stdout line,
`fitness=<value>`, is what Katib's StdOut metrics collector reads.

An "end" trial trains nothing: it waits until the run's stored state says
the search has ended (reading it every `END_POLL_S`), then prints the best
fitness and exits 0. Handed out after the end it exits at once; handed out
while the search still runs (a member that has finished while others
train, async mode) it holds its Katib slot until the end, so Katib does
not ask again at once and spend maxTrialCount on no-op trials.

Exit codes: 0 trained and published (or an "end" trial once the search
ended, or the report was already written by an earlier attempt); 1 the
segment failed (Katib marks the trial FAILED; the service counts a failed
segment); 143 SIGTERM.
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
# How often an end trial reads the run's stored state while the search runs.
END_POLL_S = 10.0


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
    poll_s: float = END_POLL_S,
) -> int:
    trial = parse_trial_name(name)
    if trial.is_end:
        return _end_trial(store, trial, stop, poll_s)
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


def _end_trial(store: Store, trial: TrialName, stop: threading.Event, poll_s: float) -> int:
    """Wait until the search has ended, then show Katib its best metric."""
    waiting = False
    while True:
        try:
            state = read_state(store, trial.run, history=False)
        except AutolfadsError as err:  # storage trouble: look again later
            log.warning("end trial %s: the search's state is unreadable: %s", trial, err)
        else:
            # No state at all: nothing to wait for (the run is gone).
            if state is None or state.terminal:
                best = state.best if state is not None else None
                print(fitness_line(best.metric if best is not None else math.nan), flush=True)
                return EXIT_OK
            if not waiting:
                log.info("end trial %s: waiting for the search to end", trial)
                waiting = True
        if stop.wait(poll_s):
            from autolfads.trainer.worker import EXIT_TERMINATED

            return EXIT_TERMINATED
