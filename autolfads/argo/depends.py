"""Argo DAG `depends` expressions: parse, list the tasks named, evaluate.

Grammar (Argo's enhanced depends logic): task names with an optional result
(`coordinator.Succeeded`), combined with `&&`, `||`, `!` and parentheses. A
bare name means "succeeded, skipped or daemoned", as in Argo.
"""

from __future__ import annotations

import re
from typing import Any

from autolfads.errors import AutolfadsError

RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned")
# Finished node phases a result can match; AnySucceeded/AllFailed are for
# expanded (withItems/withSequence) tasks.
AGGREGATE_RESULTS = ("AnySucceeded", "AllFailed")
TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[A-Za-z0-9][A-Za-z0-9_\-]*(?:\.[A-Za-z]+)?)")


class DependsError(AutolfadsError):
    """A `depends` expression cannot be parsed."""


def tokenize(expr: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        match = TOKEN.match(expr, pos)
        if match is None:
            raise DependsError(f"depends {expr!r}: cannot parse at {expr[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def split_operand(token: str) -> tuple[str, str | None]:
    name, _, result = token.partition(".")
    if result and result not in RESULTS + AGGREGATE_RESULTS:
        raise DependsError(f"depends: unknown result {result!r} in {token!r}")
    return name, result or None


def task_names(expr: str) -> list[str]:
    """The task names an expression refers to, in order of appearance."""
    names = []
    for token in tokenize(expr):
        if token not in {"(", ")", "&&", "||", "!"}:
            names.append(split_operand(token)[0])
    return names


def evaluate(expr: str, results: dict[str, set[str]]) -> bool:
    """Truth of `expr` given each finished task's set of results.

    `results[name]` holds e.g. {"Succeeded"} or {"Failed", "AllFailed"}; a task
    missing from `results` has not finished, which makes its operands false.
    """
    tokens = tokenize(expr)
    pos = 0

    def operand(token: str) -> bool:
        name, result = split_operand(token)
        got = results.get(name, set())
        if result is None:
            return bool(got & {"Succeeded", "Skipped", "Daemoned"})
        return result in got

    def parse_or() -> bool:
        nonlocal pos
        value = parse_and()
        while pos < len(tokens) and tokens[pos] == "||":
            pos += 1
            rhs = parse_and()
            value = value or rhs
        return value

    def parse_and() -> bool:
        nonlocal pos
        value = parse_not()
        while pos < len(tokens) and tokens[pos] == "&&":
            pos += 1
            rhs = parse_not()
            value = value and rhs
        return value

    def parse_not() -> bool:
        nonlocal pos
        if pos >= len(tokens):
            raise DependsError(f"depends {expr!r}: ends early")
        token = tokens[pos]
        pos += 1
        if token == "!":
            return not parse_not()
        if token == "(":
            value = parse_or()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise DependsError(f"depends {expr!r}: missing ')'")
            pos += 1
            return value
        if token in {")", "&&", "||"}:
            raise DependsError(f"depends {expr!r}: unexpected {token!r}")
        return operand(token)

    value = parse_or()
    if pos != len(tokens):
        raise DependsError(f"depends {expr!r}: unexpected {tokens[pos]!r}")
    return value


# -- how Argo decides a finished DAG's phase ------------------------------------
# workflow/controller/dag.go (assessDAGPhase, v4.1.2): the DAG's phase is that
# of its *leaf* tasks (those no other task depends on). A leaf that ran has its
# own phase (an expanded task: Failed if any item failed). A leaf that did not
# run (Skipped, Omitted) inherits the phases of the branches that reach it,
# Failed/Error winning over Succeeded; a branch through an expanded task
# carries each item's phase. A failed leaf with `continueOn` for that phase
# does not fail the DAG.

_PHASE = {"Succeeded": "Succeeded", "Failed": "Failed", "Errored": "Error"}


def task_dependencies(task: dict[str, Any]) -> list[str]:
    expr = task.get("depends")
    if isinstance(expr, str):
        return list(dict.fromkeys(task_names(expr)))
    deps = task.get("dependencies")
    return [str(d) for d in deps] if isinstance(deps, list) else []


def _own_phases(got: set[str]) -> set[str]:
    """Phases a finished task passes down its branch (one per item)."""
    phases = {_PHASE[r] for r in got if r in _PHASE}
    if "AnySucceeded" in got:
        phases.add("Succeeded")
    if {"Failed", "AllFailed"} <= got:
        phases.discard("Succeeded")
    return phases


def dag_phase(tasks: list[dict[str, Any]], results: dict[str, set[str]]) -> str:
    """'Running', 'Succeeded', 'Failed' or 'Error' for a DAG's `tasks` given each
    finished task's results (as `evaluate` takes them)."""
    by_name = {str(t["name"]): t for t in tasks}
    deps = {name: task_dependencies(t) for name, t in by_name.items()}
    depended_on = {d for ds in deps.values() for d in ds}
    leaves = [name for name in by_name if name not in depended_on]
    memo: dict[str, set[str]] = {}

    def outbound(name: str) -> set[str]:
        if name not in memo:
            own = _own_phases(results.get(name, set()))
            memo[name] = own or arriving(name)
        return memo[name]

    def arriving(name: str) -> set[str]:
        if not deps[name]:
            return {"Succeeded"}
        return {phase for dep in deps[name] for phase in outbound(dep)}

    result = "Succeeded"
    for name in leaves:
        got = results.get(name)
        if got is None:
            result = "Running"
            continue
        own = _own_phases(got)
        if own:
            phase = "Error" if "Error" in own else "Failed" if "Failed" in own else "Succeeded"
        else:
            reached = arriving(name)
            phase = next((p for p in ("Failed", "Error") if p in reached), "Succeeded")
        continue_on = by_name[name].get("continueOn")
        tolerated = isinstance(continue_on, dict) and bool(
            continue_on.get("failed" if phase == "Failed" else "error")
        )
        if phase != "Succeeded" and not tolerated:
            return phase
    return result
