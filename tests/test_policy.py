"""The PBT policy: exploit, explore, initial sampling, stopping, determinism."""

from __future__ import annotations

import collections
import math
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autolfads.config import HPARAM_BOUNDS, HparamSpace, PbtConfig, default_search_space
from autolfads.coordinator.search.policy import (
    MemberScore,
    PolicyError,
    binary_tournament,
    explore,
    generation_rng,
    plan_generation,
    plan_member_async,
    rank,
    relative_improvement,
    sample_initial_hparams,
    should_stop,
    truncation,
    truncation_count,
)

SPACE = default_search_space()
Exploit = Literal["binary_tournament", "truncation"]  # PbtConfig.exploit
NAN = float("nan")


def hp(lr: float = 1e-3) -> dict[str, float]:
    return {
        "lr_init": lr,
        "dropout_rate": 0.3,
        "cd_rate": 0.5,
        "l2_gen_scale": 1e-3,
        "l2_con_scale": 1e-3,
        "kl_ic_scale": 1e-5,
        "kl_co_scale": 1e-5,
    }


def score(member: str, metric: float, generation: int = 3, lr: float = 1e-3) -> MemberScore:
    return MemberScore(member, metric, hp(lr), f"ckpt/{member}/g{generation}", generation)


def population(metrics: list[float], generation: int = 3) -> list[MemberScore]:
    return [score(f"m{i:03d}", m, generation) for i, m in enumerate(metrics)]


def by_id(scores: list[MemberScore]) -> dict[str, MemberScore]:
    return {s.member: s for s in scores}


# ------------------------------------------------------------------ ranking


def test_rank_puts_diverged_last_and_breaks_ties_by_member_id() -> None:
    scores = [score("m3", 1.0), score("m1", NAN), score("m2", 1.0), score("m0", math.inf)]
    scores.append(score("m4", 0.5))
    assert [s.member for s in rank(scores)] == ["m4", "m2", "m3", "m0", "m1"]


# --------------------------------------------------------------- tournament


@pytest.mark.parametrize("n", [2, 3, 7, 20, 21])
def test_tournament_pairs_disjointly_and_the_worse_member_loses(n: int) -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        scores = population(list(rng.normal(size=n)))
        copies = binary_tournament(scores, np.random.default_rng(trial))
        assert len(copies) == n // 2
        winners = list(copies.values())
        assert len(set(winners)) == len(winners), "a winner was paired twice"
        assert not set(winners) & set(copies), "a member both lost and won"
        members = by_id(scores)
        for loser, winner in copies.items():
            assert members[winner].metric < members[loser].metric


def test_a_tournament_tie_goes_to_the_second_of_the_pair() -> None:
    # lfads-torch's rule (the second member wins an exact tie); the pairs are
    # shuffled, so either member of a tie wins about as often. It used to be
    # the lower member id, always.
    winners: collections.Counter[str] = collections.Counter()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        second = "m00" + str(rng.permutation(2)[1])  # the draw binary_tournament makes
        copies = binary_tournament(population([2.0, 2.0]), np.random.default_rng(seed))
        assert list(copies.values()) == [second]
        winners[second] += 1
    assert 60 < winners["m000"] < 140


def test_diverged_member_loses_even_to_a_far_worse_finite_metric() -> None:
    for bad in (NAN, math.inf, -math.inf):
        for seed in range(10):
            copies = binary_tournament(population([bad, 1e12]), np.random.default_rng(seed))
            assert copies == {"m000": "m001"}


def test_nan_vs_nan_both_copy_finite_members() -> None:
    scores = population([NAN, NAN, 1.0, 2.0, NAN])
    for seed in range(30):
        copies = binary_tournament(scores, np.random.default_rng(seed))
        # Every diverged member copies someone finite, whatever the pairing.
        for member in ("m000", "m001", "m004"):
            assert copies[member] in {"m002", "m003"}
        assert set(copies) <= {"m000", "m001", "m003", "m004"}


def test_all_diverged_population_is_a_clear_error() -> None:
    with pytest.raises(PolicyError, match="every member diverged"):
        binary_tournament(population([NAN, math.inf, NAN]), np.random.default_rng(0))
    with pytest.raises(PolicyError, match="every member diverged"):
        truncation(population([NAN, NAN]), 0.25, np.random.default_rng(0))


