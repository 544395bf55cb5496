"""Expectation checks: a scenario's ``expect:`` bounds evaluated against a call's measured metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.scenario import AGGREGATES, COMPARISONS, Expectation


@dataclass(frozen=True)
class ExpectationResult:
    name: str
    bound: str
    actual: float | str | bool | None
    ok: bool
    note: str = ""


def _actual(exp: Expectation, metrics: Mapping[str, Any]) -> tuple[float | str | bool | None, str]:
    if exp.metric not in metrics:
        return None, f"metric {exp.metric!r} was not measured"
    value = metrics[exp.metric]
    if exp.aggregate is None:
        if isinstance(value, list | tuple):
            return None, f"metric {exp.metric!r} is a list; give an aggregate"
        return (value if isinstance(value, str | bool) else float(value)), ""
    if not isinstance(value, list | tuple):
        return None, f"metric {exp.metric!r} is not a list"
    samples = [float(v) for v in value]
    if not samples and exp.aggregate != "count":
        return None, "no samples"
    return AGGREGATES[exp.aggregate](samples), ""


def evaluate_expectations(expect: Sequence[Expectation], metrics: Mapping[str, Any]) -> list[ExpectationResult]:
    """Check each expectation against ``metrics`` (lists for list metrics, scalars otherwise)."""
    results = []
    for exp in expect:
        actual, note = _actual(exp, metrics)
        ok = False
        if actual is not None:
            if isinstance(exp.bound.value, str) != isinstance(actual, str):
                note = f"cannot compare {actual!r} with {exp.bound.value!r}"
            else:
                ok = bool(COMPARISONS[exp.bound.op](actual, exp.bound.value))
        results.append(ExpectationResult(exp.name, str(exp.bound), actual, ok, note))
    return results
