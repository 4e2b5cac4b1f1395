"""What Katib tells the suggestion service, as plain values, and the check
that a Katib Experiment matches the run's config (ValidateAlgorithmSettings).

Wire-free: `convert` builds these from api.v1.beta1 messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autolfads.config import RunConfig
from autolfads.coordinator.search.errors import InvalidRequest

ALGORITHM_NAME = "autolfads-pbt"
OBJECTIVE_METRIC = "fitness"
# The PBT settings live in the run's config.yaml; the Experiment restates none.
KNOWN_SETTINGS: frozenset[str] = frozenset()
# Trial conditions after which a trial does no more work.
TERMINAL_CONDITIONS = frozenset({"succeeded", "failed", "killed", "earlystopped"})


@dataclass(frozen=True)
class ParameterView:
    name: str
    type: str  # double, int, discrete, categorical, unknown_type
    min: str = ""
    max: str = ""
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExperimentView:
    name: str
    parameters: tuple[ParameterView, ...] = ()
    objective_type: str = "unknown"  # minimize, maximize, unknown
    objective_metric: str = ""
    algorithm: str = ""
    settings: tuple[tuple[str, str], ...] = ()
    parallel_trials: int = 0
    max_trials: int = 0
    goal: float = 0.0  # 0 when unset (proto3: a goal of 0 cannot be told apart)
    early_stopping: str = ""  # the early-stopping algorithm, "" when none


@dataclass(frozen=True)
class TrialView:
    name: str
    condition: str  # created, running, succeeded, killed, failed, ...
    metrics: tuple[tuple[str, str], ...] = ()

    @property
    def ended(self) -> bool:
        return self.condition in TERMINAL_CONDITIONS


@dataclass(frozen=True)
class Assignment:
    trial_name: str
    values: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...] = ()


def searched_parameters(cfg: RunConfig) -> dict[str, tuple[float, float]]:
    """The Katib parameters of a run: its search space, name -> (min, max)."""
    return {name: (s.min, s.max) for name, s in sorted(cfg.pbt.search_space.items())}


def check_experiment(exp: ExperimentView, cfg: RunConfig) -> None:
    """InvalidRequest naming the first setting or parameter that does not fit."""
    if exp.algorithm != ALGORITHM_NAME:
        raise InvalidRequest(
            f"algorithm {exp.algorithm!r} is not {ALGORITHM_NAME!r}, the one this service serves"
        )
    for name, _ in exp.settings:
        if name not in KNOWN_SETTINGS:
            raise InvalidRequest(
                f"unknown algorithm setting {name[:80]!r}: {ALGORITHM_NAME} takes its PBT "
                f"settings from the run's config.yaml (pbt:)"
            )
    if exp.objective_metric != OBJECTIVE_METRIC or exp.objective_type != "minimize":
        raise InvalidRequest(
            f"objective must minimise {OBJECTIVE_METRIC!r} (the trainer prints it), "
            f"not {exp.objective_type} {exp.objective_metric[:80]!r}"
        )
    _check_parameters(exp.parameters, cfg)
    population = cfg.pbt.population
    if not 1 <= exp.parallel_trials <= population:
        raise InvalidRequest(
            f"parallelTrialCount {exp.parallel_trials} must be between 1 and the population "
            f"{population} (each running trial is one member)"
        )
    if cfg.pbt.mode == "sync" and exp.parallel_trials != population:
        # Katib cannot lower its request: with fewer slots than members the
        # generation barrier would never be reached.
        raise InvalidRequest(
            f"parallelTrialCount {exp.parallel_trials} must equal the population {population} "
            "in sync mode (or use pbt.mode: async)"
        )
    if exp.goal:
        raise InvalidRequest(
            f"objective.goal {exp.goal!r} would end the Experiment once one trial reaches it, "
            "with the search still running: remove objective.goal (the search stops by "
            "pbt.max_generations or its plateau rule)"
        )
    if exp.early_stopping:
        raise InvalidRequest(
            f"earlyStopping {exp.early_stopping[:80]!r} would stop segments the search is "
            "waiting for: remove spec.earlyStopping (PBT itself replaces weak members)"
        )
    _check_max_trials(exp.max_trials, exp.parallel_trials, cfg)


def trial_counts(cfg: RunConfig, parallel: int) -> tuple[int, int]:
    """(fewest, most) maxTrialCount that fit the run's search with
    `parallel` trials at once (parallelTrialCount).

    Each member trains one segment (one Katib trial) per generation, so a
    search takes at most population x max_generations segment trials (fewer
    when the plateau rule stops it early; a segment handed out again after
    Katib lost or deleted its trial keeps its name and counts once).

    In async mode members drift apart: one may have trained its last
    generation while others still train. Its slot is then answered with a
    no-op "end" trial that waits for the search to end (Katib must be
    answered in full and never lowers a request), at most parallel - 1 of
    them, since a member still training holds a slot. Sync mode never has
    one: between generations no member has finished.

    Katib hands the last results to the service only inside one more
    GetSuggestions call, which it makes only while fewer than maxTrialCount
    trials exist (the waiting end trials included): so at least one trial
    more. The service answers that call, and every one after the end, with
    end trials until Katib reaches maxTrialCount; `render` writes one round
    of them, population x (max_generations + 1) (with parallelTrialCount =
    population, async mode needs exactly that), and more would only run
    no-op pods.
    """
    pbt = cfg.pbt
    segments = pbt.population * pbt.max_generations
    waiting = 0 if pbt.mode == "sync" else max(parallel, 1) - 1
    return segments + waiting + 1, segments + pbt.population


def _check_max_trials(max_trials: int, parallel: int, cfg: RunConfig) -> None:
    fewest, most = trial_counts(cfg, parallel)
    pbt = cfg.pbt
    fix = (
        f"set maxTrialCount to {most} = population {pbt.population} x (max_generations "
        f"{pbt.max_generations} + 1), as `autolfads katib render` writes"
    )
    if max_trials <= 0:
        raise InvalidRequest(
            f"maxTrialCount is unset: Katib would start no-op trials forever once the search "
            f"ends; {fix}"
        )
    if max_trials < fewest:
        raise InvalidRequest(
            f"maxTrialCount {max_trials} is below the {fewest} trials the search can take "
            f"(Katib would end the Experiment with the search still running); {fix}"
        )
    if max_trials > most:
        raise InvalidRequest(
            f"maxTrialCount {max_trials} is above {most}: trials past the search's "
            f"{pbt.population * pbt.max_generations} segments and one round of end trials only "
            f"run no-op pods; {fix}"
        )


def _check_parameters(parameters: tuple[ParameterView, ...], cfg: RunConfig) -> None:
    wanted = searched_parameters(cfg)
    seen: set[str] = set()
    for p in parameters:
        if p.name in seen:
            raise InvalidRequest(f"parameter {p.name[:80]!r} is declared twice")
        seen.add(p.name)
        if p.name not in wanted:
            raise InvalidRequest(
                f"parameter {p.name[:80]!r} is not in the run's pbt.search_space "
                f"({', '.join(wanted)})"
            )
        if p.type != "double":
            raise InvalidRequest(f"parameter {p.name!r} must be of type double, not {p.type}")
        low, high = wanted[p.name]
        for bound, text, expected in (("min", p.min, low), ("max", p.max, high)):
            value = _number(p.name, bound, text)
            if not math.isclose(value, expected, rel_tol=1e-9, abs_tol=0.0):
                raise InvalidRequest(
                    f"parameter {p.name!r}: {bound} {text} differs from the config's {expected!r}"
                )
    missing = sorted(set(wanted) - seen)
    if missing:
        raise InvalidRequest(f"parameters {missing} of pbt.search_space are not declared")


def _number(name: str, bound: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(f"parameter {name!r}: {bound} {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidRequest(f"parameter {name!r}: {bound} {text[:40]!r} is not finite")
    return value


def format_value(value: float) -> str:
    """A hyperparameter as Katib carries it (a string; repr round-trips)."""
    return repr(float(value))
