"""The PBT policy: pure decisions over a population snapshot.

Given each member's latest finished segment (`MemberScore`), decide who keeps
training from its own checkpoint and who copies a better member's checkpoint
and (explored) hyperparameters. Nothing here touches gRPC, storage, the clock
or torch: inputs are plain data plus a seeded numpy Generator, so the service
can replay any decision and tests need no infrastructure.

Decisions (the AutoLFADS recipe, shared/reference/lfads-and-pbt.md section 5):

* Fitness is a smoothed validation NLL (the one `pbt.fitness` names), lower
  is better. A non-finite metric (NaN, +/-inf) means the member diverged: it
  ranks last and always loses.
* Ranking: finite members by metric, then diverged ones; ties by member id.
* `binary_tournament` (sync) follows lfads-torch, not autolfads-tf2: members
  are shuffled and the first half is paired with the second half, so
  floor(N/2) members lose and each winner is copied at most once (rescued
  diverged members aside); the population keeps its diversity. With an odd
  N one member sits out. The worse metric loses; on an exact tie the second
  member of the pair wins (lfads-torch; with the shuffle, either member of a
  tie wins as often). A diverged member with no finite partner (NaN vs NaN,
  or the odd one out) copies a random finite member, so no diverged member
  ever keeps its checkpoint.
* `truncation` (Ray Tune / Katib): n = min(ceil(N * fraction), floor(N / 2));
  each of the bottom n members copies a uniformly drawn member of the top n
  (with replacement), as do any diverged members ranked above the bottom n.
* Explore (lfads-torch): x * (1 + s * U(0.002 w, w)), s = +/-1 with p = 1/2,
  redrawn until inside [min, max], clipped after `EXPLORE_TRIES` draws. With
  `resample_probability` p, each explored hyperparameter is instead redrawn,
  with probability p, from its sampling distribution over [min, max]
  (independently per hyperparameter, as Ray does). Weight 0 freezes a value.
* Async mode: when one member's segment ends it is judged against the latest
  results of the others, see `plan_member_async`.
* Stop when the population-best metric improved by at most
  `stop_improvement` (relative) over the last `stop_patience_generations`
  generations (lfads-torch's rule); the service checks `max_generations`.

Determinism: every function sorts its inputs by member id before drawing
random numbers, and `generation_rng` derives the generator from
(seed, generation[, member]), so decisions never depend on arrival order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autolfads.config import HparamSpace, PbtConfig, hparam_problem
from autolfads.errors import AutolfadsError

# Explore redraws at most this many times before clipping into the bounds.
EXPLORE_TRIES = 100
# Smallest relative perturbation, as a fraction of the weight (lfads-torch).
EXPLORE_MIN_FRACTION = 0.002


class PolicyError(AutolfadsError):
    """The population snapshot cannot be ranked (e.g. every member diverged)."""


@dataclass(frozen=True)
class MemberScore:
    """One member's latest finished segment."""

    member: str  # e.g. "m007"
    metric: float  # smoothed validation NLL (lower is better); NaN/inf = diverged
    hparams: Mapping[str, float]
    checkpoint: str  # storage key of the checkpoint this segment produced
    generation: int

    @property
    def diverged(self) -> bool:
        return not math.isfinite(self.metric)


@dataclass(frozen=True)
class MemberPlan:
    """What a member does next."""

    member: str
    parent: str  # member whose checkpoint it starts from (itself if it won/kept)
    checkpoint: str  # checkpoint key to start from
    hparams: dict[str, float]  # new hyperparameters (explored if it copied a winner)
    exploited: bool  # True if it copied another member


@dataclass(frozen=True)
class GenerationPlan:
    generation: int  # the generation that was just ranked
    ranking: list[str]  # members best first (diverged last, ties by member id)
    plans: dict[str, MemberPlan]  # next segment for every member
    best_member: str
    best_metric: float


# ---------------------------------------------------------------- randomness


def generation_rng(seed: int, generation: int, member: str | None = None) -> np.random.Generator:
    """A generator derived only from (seed, generation[, member]).

    The member id is hashed into the spawn key, so per-member streams in async
    mode are independent of each other and of the generation-wide stream.
    """
    if seed < 0 or generation < 0:
        raise PolicyError(f"seed {seed} and generation {generation} must be >= 0")
    key: tuple[int, ...] = (generation, 0)
    if member is not None:
        digest = hashlib.sha256(member.encode("utf-8")).digest()
        key = (generation, 1, *(int.from_bytes(digest[i : i + 4], "little") for i in (0, 4, 8)))
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


