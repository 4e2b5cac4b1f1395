"""The Katib suggestion service on real gRPC (loopback), driven by the fake
Katib controller; trials train with `fake_train` (no torch) so whole
searches take well under a second. The trial processes themselves are
exercised in test_katib_e2e.py."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Collection

import grpc
import pytest
from coordinator_helpers import fake_train, saved_state, tiny_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from katib_fake import Condition, FakeKatib, FakeTrial, LostReply, TrialRunner, experiment_proto
from run_helpers import until

from autolfads.coordinator.search.recovery import read_state
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.katib import records
from autolfads.katib.experiment import searched_parameters
from autolfads.katib.names import parse_trial_name
from autolfads.katib.servicer import create_suggestion_server
from autolfads.katib.suggestion import KatibSuggestion
from autolfads.katib_api.v1beta1 import api_pb2 as api
from autolfads.katib_api.v1beta1 import api_pb2_grpc as api_grpc
from autolfads.storage import LocalStore, RunLayout

DATA_SHA = "ab" * 32


def stage(store, cfg) -> None:
    store.put_bytes(RunLayout(cfg.name).config(), cfg.to_yaml().encode())
    store.put_bytes(f"{cfg.name}/data/{DATA_SHA}.h5", b"not read by fake_train")


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def cfg(store):
    cfg = tiny_config(mode="async", population=3, max_generations=3)
    stage(store, cfg)
    return cfg


class Served:
    def __init__(self, store) -> None:
        self.store = store
        self.start()

    def start(self) -> None:
        self.suggestion = KatibSuggestion(self.store)
        self.server, port = create_suggestion_server("127.0.0.1:0", self.suggestion)
        self.target = f"127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.stop(None).wait()
        self.suggestion.close()  # what the process's exit does to its claims

    def restart(self) -> None:
        """A new process: nothing but storage survives."""
        self.stop()
        self.start()


@pytest.fixture
def served(store):
    s = Served(store)
    yield s
    s.stop()


def fake_trials(store, fail: Collection[str] = frozenset()) -> TrialRunner:
    """Runs trials in-process like `trainer --katib-trial` would."""

    def run(trials: list[FakeTrial]) -> None:
        for trial in trials:
            name = parse_trial_name(trial.name)
            if name.is_end:  # `trainer --katib-trial` waits for the end, prints the best
                if not saved_state(store, name.run, history=False).terminal:
                    continue  # still waiting: it holds its slot
                trial.condition = Condition.SUCCEEDED
                trial.metrics = {"fitness": "0.0"}
                continue
            if trial.name in fail:  # killed: no report, Katib says FAILED
                trial.condition = Condition.FAILED
                continue
            grant = records.get_lease(store, name)
            report = fake_train(store, grant, "katib")
            records.put_report(store, name, report)
            trial.condition = Condition.SUCCEEDED
            trial.metrics = {"fitness": repr(report.fitness)}

    return run


def katib_for(served, cfg, run_trials, *, max_trials=None, parallel=None, **kw) -> FakeKatib:
    pbt = cfg.pbt
    exp = experiment_proto(
        cfg.name,
        searched_parameters(cfg),
        parallel or pbt.population,
        # One round more than the generations: the last results reach the
        # service only through one more GetSuggestions call (see katib/README).
        max_trials or pbt.population * (pbt.max_generations + 1),
        **kw,
    )
    return FakeKatib(served.target, exp, run_trials)


def reference_best(tmp_path, cfg, order: list[tuple[str, int]] | None = None) -> tuple:
    """The same search under the coordinator with one worker, one lease at a
    time; or, given the order of the (member, generation) reports, every
    queued segment leased at once and reported in that order."""
    store = LocalStore(tmp_path / "reference")
    stage(store, cfg)
    service = CoordinatorService.open_search(cfg, store, f"{cfg.name}/data/{DATA_SHA}.h5", DATA_SHA)
    held = {}
    while not service.terminal:
        if order is None:
            for grant in service.request_work("w", 1).leases:
                service.report(fake_train(store, grant, "w"))
            continue
        worker = f"w{len(order)}"  # a worker per request: no per-worker lease cap
        for grant in service.request_work(worker, cfg.pbt.population).leases:
            held[grant.member, grant.generation] = grant, worker
        grant, worker = held.pop(order.pop(0))
        service.report(fake_train(store, grant, worker))
    return best_of(store, cfg)


def best_of(store, cfg) -> tuple:
    state = json.loads(saved_state(store, cfg.name).to_json())
    best = state["best"]
    return state["status"], best["member"], best["generation"], best["metric"]


def test_health_reports_serving_for_katibs_probe_name(served):
    with grpc.insecure_channel(served.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("manager.v1beta1.Suggestion", ""):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_katib_search_equals_the_coordinator_run(tmp_path, store, cfg, served):
    katib = katib_for(served, cfg, fake_trials(store))
    katib.run()
    assert best_of(store, cfg) == reference_best(tmp_path, cfg)
    assert best_of(store, cfg)[0] == "finished"
    names = [t.name for t in katib.trials]
    assert names[:3] == ["search-m000-g0", "search-m001-g0", "search-m002-g0"]
    assert all(t.condition == Condition.SUCCEEDED for t in katib.trials)
    first = katib.trials[0]
    assert first.labels == {"autolfads.member": "m000", "autolfads.generation": "0"}
    assert set(first.assignments) == set(cfg.pbt.search_space)


def test_restarts_duplicates_and_shuffled_trial_lists_change_nothing(
    tmp_path, store, cfg, served, monkeypatch
):
    katib = katib_for(served, cfg, fake_trials(store))
    katib.validate()
    plain_request = katib.request
    rng = random.Random(0)

    def messy(count: int) -> list[FakeTrial]:
        # Katib lists trials in no promised order; a trial may appear twice.
        katib.trials = katib.trials + katib.trials[: len(katib.trials) // 2]
        rng.shuffle(katib.trials)
        try:
            return plain_request(count)
        finally:
            katib.trials = list({t.name: t for t in katib.trials}.values())

    monkeypatch.setattr(katib, "request", messy)
    rounds = 0
    while katib.step():
        rounds += 1
        if rounds in (1, 3):
            served.restart()  # the suggestion pod dies between calls
            katib.target = served.target
    assert best_of(store, cfg) == reference_best(tmp_path, cfg)


def test_a_failed_trial_counts_as_a_failed_segment_and_the_search_goes_on(store, cfg, served):
    katib = katib_for(served, cfg, fake_trials(store, fail={"search-m001-g1"}))
    katib.run()
    state = json.loads(saved_state(store, cfg.name).to_json())
    assert state["status"] == "finished"
    failed = [e for e in state["events"] if e["kind"] == "segment_failed"]
    assert [(e["member"], e["generation"]) for e in failed] == [("m001", 1)]
    assert "ended failed without a report" in failed[0]["message"]
    # Every member still ran every generation: one Katib trial per segment.
    assert len([t for t in katib.trials if "-end-" not in t.name]) == 9


def test_after_the_search_ends_katib_gets_end_trials(store, cfg, served):
    katib = katib_for(served, cfg, fake_trials(store))
    katib.run()
    ends = [t for t in katib.trials if t.labels.get("autolfads.end") == "true"]
    assert [t.name for t in ends] == [f"search-end-{i}" for i in range(9, 12)]


def call(target, method: str, request) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel:
        stub = api_grpc.SuggestionStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, method)(request, timeout=10)
    return info.value


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda e: e.spec.parameter_specs.parameters.add(name="gamma"), "'gamma' is not in"),
        (lambda e: e.spec.parameter_specs.parameters.pop(), "are not declared"),
        (
            lambda e: setattr(e.spec.parameter_specs.parameters[0].feasible_space, "max", "x1"),
            "is not a number",
        ),
        (
            lambda e: setattr(e.spec.parameter_specs.parameters[0].feasible_space, "min", "0.5"),
            "differs from the config",
        ),
        (
            lambda e: e.spec.algorithm.algorithm_settings.add(name="n_population", value="4"),
            "unknown algorithm setting 'n_population'",
        ),
        (lambda e: setattr(e.spec.objective, "type", api.MAXIMIZE), "must minimise"),
        (lambda e: setattr(e.spec, "parallel_trial_count", 4), "parallelTrialCount 4"),
        (lambda e: setattr(e.spec, "max_trial_count", 0), "maxTrialCount is unset"),
        # population x max_generations: Katib would end it before the last results
        # One round more: a member that finished early waits with an end
        # trial (async mode), at most parallelTrialCount - 1 of them.
        (lambda e: setattr(e.spec, "max_trial_count", 11), "maxTrialCount 11 is below the 12"),
        (
            lambda e: e.spec.MergeFrom(
                api.ExperimentSpec(parallel_trial_count=2, max_trial_count=10)
            ),
            "maxTrialCount 10 is below the 11",
        ),
        (lambda e: setattr(e.spec, "max_trial_count", 100), "maxTrialCount 100 is above 12"),
        (lambda e: setattr(e.spec.objective, "goal", 0.5), "objective.goal 0.5"),
        (
            lambda e: setattr(e.spec.early_stopping, "algorithm_name", "medianstop"),
            "earlyStopping 'medianstop'",
        ),
        (lambda e: setattr(e, "name", "other-run"), "no config.yaml"),
        (lambda e: setattr(e, "name", "Bad_Name"), "Kubernetes name"),
    ],
)
def test_validate_names_the_bad_setting(store, cfg, served, change, needle):
    exp = katib_for(served, cfg, None).experiment
    change(exp)
    err = call(
        served.target,
        "ValidateAlgorithmSettings",
        api.ValidateAlgorithmSettingsRequest(experiment=exp),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.details() and "\n" not in err.details()
    assert read_state(store, cfg.name) is None or needle == "no config.yaml"


def test_bad_requests_leave_the_state_untouched(store, cfg, served):
    katib = katib_for(served, cfg, fake_trials(store))
    katib.validate()
    katib.step()
    layout = RunLayout(cfg.name)
    before = saved_state(store, layout.run).to_json()
    trials = [t.to_proto() for t in katib.trials]
    bad = [
        (0, 3, trials, "current_request_number 0"),
        (-2, 3, trials, "current_request_number -2"),
        (4, 7, trials, "at most the population 3"),
        (1, 4, [*trials, FakeTrial("search-m009-g0", {}, {}).to_proto()], "unknown trial"),
        (1, 4, [*trials, FakeTrial("search-m000-g5", {}, {}).to_proto()], "unknown trial"),
        (1, 4, [*trials, FakeTrial("other-m000-g0", {}, {}).to_proto()], "unknown trial"),
        (1, 4, [*trials, FakeTrial("hello", {}, {}).to_proto()], "unknown trial name"),
    ]
    for count, total, listed, needle in bad:
        request = api.GetSuggestionsRequest(
            experiment=katib.experiment,
            trials=listed,
            current_request_number=count,
            total_request_number=total,
        )
        err = call(served.target, "GetSuggestions", request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, needle
        assert needle in err.details(), err.details()
    mismatched = api.Experiment()
    mismatched.CopyFrom(katib.experiment)
    mismatched.spec.parameter_specs.parameters[0].feasible_space.max = "0.9"
    err = call(
        served.target,
        "GetSuggestions",
        api.GetSuggestionsRequest(
            experiment=mismatched, trials=trials, current_request_number=1, total_request_number=4
        ),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "differs from the config" in err.details()
    with grpc.insecure_channel(served.target) as channel:
        for method in ("GetSuggestions", "ValidateAlgorithmSettings"):
            raw = channel.unary_unary(f"/api.v1.beta1.Suggestion/{method}")
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\xff\x00garbage" * 10, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid api.v1.beta1." in info.value.details()
    assert saved_state(store, layout.run).to_json() == before


def test_sync_mode_answers_unavailable_until_the_generation_closes(tmp_path, store, served):
    cfg = tiny_config(mode="sync", population=3, max_generations=2)
    stage(store, cfg)
    katib = katib_for(served, cfg, fake_trials(store))
    katib.validate()
    run = fake_trials(store)
    first = katib.request(3)
    run(first[:1])  # one trial ended: Katib asks for its slot at once
    with pytest.raises(grpc.RpcError) as info:
        katib.request(1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ask again later" in info.value.details()
    run(first[1:])  # the generation closes: all three slots are answered
    assert [t.name for t in katib.request(3)] == [f"search-m00{i}-g1" for i in range(3)]
    run(katib.trials[3:])
    while katib.step():
        pass
    assert best_of(store, cfg) == reference_best(tmp_path, cfg)


@pytest.mark.parametrize(
    ("mode", "parallel", "max_trials"),
    # sync: no member waits with an end trial, one trial more is enough;
    # async: up to parallelTrialCount - 1 of them wait before the last call.
    [("sync", 3, 10), ("sync", 3, 12), ("async", 2, 11), ("async", 2, 12), ("async", 1, 10)],
)
def test_max_trial_count_fits_what_the_search_can_take(store, served, mode, parallel, max_trials):
    cfg = tiny_config(mode=mode, population=3, max_generations=3)
    stage(store, cfg)
    katib_for(served, cfg, None, parallel=parallel, max_trials=max_trials).validate()


def test_sync_mode_needs_a_slot_per_member(store, served):
    cfg = tiny_config(mode="sync", population=3)
    stage(store, cfg)
    katib = katib_for(served, cfg, None, parallel=2)
    with pytest.raises(grpc.RpcError) as info:
        katib.validate()
    assert "must equal the population 3 in sync mode" in info.value.details()


def test_trial_command_rejects_a_bad_name_in_one_line(store, capsys):
    from autolfads.cli import main

    code = main(["trainer", "--katib-trial", "Not_A-trial", "--storage", store.url])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("autolfads: error: unknown trial name")
    assert err.count("\n") == 1


def test_an_end_trial_prints_the_best_fitness_and_trains_nothing(store, cfg, served, capsys):
    import threading

    from autolfads.katib.trial import run_trial

    katib_for(served, cfg, fake_trials(store)).run()
    capsys.readouterr()
    code = run_trial(
        store,
        "search-end-9",
        cache_dir=store.root,
        device="cpu",
        stop=threading.Event(),
        worker_id="x",
    )
    best = best_of(store, cfg)[3]
    assert code == 0 and capsys.readouterr().out == f"fitness={best!r}\n"


def test_a_retried_request_gets_the_same_trials_back(store, cfg, served):
    """Katib lost the reply (its 60 s timeout, a restart): it asks again with
    the same total; the service must name the same trials, not lease more."""
    katib = katib_for(served, cfg, fake_trials(store))
    katib.validate()
    request = api.GetSuggestionsRequest(
        experiment=katib.experiment, current_request_number=3, total_request_number=3
    )
    with grpc.insecure_channel(served.target) as channel:
        stub = api_grpc.SuggestionStub(channel)
        first = stub.GetSuggestions(request, timeout=30)
        state = saved_state(store, cfg.name)
        served.restart()
    with grpc.insecure_channel(served.target) as channel:
        again = api_grpc.SuggestionStub(channel).GetSuggestions(request, timeout=30)
    assert [a.trial_name for a in again.parameter_assignments] == [
        a.trial_name for a in first.parameter_assignments
    ]
    assert again == first
    leases = saved_state(store, cfg.name).leases
    assert len(leases) == len(state.leases) == 3


def test_a_second_suggestion_process_waits_until_the_first_lets_the_run_go(store, cfg, served):
    # Two suggestion pods of one Experiment (a rolling restart) would both
    # write the run's journal; the second answers UNAVAILABLE (Katib retries)
    # naming the holder, and serves once the first has stopped.
    katib = katib_for(served, cfg, fake_trials(store))
    katib.validate()
    first = katib.request(1)
    second = Served(store)
    try:
        other = FakeKatib(second.target, katib.experiment, fake_trials(store))
        with pytest.raises(grpc.RpcError) as info:
            other.request(1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "is being served by autolfads katib suggestion" in info.value.details()
        served.stop()
        fake_trials(store)(first)
        other.trials, other.requested = list(first), katib.requested
        assert [t.name for t in other.request(1)] == ["search-m001-g0"]
    finally:
        second.stop()


def test_waiting_out_one_run_s_previous_holder_holds_up_no_other_experiment(caplog):
    # A rescheduled suggestion pod finds the old pod's claim on S3 and waits
    # out its lapse. That wait used to happen under the service's one lock,
    # so every other Experiment's GetSuggestions waited too.
    from dataclasses import asdict

    from autolfads.storage.claims import Claimant
    from autolfads.storage.memory import MemoryStore

    store = MemoryStore()
    held_up = tiny_config(mode="async", population=3).model_copy(update={"name": "held-up"})
    free = tiny_config(mode="async", population=3)
    stage(store, held_up)
    stage(store, free)
    old_pod = Claimant("autolfads katib suggestion", host="old-pod", pid=1)
    owner = RunLayout(held_up.name).owner()
    # Never renewed, and a lapse no test outlasts: only its removal ends the wait.
    store.put_bytes(
        owner, json.dumps({**asdict(old_pod), "beat": 0, "lapse_after_s": 600}).encode()
    )
    served = Served(store)
    waiting = katib_for(served, held_up, fake_trials(store))
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(waiting.request(1)))
    try:
        with caplog.at_level(logging.INFO, logger="autolfads.storage.claims"):
            thread.start()
            until(lambda: "waiting up to 600 s" in caplog.text, "the wait for the old pod")
        # Another Experiment is answered meanwhile.
        assert len(katib_for(served, free, fake_trials(store)).request(1)) == 1
        assert thread.is_alive() and not outcome  # still waiting out the old pod
        store.delete(owner)  # the old pod's claim ends
        thread.join(timeout=60)
        assert not thread.is_alive() and len(outcome) == 1
    finally:
        store.delete(owner)  # (a failed check above must not leave it waiting)
        thread.join(timeout=60)
        served.stop()


def segment_names(katib: FakeKatib) -> list[str]:
    return [t.name for t in katib.trials if t.labels.get("autolfads.end") != "true"]


def finish(katib: FakeKatib) -> None:
    """Katib carries on: rounds until maxTrialCount trials have completed."""
    live = (Condition.CREATED, Condition.RUNNING)
    katib.run_trials([t for t in katib.trials if t.condition in live])
    while katib.step():
        pass


def test_a_lost_reply_s_trial_is_handed_out_again_before_new_work(tmp_path, store, cfg, served):
    """Katib never got a committed reply (its 60 s deadline, the pod killed
    after the commit); before it asked again another trial ended, so the
    retry asks for more (count 2, total 5): the lost trial comes first, under
    its own name, and the search ends as it would have without the loss."""
    katib = katib_for(served, cfg, fake_trials(store))
    katib.validate()
    first = katib.request(3)
    katib.run_trials(first[:1])
    katib.lose_replies = 1
    with pytest.raises(LostReply):
        katib.request(1)  # the service granted search-m000-g1
    katib.run_trials(first[1:2])
    katib.unlisted = {first[2].name}  # Katib's list lags: holds it, does not list it
    with pytest.raises(grpc.RpcError) as info:
        katib.request(2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # nothing handed out twice
    katib.unlisted = set()
    again = katib.request(2)
    assert [t.name for t in again] == ["search-m000-g1", "search-m001-g1"]
    assert (katib.requested, len(katib.trials)) == (5, 5)
    katib.run_trials(first[2:])
    assert [t.name for t in katib.request(1)] == ["search-m002-g1"]
    finish(katib)
    names = segment_names(katib)
    assert len(names) == len(set(names)) == 9  # one trial per segment
    assert best_of(store, cfg) == reference_best(tmp_path, cfg)


def test_a_resubmitted_experiment_carries_on_the_search(tmp_path, store, cfg, served):
    """The user deletes the Experiment (its trials go) and submits it again
    for the same run, as the 409 message says: the open leases are handed
    out again to the new Experiment."""
    old = katib_for(served, cfg, fake_trials(store))
    old.validate()
    old.step()
    old.run_trials = lambda trials: None  # the old Experiment's pods die with it
    old.step()
    served.restart()
    new = katib_for(served, cfg, fake_trials(store))
    new.run()
    assert segment_names(new)[:3] == ["search-m000-g1", "search-m001-g1", "search-m002-g1"]
    assert best_of(store, cfg) == reference_best(tmp_path, cfg)


def test_a_trial_whose_metrics_were_unavailable_still_counts(tmp_path, store, cfg, served):
    """Katib lists no trial whose metrics were unavailable; its report counts anyway."""
    run = fake_trials(store)

    def unavailable(trials: list[FakeTrial]) -> None:
        run(trials)
        for trial in trials:
            if trial.name == "search-m001-g1":
                trial.condition = Condition.METRICSUNAVAILABLE

    katib = katib_for(served, cfg, unavailable)
    katib.run()
    assert best_of(store, cfg) == reference_best(tmp_path, cfg)


def test_deleted_trials_are_handed_out_again(store, cfg, served):
    """Katib deletes the newest trials when parallelTrialCount is lowered:
    their segments are handed out again."""
    katib = katib_for(served, cfg, fake_trials(store))
    katib.validate()
    katib.step()
    katib.request(3)
    katib.experiment.spec.parallel_trial_count = 2
    katib.delete(["search-m002-g1"])
    katib.run_trials(katib.trials[3:])
    assert [t.name for t in katib.request(2)] == ["search-m002-g1", "search-m000-g2"]
    katib.run_trials(katib.trials[-2:])
    assert [t.name for t in katib.request(2)] == ["search-m001-g2", "search-m002-g2"]
    names = segment_names(katib)
    assert len(names) == len(set(names))
    state = json.loads(saved_state(store, cfg.name).to_json())
    assert not [e for e in state["events"] if e["kind"] == "segment_failed"]


@pytest.mark.parametrize("damage", ["report", "lease"])
def test_one_bad_trial_record_does_not_stall_the_experiment(store, cfg, served, caplog, damage):
    """An unreadable report.json counts as a failed segment (logged, an
    event); a lost lease.json beside a valid report changes nothing."""
    run = fake_trials(store)

    def damaged(trials: list[FakeTrial]) -> None:
        run(trials)
        trial = parse_trial_name("search-m001-g1")
        if any(t.name == str(trial) for t in trials):
            if damage == "report":
                doc = json.loads(store.get_bytes(records.report_key(trial)))
                doc["written_by"] = "a newer trainer"
                store.put_bytes(records.report_key(trial), json.dumps(doc).encode())
            else:
                store.delete(records.lease_key(trial))

    katib = katib_for(served, cfg, damaged)
    with caplog.at_level(logging.WARNING, logger="autolfads.katib.suggestion"):
        katib.run()
    state = json.loads(saved_state(store, cfg.name).to_json())
    assert state["status"] == "finished" and katib.errors == []
    failed = [
        (e["member"], e["generation"]) for e in state["events"] if e["kind"] == "segment_failed"
    ]
    if damage == "report":
        assert failed == [("m001", 1)]
        assert "search-m001-g1: unreadable report" in caplog.text
    else:
        assert failed == []


def test_async_members_out_of_step_still_end_the_experiment(tmp_path, store, served):
    """m000's segments are short, the others' long: m000 trains its last
    generation while m001 and m002 still train their first. Katib then asks
    for all three slots with two members ready; answering NotReady would
    stall for ever (nothing runs, nothing changes). The finished member's
    slot gets an end trial that waits for the search's end instead."""
    cfg = tiny_config(mode="async", population=3, max_generations=3, seed=6)  # order matters
    stage(store, cfg)
    pbt = cfg.pbt
    katib = katib_for(served, cfg, fake_trials(store))
    katib.run_clocked(lambda t: 1 if "-m000-" in t.name or "-end-" in t.name else 3)
    max_trials = pbt.population * (pbt.max_generations + 1)
    assert len(katib.trials) == max_trials  # the Experiment succeeded at maxTrialCount
    assert all(t.condition == Condition.SUCCEEDED for t in katib.trials)
    names = [t.name for t in katib.trials]
    assert len(set(names)) == len(names)
    # The end trial handed out while m001 and m002 still trained, then the final round.
    assert names[5:8] == ["search-m001-g1", "search-m002-g1", "search-end-7"]
    assert [n for n in names if "-end-" in n] == ["search-end-7", "search-end-10", "search-end-11"]
    assert katib.errors == []
    order = [("m000", 0), ("m000", 1), ("m001", 0), ("m002", 0), ("m000", 2)]
    order += [("m001", 1), ("m002", 1), ("m001", 2), ("m002", 2)]
    assert best_of(store, cfg) == reference_best(tmp_path, cfg, order)