def test_duplicate_member_and_empty_snapshot_are_rejected() -> None:
    with pytest.raises(PolicyError, match="appears twice"):
        binary_tournament([score("m1", 1.0), score("m1", 2.0)], np.random.default_rng(0))
    with pytest.raises(PolicyError, match="no member results"):
        binary_tournament([], np.random.default_rng(0))


# --------------------------------------------------------------- truncation


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(20, 0.25, 5), (20, 0.4, 8), (7, 0.5, 3), (3, 0.5, 1), (5, 0.1, 1)],
)
def test_truncation_copies_bottom_from_top(n: int, fraction: float, expected: int) -> None:
    assert truncation_count(n, fraction) == expected
    scores = population([float(i) for i in range(n)])  # m000 best ... last worst
    top = {s.member for s in scores[:expected]}
    bottom = {s.member for s in scores[n - expected :]}
    for seed in range(20):
        copies = truncation(scores, fraction, np.random.default_rng(seed))
        assert set(copies) == bottom
        assert set(copies.values()) <= top


def test_truncation_draws_donors_across_the_whole_top() -> None:
    scores = population([float(i) for i in range(20)])
    donors = set()
    for seed in range(50):
        donors |= set(truncation(scores, 0.25, np.random.default_rng(seed)).values())
    assert donors == {f"m{i:03d}" for i in range(5)}


def test_truncation_also_replaces_diverged_members_above_the_cut() -> None:
    scores = population([NAN, NAN, NAN, 1.0, 2.0, 3.0, 4.0, 5.0])  # n = 2 of 8
    copies = truncation(scores, 0.25, np.random.default_rng(0))
    assert set(copies) == {"m000", "m001", "m002"}
    assert set(copies.values()) <= {"m003", "m004"}


# ------------------------------------------------------------------ explore


def wide(weight: float) -> dict[str, HparamSpace]:
    return {"lr_init": HparamSpace(min=1e-9, max=1.0, sampling="log", explore_weight=weight)}


@pytest.mark.parametrize("weight", [0.05, 0.3, 0.8])
def test_explore_relative_change_lies_in_the_weight_band(weight: float) -> None:
    rng = np.random.default_rng(1)
    ratios = np.array(
        [explore({"lr_init": 1e-3}, wide(weight), rng)["lr_init"] / 1e-3 for _ in range(2000)]
    )
    change = np.abs(ratios - 1.0)
    assert change.min() >= 0.002 * weight * (1 - 1e-9)
    assert change.max() <= weight * (1 + 1e-9)
    # Both directions, roughly equally often.
    assert 0.4 < np.mean(ratios > 1.0) < 0.6


def test_explore_spread_scales_with_weight() -> None:
    rng = np.random.default_rng(2)

    def spread(weight: float) -> float:
        values = [explore({"lr_init": 1e-3}, wide(weight), rng)["lr_init"] for _ in range(2000)]
        return float(np.std(np.asarray(values) / 1e-3))

    s_small, s_large = spread(0.1), spread(0.8)
    # |U(0.002w, w)| has std ~ w/sqrt(3); the ratio of spreads tracks the weights.
    assert s_large / s_small == pytest.approx(8.0, rel=0.1)


def test_explore_keeps_clamped_values_inside_bounds() -> None:
    rng = np.random.default_rng(3)
    values = {k: v for k, v in hp().items()}
    for _ in range(3000):
        values = explore(values, SPACE, rng)
        for name, spec in SPACE.items():
            if spec.clamp:
                assert spec.min <= values[name] <= spec.max, name
            else:
                assert HPARAM_BOUNDS[name][0] <= values[name] <= HPARAM_BOUNDS[name][1], name


def test_the_default_space_clamps_the_rates_only() -> None:
    # lfads-torch's defaults (reference: the KL and L2 scales are bounded
    # "only > 0"); they used to be clamped to their initial range.
    space = default_search_space()
    assert {name for name, spec in space.items() if not spec.clamp} == {
        "l2_gen_scale", "l2_con_scale", "kl_ic_scale", "kl_co_scale"
    }  # fmt: skip


def test_explore_clips_when_no_draw_fits() -> None:
    # Any 0.2%..30% move leaves [1e-3, 1.001e-3]: clip after the retries.
    space = {"lr_init": HparamSpace(min=1e-3, max=1.0001e-3, sampling="uniform")}
    out = explore({"lr_init": 1e-3}, space, np.random.default_rng(0))["lr_init"]
    assert out in (1e-3, 1.0001e-3)


