"""A fake Katib controller, faithful to how Katib drives a suggestion service.

It does what Katib's experiment and suggestion controllers do, minus
Kubernetes: ValidateAlgorithmSettings once (an error fails the Experiment);
then, while fewer than maxTrialCount trials exist, ask GetSuggestions for the
free slots (parallelTrialCount - running) with every trial so far (name,
parameter assignments, labels, latest condition, observation), insist on
exactly that many assignments, create trials under the returned names and
run them (`run_trials`: the test runs each trial's container command). An
error reply creates nothing; Katib logs it and reconciles again when a trial
changes, so the fake only asks again after its running trials have ended.
The Experiment succeeds once maxTrialCount trials have completed.

Like Katib's ConvertTrials, a request leaves out trials whose metrics were
unavailable and early-stopped trials without an observation. `requested` is
the Suggestion's SuggestionCount (the assignments Katib has stored): each
request asks for `current_request_number` = count and `total_request_number`
= requested + count (Spec.Requests), so a request after a lost reply asks
for the lost slots again, plus any freed meanwhile.

Faults a test can inject: `lose_replies` (the service answers, Katib never
gets it: its 60 s deadline passed, or the suggestion pod was killed after
its answer was committed; nothing is stored), `delete` (deleteTrials when
parallelTrialCount is lowered: the trials and their assignments go).

Rounds are batched (all running trials end before the next request), which
makes the order in which the service sees results deterministic; tests that
need another order call `request` and `run_trials` themselves, or
`run_clocked`, which runs trials of different lengths as Katib does: each
tick it asks for min(parallelTrialCount, maxTrialCount - completed) -
active trials, as Katib's experiment controller does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import grpc

from autolfads.katib_api.v1beta1 import api_pb2 as api
from autolfads.katib_api.v1beta1 import api_pb2_grpc as api_grpc

Condition = api.TrialStatus.TrialConditionType


class LostReply(Exception):
    """The service answered, but Katib never got the reply."""


@dataclass
class FakeTrial:
    name: str
    assignments: dict[str, str]
    labels: dict[str, str]
    condition: Condition = Condition.CREATED
    metrics: dict[str, str] = field(default_factory=dict)

    def to_proto(self) -> api.Trial:
        trial = api.Trial(name=self.name)
        trial.spec.objective.type = api.MINIMIZE
        trial.spec.objective.objective_metric_name = "fitness"
        for name, value in self.assignments.items():
            trial.spec.parameter_assignments.assignments.add(name=name, value=value)
        trial.spec.labels.update(self.labels)
        trial.status.condition = self.condition
        for name, value in self.metrics.items():
            trial.status.observation.metrics.add(name=name, value=value)
        return trial


# run_trials(trials) runs them and sets each one's condition and metrics;
# one it leaves CREATED or RUNNING is still running (a pod still waiting).
TrialRunner = Callable[[list[FakeTrial]], None]
LIVE = (Condition.CREATED, Condition.RUNNING)


def experiment_proto(
    name: str,
    parameters: dict[str, tuple[float, float]],
    parallel: int,
    max_trials: int,
    settings: dict[str, str] | None = None,
) -> api.Experiment:
    exp = api.Experiment(name=name)
    spec = exp.spec
    for pname, (low, high) in parameters.items():
        p = spec.parameter_specs.parameters.add(name=pname, parameter_type=api.DOUBLE)
        p.feasible_space.min = repr(low)
        p.feasible_space.max = repr(high)
    spec.objective.type = api.MINIMIZE
    spec.objective.objective_metric_name = "fitness"
    spec.algorithm.algorithm_name = "autolfads-pbt"
    for key, value in (settings or {}).items():
        spec.algorithm.algorithm_settings.add(name=key, value=value)
    spec.parallel_trial_count = parallel
    spec.max_trial_count = max_trials
    return exp


class FakeKatib:
    def __init__(self, target: str, experiment: api.Experiment, run_trials: TrialRunner) -> None:
        self.target = target
        self.experiment = experiment
        self.run_trials = run_trials
        self.trials: list[FakeTrial] = []
        self.requested = 0  # Suggestion.Status.SuggestionCount
        self.errors: list[grpc.StatusCode] = []
        self.lose_replies = 0  # how many of the next replies never reach Katib
        # Trials created but not yet in the list Katib's suggestion
        # controller sends (its cache lags the experiment controller).
        self.unlisted: set[str] = set()

    def _stub(self, channel: grpc.Channel) -> api_grpc.SuggestionStub:
        return api_grpc.SuggestionStub(channel)

    def validate(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            self._stub(channel).ValidateAlgorithmSettings(
                api.ValidateAlgorithmSettingsRequest(experiment=self.experiment), timeout=60
            )

    def request(self, count: int) -> list[FakeTrial]:
        """One SyncAssignments: exactly `count` new trials, or an RpcError."""
        request = api.GetSuggestionsRequest(
            experiment=self.experiment,
            trials=[t.to_proto() for t in self.trials if self._sent(t)],
            current_request_number=count,
            total_request_number=self.requested + count,
        )
        with grpc.insecure_channel(self.target) as channel:
            reply = self._stub(channel).GetSuggestions(request, timeout=60)
        if self.lose_replies > 0:
            self.lose_replies -= 1
            self.errors.append(grpc.StatusCode.DEADLINE_EXCEEDED)
            raise LostReply(f"reply to GetSuggestions({count}, {request.total_request_number})")
        assert len(reply.parameter_assignments) == count, "The response contains unexpected trials"
        self.requested += count
        new = [
            FakeTrial(a.trial_name, {x.name: x.value for x in a.assignments}, dict(a.labels))
            for a in reply.parameter_assignments
        ]
        assert all(t.name for t in new)
        assert not {t.name for t in new} & {t.name for t in self.trials}, "trial names repeat"
        self.trials.extend(new)
        return new

    def _sent(self, trial: FakeTrial) -> bool:
        """ConvertTrials: which trials a GetSuggestions request lists."""
        if trial.name in self.unlisted:
            return False
        if trial.condition == Condition.METRICSUNAVAILABLE:
            return False
        return not (trial.condition == Condition.EARLYSTOPPED and not trial.metrics)

    def delete(self, names: Collection[str]) -> None:
        """deleteTrials: the trials go, and their assignments with them."""
        self.trials = [t for t in self.trials if t.name not in names]
        self.requested = len(self.trials)

    def step(self) -> bool:
        """One round: ask for the free slots, run what comes back. False once
        the Experiment is over (maxTrialCount trials completed)."""
        spec = self.experiment.spec
        if len(self.trials) >= spec.max_trial_count:
            return False
        free = min(spec.parallel_trial_count, spec.max_trial_count - len(self.trials))
        try:
            new = self.request(free)
        except grpc.RpcError as err:
            self.errors.append(err.code())
            raise
        for trial in new:
            trial.condition = Condition.RUNNING
        self.run_trials(new)
        return True

    def run(self, max_rounds: int = 1000) -> None:
        self.validate()
        for _ in range(max_rounds):
            if not self.step():
                return
        raise AssertionError("the Experiment did not end")

    def run_clocked(self, length: Callable[[FakeTrial], int], max_ticks: int = 1000) -> None:
        """Trials of different lengths: a trial created at tick t ends at tick
        t + length(trial) - 1 (`run_trials`); one it leaves running is a pod
        still waiting, run again each tick. Each tick Katib first asks for
        its free slots, min(parallelTrialCount, maxTrialCount - completed) -
        active; an error reply creates nothing and Katib asks again next tick
        (it reconciles whenever a trial changes). The Experiment succeeds
        once maxTrialCount trials have completed; AssertionError when the
        service refuses with nothing running (nothing can change: Katib
        would ask for ever) or after max_ticks."""
        self.validate()
        spec = self.experiment.spec
        due: dict[str, int] = {}
        for tick in range(max_ticks):
            active = [t for t in self.trials if t.condition in LIVE]
            completed = len(self.trials) - len(active)
            if completed >= spec.max_trial_count:
                return
            free = min(spec.parallel_trial_count, spec.max_trial_count - completed) - len(active)
            if free > 0:
                try:
                    new = self.request(free)
                except grpc.RpcError as err:
                    self.errors.append(err.code())
                    if not active:
                        raise AssertionError(
                            f"the Experiment never ends: no trial runs and GetSuggestions "
                            f"answers {err.code().name}: {err.details()}"
                        ) from None
                    new = []
                for trial in new:
                    trial.condition = Condition.RUNNING
                    due[trial.name] = tick + max(length(trial), 1) - 1
                active += new
            self.run_trials([t for t in active if due.get(t.name, tick) <= tick])
        raise AssertionError(f"the Experiment did not end in {max_ticks} ticks")
