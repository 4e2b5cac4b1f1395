"""api.v1.beta1 messages <-> the plain values of `experiment` (no logic)."""

from __future__ import annotations

from autolfads.katib.experiment import Assignment, ExperimentView, ParameterView, TrialView
from autolfads.katib_api.v1beta1 import api_pb2 as api


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value).lower()
    except ValueError:  # a value newer than our copy of the schema
        return "unknown"


def experiment_from_proto(msg: api.Experiment) -> ExperimentView:
    spec = msg.spec
    return ExperimentView(
        name=msg.name,
        parameters=tuple(
            ParameterView(
                name=p.name,
                type=_enum_name(api.ParameterType, p.parameter_type),
                min=p.feasible_space.min,
                max=p.feasible_space.max,
                values=tuple(p.feasible_space.list),
            )
            for p in spec.parameter_specs.parameters
        ),
        objective_type=_enum_name(api.ObjectiveType, spec.objective.type),
        objective_metric=spec.objective.objective_metric_name,
        goal=spec.objective.goal,
        algorithm=spec.algorithm.algorithm_name,
        settings=tuple((s.name, s.value) for s in spec.algorithm.algorithm_settings),
        parallel_trials=spec.parallel_trial_count,
        max_trials=spec.max_trial_count,
        early_stopping=spec.early_stopping.algorithm_name,
    )


def trial_from_proto(msg: api.Trial) -> TrialView:
    return TrialView(
        name=msg.name,
        condition=_enum_name(api.TrialStatus.TrialConditionType, msg.status.condition),
        metrics=tuple((m.name, m.value) for m in msg.status.observation.metrics),
    )


def suggestions_to_proto(assignments: list[Assignment]) -> api.GetSuggestionsReply:
    reply = api.GetSuggestionsReply()
    for a in assignments:
        item = reply.parameter_assignments.add(trial_name=a.trial_name)
        for name, value in a.values:
            item.assignments.add(name=name, value=value)
        item.labels.update(dict(a.labels))
    return reply