def test_unclamped_values_explore_beyond_their_range_within_hard_limits() -> None:
    # lfads-torch's choice: the KL/L2 scales may wander past their initial
    # range; a rate never reaches 1 however far it is pushed.
    space = {
        "kl_co_scale": HparamSpace(min=1e-6, max=1e-4, explore_weight=0.8, clamp=False),
        "cd_rate": HparamSpace(
            min=0.01, max=0.7, sampling="uniform", explore_weight=0.8, clamp=False
        ),
        "l2_gen_scale": HparamSpace(min=1e-4, max=1.0, explore_weight=0.8),
    }
    rng = np.random.default_rng(5)
    values = {"kl_co_scale": 1e-4, "cd_rate": 0.7, "l2_gen_scale": 1.0}
    seen_kl, seen_cd = [], []
    for _ in range(400):
        values = explore(values, space, rng)
        seen_kl.append(values["kl_co_scale"])
        seen_cd.append(values["cd_rate"])
        assert 1e-4 <= values["l2_gen_scale"] <= 1.0  # clamped by default
        assert 0.0 <= values["cd_rate"] < 1.0
    assert max(seen_kl) > 1e-4 or min(seen_kl) < 1e-6
    assert max(seen_cd) > 0.7


def test_explore_weight_zero_and_unsearched_values_are_unchanged() -> None:
    space = {"lr_init": HparamSpace(min=1e-5, max=1.0, explore_weight=0.0)}
    values = {"lr_init": 2e-3, "dropout_rate": 0.25}
    out = explore(values, space, np.random.default_rng(0), resample_probability=1.0)
    assert out == values


def test_explore_rejects_missing_and_non_finite_values() -> None:
    with pytest.raises(PolicyError, match="missing"):
        explore({"lr_init": 1e-3}, SPACE, np.random.default_rng(0))
    with pytest.raises(PolicyError, match="not a finite number"):
        explore({"lr_init": NAN}, wide(0.3), np.random.default_rng(0))


def test_resample_probability_sets_how_often_values_are_redrawn() -> None:
    space = {"kl_ic_scale": HparamSpace(min=1e-6, max=1e-3, sampling="log", explore_weight=0.3)}
    x = 1e-5
    # A perturbation stays within x*(1 +/- 0.3); a redraw lands there with
    # probability log(1.3/0.7)/log(1000) ~ 0.09.
    inside = math.log(1.3 / 0.7) / math.log(1000.0)
    for p in (0.0, 0.5, 1.0):
        rng = np.random.default_rng(4)
        draws = np.array(
            [explore({"kl_ic_scale": x}, space, rng, p)["kl_ic_scale"] for _ in range(3000)]
        )
        assert np.all((draws >= 1e-6) & (draws <= 1e-3))
        far = np.mean(np.abs(draws / x - 1.0) > 0.3 + 1e-12)
        assert far == pytest.approx(p * (1 - inside), abs=0.035)


def test_fixed_sampling_is_never_resampled() -> None:
    space = {"lr_init": HparamSpace(min=1e-5, max=5e-3, sampling="fixed", init=1e-3)}
    rng = np.random.default_rng(5)
    for _ in range(200):
        out = explore({"lr_init": 1e-3}, space, rng, resample_probability=1.0)["lr_init"]
        assert 0.7e-3 - 1e-15 <= out <= 1.3e-3 + 1e-15


# ----------------------------------------------------------- initial values


def test_initial_sampling_honours_init_and_bounds() -> None:
    members = sample_initial_hparams(SPACE, 500, np.random.default_rng(6))
    assert len(members) == 500
    assert all(m["lr_init"] == 4e-3 and m["cd_rate"] == 0.5 for m in members)
    for name, spec in SPACE.items():
        values = np.array([m[name] for m in members])
        assert np.all((values >= spec.min) & (values <= spec.max)), name
    # Log-uniform: the log values are spread evenly, so their mean is the log midpoint.
    kl = np.log10([m["kl_ic_scale"] for m in members])
    assert kl.mean() == pytest.approx(-4.5, abs=0.15)
    assert np.mean(kl < -5.0) == pytest.approx(1 / 3, abs=0.07)
    # Uniform: dropout mean near the range midpoint.
    assert np.mean([m["dropout_rate"] for m in members]) == pytest.approx(0.3, abs=0.03)
    assert len({m["dropout_rate"] for m in members}) == 500


def test_initial_sampling_is_reproducible_from_the_seed() -> None:
    a = sample_initial_hparams(SPACE, 20, generation_rng(7, 0))
    b = sample_initial_hparams(SPACE, 20, generation_rng(7, 0))
    c = sample_initial_hparams(SPACE, 20, generation_rng(8, 0))
    assert a == b
    assert a != c


