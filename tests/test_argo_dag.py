"""The search DAG's decisions, as Argo makes them (v4.1.2 dag.go).

`depends` expressions are evaluated with Argo's results of an expanded task
(AnySucceeded, AllFailed over its items), and the finished workflow's phase
is assessed from the DAG's leaves (`autolfads.argo.depends.dag_phase`): the
workflow fails once every trainer failed, and only then.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from autolfads.argo import depends
from autolfads.argo.manifests import load_workflow_template, templates_by_name
from autolfads.argo.validate import validate_object

TASKS: list[dict[str, Any]] = templates_by_name(load_workflow_template()["spec"])["search"]["dag"][
    "tasks"
]
BY_NAME = {t["name"]: t for t in TASKS}

# Results of every task but the trainers in a search that ran to its end.
FINISHED = {
    "stage": {"Skipped"},
    "coordinator-service": {"Succeeded"},
    "coordinator": {"Succeeded"},
}
# The trainer fan-out's results (each item's phase after its retries).
ALL_SUCCEEDED = {"Succeeded", "AnySucceeded"}
ONE_FAILED = {"Failed", "AnySucceeded"}
ALL_FAILED = {"Failed", "AllFailed"}
# Argo's AllFailed wants every item Failed; a pod lost before its main
# container ran ends Errored, which makes the group Errored and AllFailed false.
SOME_ERRORED = {"Errored"}


def runs(task: str, results: dict[str, set[str]]) -> bool:
    return depends.evaluate(BY_NAME[task]["depends"], results)


def play(trainer: set[str], stop_exit: str = "Failed") -> dict[str, set[str]]:
    """Every task's results, in DAG order, as Argo would decide them."""
    results = {**FINISHED, "trainer": trainer}
    results["trainers-failed"] = {stop_exit} if runs("trainers-failed", results) else {"Omitted"}
    for task in ("finalize", "report"):
        results[task] = {"Succeeded"} if runs(task, results) else {"Omitted"}
    return results


@pytest.mark.parametrize("trainer", [ALL_SUCCEEDED, ONE_FAILED], ids=["all-ok", "one-gave-up"])
def test_a_search_the_trainers_finished_is_finalized_and_succeeds(trainer: set[str]) -> None:
    results = play(trainer)
    assert results["trainers-failed"] == {"Omitted"}
    assert results["finalize"] == results["report"] == {"Succeeded"}
    assert depends.dag_phase(TASKS, results) == "Succeeded"


@pytest.mark.parametrize("trainer", [ALL_FAILED, SOME_ERRORED], ids=["failed", "errored"])
def test_when_every_trainer_failed_the_search_is_stopped_and_the_workflow_fails(
    trainer: set[str],
) -> None:
    results = play(trainer)
    assert results["trainers-failed"] == {"Failed"}  # it ran (and exits 1)
    assert results["finalize"] == results["report"] == {"Omitted"}
    assert depends.dag_phase(TASKS, results) == "Failed"


def test_a_search_that_had_finished_anyway_is_still_finalized() -> None:
    # stop-search exits 0 when the coordinator says the search had finished.
    results = play(ALL_FAILED, stop_exit="Succeeded")
    assert results["finalize"] == {"Succeeded"}
    assert depends.dag_phase(TASKS, results) == "Succeeded"


def test_nothing_is_stopped_when_the_trainers_never_started() -> None:
    results = {"stage": {"Failed"}, "coordinator-service": {"Succeeded"}}
    results["coordinator"] = results["trainer"] = {"Omitted"}
    assert not runs("trainers-failed", results)


def test_the_stop_task_must_not_be_a_leaf() -> None:
    # An Omitted leaf inherits a failed trainer's phase: the search one
    # trainer gave up on would end Failed. The same DAG with finalize not
    # waiting for trainers-failed shows it.
    tasks = copy.deepcopy(TASKS)
    finalize = next(t for t in tasks if t["name"] == "finalize")
    finalize["depends"] = "coordinator.Succeeded"
    results = {**play(ONE_FAILED), "finalize": {"Succeeded"}, "report": {"Succeeded"}}
    assert depends.dag_phase(tasks, results) == "Failed"
    assert depends.dag_phase(TASKS, play(ONE_FAILED)) == "Succeeded"


def test_dag_phase_follows_argo_on_leaves_and_continue_on() -> None:
    tasks: list[dict[str, Any]] = [
        {"name": "a"},
        {"name": "b", "depends": "a", "continueOn": {"failed": True}},
        {"name": "c", "depends": "a.Failed"},
    ]
    assert depends.dag_phase(tasks, {"a": {"Succeeded"}, "b": {"Failed"}}) == "Running"
    finished = {"a": {"Succeeded"}, "b": {"Failed"}, "c": {"Omitted"}}
    assert depends.dag_phase(tasks, finished) == "Succeeded"
    failed_root = {"a": {"Failed"}, "b": {"Omitted"}, "c": {"Succeeded"}}
    # b inherits a's failure, which its continueOn tolerates; without it, not.
    assert depends.dag_phase(tasks, failed_root) == "Succeeded"
    del tasks[1]["continueOn"]
    assert depends.dag_phase(tasks, failed_root) == "Failed"


def test_aggregate_results_of_a_task_that_does_not_loop_are_refused() -> None:
    template = copy.deepcopy(load_workflow_template())
    search = templates_by_name(template["spec"])["search"]
    stop = next(t for t in search["dag"]["tasks"] if t["name"] == "trainers-failed")
    stop["depends"] = "coordinator.AllFailed"
    problems = validate_object(template)
    assert any("coordinator.AllFailed needs a task with withItems" in p for p in problems)
    assert validate_object(load_workflow_template()) == []
