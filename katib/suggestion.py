"""Katib's suggestion protocol on top of the PBT coordinator service.

One `CoordinatorService` per run holds the population; it is rebuilt from
the run's stored state (`coordinator.recovery`) whenever this process
starts, so a restarted suggestion pod carries on. Each Katib trial is one
lease (one training segment of one member), named after member and
generation. The coordinator's open leases are the one record of what is
out; a GetSuggestions call:

1. checks the Experiment against the run's config and every trial name
   (nothing changes if one is unknown);
2. turns each ended trial whose lease is still open into a segment report:
   the trial's own report.json if it wrote a readable one that fits its
   lease, else a failed segment (a killed pod, an unreadable report);
   reports already counted change nothing, so duplicate and out-of-order
   trial lists are harmless;
3. hands out again, before any new work, every open lease whose trial Katib
   does not list (`_orphans`): its reply was lost (Katib's 60 s deadline, a
   pod killed after the lease was committed), Katib deleted the trial, or
   the Experiment was deleted and submitted again. An unlisted trial that
   wrote a report (Katib lists no trial whose metrics were unavailable) is
   counted instead. The trial keeps its name, so it is one Katib trial; a
   trial Katib lists is never handed out twice;
4. asks the service for the rest as new leases (all or nothing), writes
   each lease to storage for its trial. When fewer members are ready it
   answers every ready one plus an "end" trial per missing slot if members
   that have finished the search cover them (async mode, members out of
   step: they will never need a slot again); such an end trial waits for
   the search to end, holding its slot (`_padded`). Otherwise (sync mode,
   between generations) it answers UNAVAILABLE: Katib's controller logs it
   and asks again later. Once the search has ended, it answers with no-op
   "end" trials so that Katib reaches maxTrialCount and ends the
   Experiment. End trials are named after Katib's sequence number of the
   assignment (`<run>-end-<n>`), so no name repeats.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from autolfads.config import RunConfig
from autolfads.coordinator.search.errors import (
    CoordinatorError,
    InvalidRequest,
    SearchFinished,
    StaleLease,
    UnknownLease,
)
from autolfads.coordinator.search.messages import Lease, SegmentReport
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.search.staging import load_run
from autolfads.coordinator.search.views import lease_view
from autolfads.errors import ConfigError, DataError
from autolfads.katib import records
from autolfads.katib.experiment import (
    Assignment,
    ExperimentView,
    TrialView,
    check_experiment,
    format_value,
    searched_parameters,
)
from autolfads.katib.names import (
    TrialName,
    check_run_name,
    end_trial,
    parse_trial_name,
    segment_trial,
)
from autolfads.katib.records import TrialRecordError
from autolfads.storage import Store
from autolfads.storage.claims import ClaimLost, RunClaim, RunClaimed, claim_run

log = logging.getLogger(__name__)

# Every lease of the search is held by this one worker: Katib.
WORKER_ID = "katib"
# Katib, not a lease timeout, decides when a trial is dead (it reports it
# FAILED or KILLED), so leases never expire on their own.
LEASE_TIMEOUT_S = 100 * 365 * 24 * 3600.0


class NotReady(CoordinatorError):
    """Fewer members are ready than Katib asked for; ask again later."""


class KatibSuggestion:
    """Thread-safe; one per process (Katib runs one suggestion per Experiment)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._searches: dict[str, CoordinatorService] = {}
        # One per open search: no other coordinator writes its run meanwhile.
        self._claims: dict[str, RunClaim] = {}
        # Taking a claim may wait out a previous holder (a rescheduled pod):
        # one lock per run for that, so only that run's calls wait.
        self._opening: dict[str, threading.Lock] = {}

    def validate(self, exp: ExperimentView) -> None:
        """ValidateAlgorithmSettings: InvalidRequest naming what does not fit."""
        check_experiment(exp, self._config(exp.name))

    def suggest(
        self, exp: ExperimentView, trials: list[TrialView], count: int, total: int
    ) -> list[Assignment]:
        if count < 1:
            raise InvalidRequest(f"current_request_number {count} must be at least 1")
        if total < count:
            raise InvalidRequest(
                f"total_request_number {total} is below current_request_number {count}"
            )
        claim = self._claim(exp.name)
        with self._lock:
            service = self._search(exp, claim)
            population = service.cfg.pbt.population
            if count > population:
                raise InvalidRequest(
                    f"{count} suggestions requested; at most the population {population} "
                    "can train at once"
                )
            listed, ended = self._check_trials(service, exp.name, trials)
            for trial, view in ended:
                self._ingest(service, trial, f"ended {view.condition}")
            orphans = self._orphans(service, exp.name, listed, held=total - count)[:count]
            assignments = [self._assign(service, grant) for grant in orphans]
            if len(assignments) == count:
                return assignments
            # A fresh id: a lost reply's leases come back as orphans (above),
            # never by the coordinator's replay of a request id.
            request_id = f"katib-r{service.status().revision}"
            reply = service.request_exactly(WORKER_ID, count - len(assignments), request_id)
            if reply is None:
                return self._padded(service, exp.name, trials, assignments, count, total)
            if reply.action == "done":  # no lease is open then: no orphan either
                return self._end_assignments(service, exp.name, range(total - count, total))
            return assignments + [self._assign(service, grant) for grant in reply.leases]

    # ------------------------------------------------------------ internals

    def _config(self, run: str) -> RunConfig:
        """The run's staged config, without starting its search."""
        if run in self._searches:
            return self._searches[run].cfg
        return self._staged(run)[0]

    def _staged(self, run: str) -> tuple[RunConfig, str, str]:
        check_run_name(run)
        try:
            return load_run(self.store, run)
        except (ConfigError, DataError) as err:
            raise InvalidRequest(f"experiment {run!r}: {err}") from None

    def _claim(self, run: str) -> RunClaim:
        """This process's claim on `run`, taken on its first call (not under
        the lock: it may wait out a previous holder's lapse)."""
        with self._lock:
            opening = self._opening.setdefault(run, threading.Lock())
        with opening:
            with self._lock:
                claim = self._claims.get(run)
            if claim is not None and not claim.held():
                # Another process may be writing the run: this one stops serving it.
                with self._lock:
                    self._searches.pop(run, None)
                    self._claims.pop(run, None)
                raise NotReady(str(ClaimLost(claim)))
            if claim is not None:
                return claim
            self._staged(run)  # refused before anything is written for it
            try:
                claim = claim_run(self.store, run, command="autolfads katib suggestion")
            except RunClaimed as err:
                # Katib asks again later: by then a dead holder's claim has lapsed.
                raise NotReady(str(err)) from None
            with self._lock:
                self._claims[run] = claim
            return claim

    def _search(self, exp: ExperimentView, claim: RunClaim) -> CoordinatorService:
        """The run's search, opened (or resumed from storage) once the
        Experiment has been checked against its config."""
        if exp.name not in self._searches:
            cfg, data_key, data_sha = self._staged(exp.name)
            check_experiment(exp, cfg)
            self._searches[exp.name] = self._open(cfg, data_key, data_sha, claim)
            log.info("search %s opened from %s", exp.name, self.store.url)
        service = self._searches[exp.name]
        check_experiment(exp, service.cfg)
        return service

    def _open(
        self, cfg: RunConfig, data_key: str, data_sha: str, claim: RunClaim
    ) -> CoordinatorService:
        try:
            service = CoordinatorService.open_search(
                cfg,
                claim.fence(self.store),  # no write once the claim is lost
                data_key,
                data_sha,
                lease_timeout_s=LEASE_TIMEOUT_S,
                # Katib holds every lease: room for the whole population twice.
                max_leases_per_request=2 * cfg.pbt.population,
            )
        except BaseException:
            claim.release()
            self._claims.pop(cfg.name, None)
            raise
        return service

    def close(self) -> None:
        """Give up every run's claim (the process is stopping)."""
        with self._lock:
            for claim in self._claims.values():
                claim.release()
            self._claims.clear()
            self._searches.clear()

    def _check_trials(
        self, service: CoordinatorService, run: str, trials: list[TrialView]
    ) -> tuple[set[str], list[tuple[TrialName, TrialView]]]:
        """The names Katib lists, and its ended trials whose lease is still
        open, in (generation, member) order; InvalidRequest for a trial this
        search never handed out."""
        listed: set[str] = set()
        open_leases: dict[str, tuple[TrialName, TrialView]] = {}
        for view in trials:
            trial = parse_trial_name(view.name, run)
            listed.add(view.name)
            if trial.is_end:
                continue
            where, _ = service.unit_status(trial.member, trial.generation)
            if where == "unknown":
                raise InvalidRequest(f"unknown trial {view.name!r}: this search never named it")
            if where == "leased" and view.ended:
                open_leases.setdefault(view.name, (trial, view))
        ended = sorted(open_leases.values(), key=lambda x: (x[0].generation, x[0].member))
        return listed, ended

    def _orphans(
        self, service: CoordinatorService, run: str, listed: set[str], held: int
    ) -> list[Lease]:
        """The open leases to hand out again, in (generation, member) order:
        those whose trial Katib neither lists nor holds.

        Katib holds `held` trial names (total - current request number: the
        suggestions it has stored) and lists those whose trials it has
        created. While it holds more names than it lists (a trial it is
        creating, not yet in the list it sent), any unlisted lease may be
        one of them and none is handed out: Katib asks again and lists it
        then. An unlisted trial that left a report ran to the end and is
        counted now (Katib never lists a trial whose metrics were
        unavailable)."""
        unlisted = [
            segment_trial(run, m.member, m.generation)
            for m in service.status().members
            if m.phase == "training"
            and str(segment_trial(run, m.member, m.generation)) not in listed
        ]
        unlisted.sort(key=lambda t: (t.generation, t.member))
        waiting: list[TrialName] = []
        for trial in unlisted:
            if self.store.exists(records.report_key(trial)):
                self._ingest(service, trial, "not listed by Katib")
            else:
                waiting.append(trial)
        if not waiting:
            return []
        if held > len(listed):
            log.info(
                "%d lease(s) without a listed trial kept back: Katib holds %d trials and lists %d",
                len(waiting),
                held,
                len(listed),
            )
            return []
        state = service.snapshot()  # a copy: only when a lease is to be handed out again
        open_now = {
            x.member: lease_view(state, x, service.layout, service.lease_timeout_s)
            for x in state.leases.values()
            if x.status == "active" and x.worker_id == WORKER_ID
        }
        orphans = [open_now[t.member] for t in waiting if t.member in open_now]
        for lease in orphans:
            log.warning(
                "trial %s handed out again: Katib does not list it (reply lost, trial deleted "
                "or Experiment submitted again)",
                segment_trial(run, lease.member, lease.generation),
            )
        return orphans

    def _ingest(self, service: CoordinatorService, trial: TrialName, how: str) -> None:
        """Count the trial's segment: its report if readable and fitting its
        lease, else a failed segment (one bad trial must not stall the rest)."""
        where, lease_id = service.unit_status(trial.member, trial.generation)
        if where != "leased":
            return
        member = next(m for m in service.status().members if m.member == trial.member)
        failed = SegmentReport(
            lease_id,
            WORKER_ID,
            trial.member,
            trial.generation,
            "failed",
            hparams=dict(member.hparams),
            message=f"Katib trial {trial} {how} without a report",
        )
        try:
            written = records.get_report(self.store, trial)
        except TrialRecordError as err:
            written = None
            failed = replace(failed, message=f"Katib trial {trial}: unreadable report: {err}"[:500])
        if written is not None and written.outcome in ("succeeded", "failed"):
            try:
                self._report(service, replace(written, lease_id=lease_id, worker_id=WORKER_ID))
                return
            except InvalidRequest as err:
                # A report that does not fit its lease must not stall the member.
                failed = replace(failed, message=f"Katib trial {trial}: bad report: {err}"[:500])
        if failed.message.endswith("without a report"):
            log.info("%s", failed.message)
        else:
            log.warning("%s; counted as a failed segment", failed.message)
        self._report(service, failed)

    def _report(self, service: CoordinatorService, report: SegmentReport) -> None:
        try:
            service.report(report)
        except (StaleLease, UnknownLease, SearchFinished) as err:
            log.warning("%s generation %d not counted: %s", report.member, report.generation, err)

    def _assign(self, service: CoordinatorService, grant: Lease) -> Assignment:
        trial = segment_trial(service.layout.run, grant.member, grant.generation)
        records.put_lease(self.store, trial, grant)
        names = searched_parameters(service.cfg)
        values = tuple((name, format_value(grant.hparams[name])) for name in names)
        labels = (
            ("autolfads.member", grant.member),
            ("autolfads.generation", str(grant.generation)),
        )
        return Assignment(str(trial), values, labels)

    def _padded(
        self,
        service: CoordinatorService,
        run: str,
        trials: list[TrialView],
        assignments: list[Assignment],
        count: int,
        total: int,
    ) -> list[Assignment]:
        """Fewer members are ready than Katib asked for: every ready one, and
        an end trial for each missing slot, if members that have finished
        the search (async mode: they will never need a slot again) and hold
        no waiting end trial yet cover them; NotReady otherwise (nothing
        changes).

        Such an end trial waits for the search to end (`trial.run_trial`),
        holding its slot: Katib asks only for slots freed by members that
        still train, so it neither stalls the search (Katib must be answered
        in full, and with the finished members' slots free it would ask for
        more than will ever be ready) nor spends maxTrialCount on no-op
        trials. A member still training holds a slot, so at most
        parallelTrialCount - 1 wait at once (`experiment.trial_counts`).
        Katib's list of trials is the record of those waiting: one that
        ended (a killed pod) frees its member for another."""
        ready = service.work_ready() or 0  # None: draining; nothing is handed out
        missing = count - len(assignments) - ready
        status = service.status()
        finished = sum(1 for m in status.members if m.phase == "finished")
        waiting = len({t.name for t in trials if not t.ended and parse_trial_name(t.name).is_end})
        if service.draining or status.state != "running" or missing > finished - waiting:
            raise NotReady(
                f"fewer than {count} members are ready (generation {status.generation} is "
                "still running); ask again later"
            )
        if ready:
            reply = service.request_exactly(WORKER_ID, ready, f"katib-r{status.revision}")
            assert reply is not None and reply.action == "train", "queued work vanished"
            assignments = assignments + [self._assign(service, grant) for grant in reply.leases]
        first = total - count + len(assignments)  # Katib's sequence numbers: unique names
        ends = self._end_assignments(service, run, range(first, first + missing))
        log.info(
            "%d end trial(s) hold the slots of members that have finished until the search ends",
            missing,
        )
        return assignments + ends

    def _end_assignments(
        self, service: CoordinatorService, run: str, indexes: range
    ) -> list[Assignment]:
        """No-op trials that let Katib count up to maxTrialCount and stop
        (each waits for the search to end)."""
        best = service.status().best
        hparams = best.hparams if best is not None else service.cfg.initial_hparams()
        names = searched_parameters(service.cfg)
        values = tuple((name, format_value(hparams[name])) for name in names)
        return [
            Assignment(str(end_trial(run, index)), values, (("autolfads.end", "true"),))
            for index in indexes
        ]