# ------------------------------------------------------------------ stopping


PBT = PbtConfig()


@pytest.mark.parametrize(
    ("history", "stop"),
    [
        ([], False),
        ([1.0, 1.0, 1.0], False),  # fewer than 4 generations recorded
        ([100.0, 99.0, 98.0, 97.0], False),  # 3 % better over the window
        ([100.0, 100.01, 99.99, 99.98], True),  # 0.02 %
        ([1.0005, 1.0, 1.0, 1.0], True),  # 0.04999 %, just inside 0.05 %
        ([1.0006, 1.0, 1.0, 1.0], False),  # 0.06 %
        ([200.0, 150.0, 100.0, 100.0, 100.0, 100.0], True),  # only the last 4 count
        ([100.0, 101.0, 102.0, 103.0], True),  # best got worse: no improvement
        ([100.0, 90.0, NAN, 90.0], False),  # diverged window: keep going
        ([0.0, 0.0, 0.0, 0.0], True),
    ],
)
def test_stopping_rule(history: list[float], stop: bool) -> None:
    assert should_stop(history, PBT) is stop


def test_stopping_uses_configured_patience_and_threshold() -> None:
    history = [100.0, 99.0, 98.9, 98.85]
    assert relative_improvement(history[-3:]) == pytest.approx(0.15 / 98.9167, rel=1e-3)
    assert not should_stop(history, PBT)
    assert should_stop(history, PbtConfig(stop_patience_generations=3, stop_improvement=2e-3))
    assert not should_stop(history, PbtConfig(stop_patience_generations=5))


# ------------------------------------------------------------------- plans


@pytest.mark.parametrize("exploit", ["binary_tournament", "truncation"])
def test_plan_generation_copies_checkpoint_and_explored_hparams(exploit: Exploit) -> None:
    pbt = PbtConfig(exploit=exploit)
    scores = [score(f"m{i:03d}", float(i), lr=1e-4 * (i + 1)) for i in range(20)]
    plan = plan_generation(scores, pbt, generation_rng(0, 3))
    members = by_id(scores)
    assert plan.generation == 3
    assert plan.ranking == [s.member for s in scores]
    assert (plan.best_member, plan.best_metric) == ("m000", 0.0)
    assert set(plan.plans) == set(members)
    losers = {m for m, p in plan.plans.items() if p.exploited}
    assert len(losers) == (10 if exploit == "binary_tournament" else 5)
    for member, p in plan.plans.items():
        assert p.member == member
        if p.exploited:
            winner = members[p.parent]
            assert winner.metric < members[member].metric
            assert p.checkpoint == winner.checkpoint
            for name, spec in SPACE.items():
                ratio = p.hparams[name] / winner.hparams[name]
                assert 0.002 * spec.explore_weight * 0.999 <= abs(ratio - 1) <= spec.explore_weight
        else:
            assert p.parent == member
            assert p.checkpoint == members[member].checkpoint
            assert p.hparams == members[member].hparams


def test_plan_generation_rejects_mixed_generations() -> None:
    scores = [score("m0", 1.0, generation=2), score("m1", 2.0, generation=3)]
    with pytest.raises(PolicyError, match="mixes results of generations"):
        plan_generation(scores, PBT, generation_rng(0, 3))


def test_pbt_drives_a_toy_population_to_the_optimum() -> None:
    """Exploit + explore must move lr toward the value that minimises the metric."""
    pbt = PbtConfig(population=20)
    hparams = sample_initial_hparams(SPACE, 20, generation_rng(1, 0))
    for h in hparams:
        h["lr_init"] = 1e-5 * (1 + np.random.default_rng(0).random())  # far from the optimum

    def metric(h: dict[str, float]) -> float:
        return abs(math.log10(h["lr_init"]) - math.log10(1e-3))

    best = []
    for gen in range(60):
        scores = [
            MemberScore(f"m{i:03d}", metric(h), h, f"g{gen}/m{i:03d}", gen)
            for i, h in enumerate(hparams)
        ]
        plan = plan_generation(scores, pbt, generation_rng(1, gen))
        best.append(plan.best_metric)
        hparams = [plan.plans[f"m{i:03d}"].hparams for i in range(20)]
    assert best[0] > 1.5
    assert best[-1] < 0.1
    assert all(b <= a + 1e-12 for a, b in zip(best, best[1:], strict=False)), "winners never lose"


