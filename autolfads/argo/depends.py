"""Argo DAG `depends` expressions: parse, list the tasks named, evaluate.

Grammar (Argo's enhanced depends logic): task names with an optional result
(`coordinator.Succeeded`), combined with `&&`, `||`, `!` and parentheses. A
bare name means "succeeded, skipped or daemoned", as in Argo.
"""

from __future__ import annotations

import re

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