# ---------------------------------------------------------- hyperparameters


def _draw(spec: HparamSpace, rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` values from the spec's sampling distribution over [min, max]."""
    if spec.sampling == "log":
        values = np.exp(rng.uniform(math.log(spec.min), math.log(spec.max), size))
    else:
        values = rng.uniform(spec.min, spec.max, size)
    # exp(log(x)) can land one ulp outside the bounds.
    return np.clip(values, spec.min, spec.max)


def sample_initial_hparams(
    space: Mapping[str, HparamSpace], population: int, rng: np.random.Generator
) -> list[dict[str, float]]:
    """Initial hyperparameters for members 0..population-1.

    A parameter with `init` starts at that value in every member; otherwise it
    is drawn log-uniformly or uniformly in [min, max] per `sampling`.
    """
    if population < 1:
        raise PolicyError(f"population must be >= 1, got {population}")
    columns: dict[str, np.ndarray] = {}
    for name in sorted(space):
        spec = space[name]
        if spec.init is not None:
            columns[name] = np.full(population, float(spec.init))
        else:
            columns[name] = _draw(spec, rng, population)
    return [{name: float(col[i]) for name, col in columns.items()} for i in range(population)]


def _perturb(name: str, value: float, spec: HparamSpace, rng: np.random.Generator) -> float:
    """Redraw until the candidate is allowed: inside [min, max], or with
    `clamp: false` inside the hyperparameter's hard bounds only."""
    w = spec.explore_weight
    for _ in range(EXPLORE_TRIES):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        candidate = value * (1.0 + sign * rng.uniform(EXPLORE_MIN_FRACTION * w, w))
        if spec.min <= candidate <= spec.max:
            return float(candidate)
        if not spec.clamp and hparam_problem(name, candidate) is None:
            return float(candidate)
    if not spec.clamp:
        return float(value)
    return float(min(max(candidate, spec.min), spec.max))


def explore(
    hparams: Mapping[str, float],
    space: Mapping[str, HparamSpace],
    rng: np.random.Generator,
    resample_probability: float = 0.0,
) -> dict[str, float]:
    """Perturb every searched hyperparameter; others are copied unchanged.

    Each value becomes x * (1 +/- U(0.002 w, w)), redrawn until inside its
    bounds and clipped after EXPLORE_TRIES draws; with `clamp: false` the
    bounds are only the hyperparameter's hard limits (config.HPARAM_BOUNDS). With probability
    `resample_probability` a value is instead redrawn from its sampling
    distribution (never for `fixed` sampling). A weight of 0 keeps the value.
    A value of 0 stays 0 (the perturbation is multiplicative).
    """
    missing = sorted(set(space) - set(hparams))
    if missing:
        raise PolicyError(
            f"hyperparameters {missing} are searched but missing from {dict(hparams)}"
        )
    out = {name: float(value) for name, value in hparams.items()}
    for name in sorted(space):
        spec = space[name]
        if spec.explore_weight == 0.0:
            continue
        if not math.isfinite(out[name]):
            raise PolicyError(f"hyperparameter {name} is {out[name]!r}, not a finite number")
        # Draw the resample coin even for `fixed` so streams stay aligned.
        resample = resample_probability > 0.0 and rng.random() < resample_probability
        if resample and spec.sampling != "fixed":
            out[name] = float(_draw(spec, rng, 1)[0])
        else:
            out[name] = _perturb(name, out[name], spec, rng)
    return out


# ------------------------------------------------------------------ ranking


def _sorted_unique(scores: Sequence[MemberScore]) -> list[MemberScore]:
    if not scores:
        raise PolicyError("no member results to rank")
    ordered = sorted(scores, key=lambda s: s.member)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.member == b.member:
            raise PolicyError(f"member {a.member} appears twice in one population snapshot")
    return ordered


def ranking_key(member: str, fitness: float) -> tuple[bool, float, str]:
    """The one order of members everywhere (decisions, generation records,
    status tables): finite fitness ascending (a lower NLL is better), then the
    diverged (non-finite) ones, ties broken by member id."""
    finite = math.isfinite(fitness)
    return (not finite, fitness if finite else 0.0, member)


def rank(scores: Sequence[MemberScore]) -> list[MemberScore]:
    """Best first, by `ranking_key`."""
    return sorted(scores, key=lambda s: ranking_key(s.member, s.metric))


def _finite_donors(ordered: Sequence[MemberScore]) -> list[MemberScore]:
    donors = [s for s in ordered if not s.diverged]
    if not donors:
        raise PolicyError(
            "every member diverged (non-finite validation NLL); nothing to copy from: "
            "lower lr_init or its search range, or raise the KL/L2 ramps"
        )
    return donors


def binary_tournament(scores: Sequence[MemberScore], rng: np.random.Generator) -> dict[str, str]:
    """lfads-torch's tournament: returns loser -> winner.

    Members (sorted by id) are shuffled; member i of the first half faces
    member i of the second half. Diverged members left without a finite
    opponent copy a random finite member.
    """
    ordered = _sorted_unique(scores)
    order = rng.permutation(len(ordered))
    half = len(ordered) // 2
    copies: dict[str, str] = {}
    for i in range(half):
        a, b = ordered[order[i]], ordered[order[half + i]]
        # An exact tie goes to the second (lfads-torch), not to the lower id:
        # with the shuffle, either member of a tie wins as often.
        a_first = ranking_key(a.member, a.metric)[:2] < ranking_key(b.member, b.metric)[:2]
        winner, loser = (a, b) if a_first else (b, a)
        if not winner.diverged:
            copies[loser.member] = winner.member
    _rescue_diverged(ordered, copies, _finite_donors(ordered), rng)
    return copies


def _rescue_diverged(
    ordered: Sequence[MemberScore],
    copies: dict[str, str],
    donors: Sequence[MemberScore],
    rng: np.random.Generator,
) -> None:
    """Diverged members not yet copying anyone copy a random donor."""
    for score in ordered:
        if score.diverged and score.member not in copies:
            copies[score.member] = donors[int(rng.integers(len(donors)))].member


def truncation_count(population: int, fraction: float) -> int:
    """How many bottom members copy a top member: min(ceil(N f), floor(N / 2))."""
    return min(math.ceil(population * fraction), population // 2)


def truncation(
    scores: Sequence[MemberScore], fraction: float, rng: np.random.Generator
) -> dict[str, str]:
    """Ray Tune / Katib truncation selection: returns loser -> winner.

    The bottom `truncation_count(N, fraction)` members each copy a uniformly
    drawn top member; diverged members above the cut copy one as well.
    """
    if not 0.0 < fraction <= 0.5:
        raise PolicyError(f"truncation fraction {fraction} must be in (0, 0.5]")
    ordered = _sorted_unique(scores)
    ranked = rank(ordered)
    n = truncation_count(len(ranked), fraction)
    donors = [s for s in ranked[:n] if not s.diverged] if n else []
    if not donors:
        donors = _finite_donors(ranked)
    copies: dict[str, str] = {}
    # Losers in member-id order so the draws do not depend on metric ties.
    for loser in sorted(ranked[len(ranked) - n :], key=lambda s: s.member):
        copies[loser.member] = donors[int(rng.integers(len(donors)))].member
    _rescue_diverged(ordered, copies, donors, rng)
    return copies


# ------------------------------------------------------------------- plans


def _keep(score: MemberScore) -> MemberPlan:
    return MemberPlan(
        member=score.member,
        parent=score.member,
        checkpoint=score.checkpoint,
        hparams={k: float(v) for k, v in score.hparams.items()},
        exploited=False,
    )


def _copy(
    loser: MemberScore, winner: MemberScore, pbt: PbtConfig, rng: np.random.Generator
) -> MemberPlan:
    """The loser starts from the winner's checkpoint with explored hparams."""
    return MemberPlan(
        member=loser.member,
        parent=winner.member,
        checkpoint=winner.checkpoint,
        hparams=explore(winner.hparams, pbt.search_space, rng, pbt.resample_probability),
        exploited=True,
    )


def plan_generation(
    scores: Sequence[MemberScore], pbt: PbtConfig, rng: np.random.Generator
) -> GenerationPlan:
    """Synchronous PBT step: rank one finished generation, exploit, explore.

    All scores must come from the same generation. Raises PolicyError if the
    snapshot is empty, names a member twice, mixes generations, or every
    member diverged.
    """
    ordered = _sorted_unique(scores)
    generations = sorted({s.generation for s in ordered})
    if len(generations) != 1:
        raise PolicyError(f"a synchronous generation mixes results of generations {generations}")
    if pbt.exploit == "binary_tournament":
        copies = binary_tournament(ordered, rng)
    else:
        copies = truncation(ordered, pbt.truncation_fraction, rng)
    by_member = {s.member: s for s in ordered}
    # Explore draws happen in member-id order, after all exploit draws.
    plans = {
        s.member: _copy(s, by_member[copies[s.member]], pbt, rng)
        if s.member in copies
        else _keep(s)
        for s in ordered
    }
    ranking = rank(ordered)
    return GenerationPlan(
        generation=generations[0],
        ranking=[s.member for s in ranking],
        plans=plans,
        best_member=ranking[0].member,
        best_metric=float(ranking[0].metric),
    )


def plan_member_async(
    score: MemberScore,
    others: Sequence[MemberScore],
    pbt: PbtConfig,
    rng: np.random.Generator,
) -> MemberPlan:
    """Asynchronous PBT step for one member whose segment just ended.

    `others` are the latest results of the other members (any generation; an
    entry for `score.member` itself is ignored). Pass a per-member generator,
    `generation_rng(seed, score.generation, score.member)`.

    * binary_tournament (autolfads-tf2's per-member rule, which tf2 applies
      synchronously): draw one random opponent among the others with a
      finite metric; copy it if its metric is strictly lower or the member
      diverged, otherwise keep going.

    The others' latest results may be of other generations (more or less
    trained): as in Ray Tune's asynchronous PBT, members on faster workers
    count with newer results. Sync mode compares like with like.
    * truncation: rank the member among {score} + others; if it is in the
      bottom `truncation_count(N, fraction)` or diverged, copy a random member
      of the top `truncation_count(N, fraction)` (finite ones only).

    A member without finite competitors keeps going; if it diverged too, there
    is nothing to copy and PolicyError is raised.
    """
    field = [s for s in others if s.member != score.member]
    field = _sorted_unique(field) if field else []
    rivals = [s for s in field if not s.diverged]
    if not rivals:
        if score.diverged:
            raise PolicyError(
                f"member {score.member} diverged (validation NLL {score.metric}) and no other "
                "member has a finite result to copy from yet"
            )
        return _keep(score)
    if pbt.exploit == "binary_tournament":
        opponent = rivals[int(rng.integers(len(rivals)))]
        if score.diverged or opponent.metric < score.metric:
            return _copy(score, opponent, pbt, rng)
        return _keep(score)
    pool = rank([score, *field])
    n = truncation_count(len(pool), pbt.truncation_fraction)
    bottom = {s.member for s in pool[len(pool) - n :]} if n else set()
    if not score.diverged and score.member not in bottom:
        return _keep(score)
    donors = [s for s in pool[:n] if not s.diverged] or rivals
    return _copy(score, donors[int(rng.integers(len(donors)))], pbt, rng)


# ----------------------------------------------------------------- stopping


def relative_improvement(window: Sequence[float]) -> float:
    """(window[0] - min(window)) / mean(|window|): how much the best metric
    dropped across the window, relative to its size (lfads-torch)."""
    values = np.asarray(window, dtype=float)
    scale = float(np.mean(np.abs(values)))
    drop = float(values[0] - values.min())
    if scale == 0.0:
        return 0.0 if drop == 0.0 else math.inf
    return drop / scale


def should_stop(best_history: Sequence[float], pbt: PbtConfig) -> bool:
    """True once the population-best metric has plateaued.

    `best_history` holds the best metric of each finished generation, oldest
    first. With k = `stop_patience_generations`, stop when at least k values
    exist and the last k improved by at most `stop_improvement` (relative).
    A window with a non-finite value never stops the search.
    """
    k = pbt.stop_patience_generations
    if len(best_history) < k:
        return False
    window = [float(v) for v in best_history[-k:]]
    if not all(math.isfinite(v) for v in window):
        return False
    return relative_improvement(window) <= pbt.stop_improvement