# ------------------------------------------------------------------- async


def test_async_tournament_copies_only_a_better_opponent() -> None:
    pbt = PbtConfig(mode="async")
    me = score("m005", 5.0)
    worse = population([6.0, 7.0, 8.0])
    better = population([1.0, 2.0, 3.0])
    for seed in range(20):
        assert not plan_member_async(me, worse, pbt, generation_rng(seed, 3, "m005")).exploited
        plan = plan_member_async(me, better, pbt, generation_rng(seed, 3, "m005"))
        assert plan.exploited and plan.parent in {"m000", "m001", "m002"}
        assert plan.checkpoint == by_id(better)[plan.parent].checkpoint


def test_async_diverged_member_copies_a_finite_one_or_errors() -> None:
    pbt = PbtConfig(mode="async")
    me = score("m009", NAN)
    others = population([NAN, 9e9])
    for exploit in ("binary_tournament", "truncation"):
        cfg = pbt.model_copy(update={"exploit": exploit})
        plan = plan_member_async(me, others, cfg, generation_rng(0, 1, "m009"))
        assert plan.parent == "m001"
        with pytest.raises(PolicyError, match="no other member has a finite result"):
            plan_member_async(me, population([NAN]), cfg, generation_rng(0, 1, "m009"))
    # A finite member with nobody to compare against just keeps going.
    alone = plan_member_async(score("m0", 1.0), [], pbt, generation_rng(0, 1, "m0"))
    assert not alone.exploited


def test_async_truncation_moves_only_the_bottom_quantile() -> None:
    pbt = PbtConfig(mode="async", exploit="truncation", truncation_fraction=0.25)
    others = population([float(i) for i in range(19)])  # m000..m018, metrics 0..18
    top = {f"m{i:03d}" for i in range(5)}
    # 20 ranked, n = 5: ranks 15..19 (metric above 14) copy from ranks 0..4.
    for metric, copies in ((4.5, False), (13.5, False), (14.5, True), (99.0, True)):
        me = score("m100", metric)
        plan = plan_member_async(me, others, pbt, generation_rng(0, 3, "m100"))
        assert plan.exploited is copies, metric
        if copies:
            assert plan.parent in top
    # The member's own stale entry among `others` is ignored.
    stale = [*others, score("m100", -1.0)]
    assert plan_member_async(
        score("m100", 99.0), stale, pbt, generation_rng(0, 3, "m100")
    ).exploited


# -------------------------------------------------------------- determinism


def test_generation_rng_is_derived_from_seed_generation_and_member() -> None:
    draw = lambda *key: generation_rng(*key).random(4).tolist()  # noqa: E731
    assert draw(3, 5) == draw(3, 5)
    assert draw(3, 5, "m001") == draw(3, 5, "m001")
    variants = [draw(3, 5), draw(4, 5), draw(3, 6), draw(3, 5, "m001"), draw(3, 5, "m002")]
    assert len({tuple(v) for v in variants}) == len(variants)
    with pytest.raises(PolicyError):
        generation_rng(-1, 0)


metrics_st = st.lists(
    st.one_of(st.floats(0.0, 10.0), st.sampled_from([NAN, 1.0, 2.0])), min_size=2, max_size=12
).filter(lambda ms: any(math.isfinite(m) for m in ms))


@settings(max_examples=60, deadline=None)
@given(
    metrics=metrics_st,
    exploit=st.sampled_from(["binary_tournament", "truncation"]),
    resample=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_plan_does_not_depend_on_result_order(
    metrics: list[float], exploit: Exploit, resample: float, seed: int, data: st.DataObject
) -> None:
    pbt = PbtConfig(exploit=exploit, resample_probability=resample, seed=seed % 1000)
    scores = [score(f"m{i:03d}", m, lr=1e-4 * (i + 1)) for i, m in enumerate(metrics)]
    shuffled = data.draw(st.permutations(scores))
    a = plan_generation(scores, pbt, generation_rng(pbt.seed, 3))
    b = plan_generation(shuffled, pbt, generation_rng(pbt.seed, 3))
    assert a == b
    me = data.draw(st.sampled_from(scores))
    rest = [s for s in scores if s is not me]
    mine = generation_rng(pbt.seed, 3, me.member)
    again = generation_rng(pbt.seed, 3, me.member)
    assert plan_member_async(me, rest, pbt, mine) == plan_member_async(
        me, data.draw(st.permutations(rest)), pbt, again
    )