class EndTrialPod:
    """`trainer --katib-trial <run>-end-<n>` in a thread, polling at once;
    `reads` counts its looks at the stored state."""

    def __init__(self, store, monkeypatch) -> None:
        from autolfads.katib import trial as trial_module

        self.reads = threading.Semaphore(0)
        real = trial_module.read_state

        def counted(*args, **kwargs):
            state = real(*args, **kwargs)
            self.reads.release()
            return state

        monkeypatch.setattr(trial_module, "read_state", counted)
        self.stop = threading.Event()
        self.code: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.code.append(
                trial_module.run_trial(
                    store,
                    "search-end-7",
                    cache_dir=store.root,
                    device="cpu",
                    stop=self.stop,
                    worker_id="x",
                    poll_s=0.001,
                )
            )
        )
        self.thread.start()

    def polled(self, times: int) -> None:
        for _ in range(times):
            assert self.reads.acquire(timeout=60), "the end trial stopped reading the state"

    def join(self) -> int:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.code[0]


def test_an_end_trial_handed_out_mid_search_waits_for_the_search_to_end(
    store, cfg, capsys, monkeypatch
):
    service = CoordinatorService.open_search(cfg, store, f"{cfg.name}/data/{DATA_SHA}.h5", DATA_SHA)
    pod = EndTrialPod(store, monkeypatch)
    try:
        pod.polled(3)  # it has seen the search running three times and is waiting
        assert pod.thread.is_alive() and capsys.readouterr().out == ""
        while not service.terminal:  # the search ends meanwhile
            for grant in service.request_work("w", 1).leases:
                service.report(fake_train(store, grant, "w"))
    except BaseException:
        pod.stop.set()  # a failed check must not leave it waiting
        raise
    assert pod.join() == 0
    assert capsys.readouterr().out == f"fitness={best_of(store, cfg)[3]!r}\n"


def test_a_waiting_end_trial_stops_on_sigterm(store, cfg, capsys, monkeypatch):
    CoordinatorService.open_search(cfg, store, f"{cfg.name}/data/{DATA_SHA}.h5", DATA_SHA)
    pod = EndTrialPod(store, monkeypatch)
    pod.polled(1)
    pod.stop.set()  # what the SIGTERM handler does
    assert pod.join() == 143 and capsys.readouterr().out == ""
