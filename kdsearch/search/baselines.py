"""Hand-picked students (`[[search.baselines]]`), run first and marked in every report.

Users arrive with a student they picked by hand. Running it first, under the study's own
recipe and at the full budget (early stopping never stops it), answers the question they
came with: does the search beat my pick, by how much, and at what size?
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from kdsearch.errors import StudyFileError
from kdsearch.record import TrialRecord, trial_attrs
from kdsearch.search.space import suggest_recipe, suggest_student
from kdsearch.spec import StudySpec


class _Answers:
    """Stands in for a trial: answers the search space's suggest_* calls from a baseline's
    values, checking each against what the space allows."""

    def __init__(self, label: str, values: dict[str, Any]):
        self.label, self.values = label, values
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def _fail(self, msg: str) -> StudyFileError:
        return StudyFileError(f"[[search.baselines]] '{self.label}': {msg}")

    def _value(self, name: str, allowed: str, one_choice: list | None = None) -> Any:
        if name in self.values:
            return self.values[name]
        if one_choice is not None and len(one_choice) == 1:
            return one_choice[0]  # a fixed setting of the space needs no value
        raise self._fail(f"no value for '{name}' (this space allows {allowed})")

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        value = self._value(name, f"{low}..{high}")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high \
                or (value - low) % step:
            raise self._fail(f"{name} = {value!r} is not an integer in {low}..{high}"
                             + (f" in steps of {step}" if step != 1 else ""))
        self.params[name], self.distributions[name] = value, IntDistribution(low, high, log, step)
        return value

    def suggest_float(self, name: str, low: float, high: float, log: bool = False,
                      step: float | None = None) -> float:
        value = self._value(name, f"{low:g}..{high:g}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not low <= value <= high:
            raise self._fail(f"{name} = {value!r} is not a number in {low:g}..{high:g}")
        self.params[name] = float(value)
        self.distributions[name] = FloatDistribution(low, high, log=log, step=step)
        return float(value)

    def suggest_categorical(self, name: str, choices: list) -> Any:
        value = self._value(name, f"one of {list(choices)}", list(choices))
        matches = [c for c in choices if c == value and not isinstance(value, bool)]
        if not matches:
            raise self._fail(f"{name} = {value!r} is not one of {list(choices)}")
        self.params[name] = matches[0]
        self.distributions[name] = CategoricalDistribution(list(choices))
        return matches[0]


def resolve(spec: StudySpec, input_shape: tuple[int, int, int]) -> list[tuple[str, dict[str, Any]]]:
    """Each baseline's label and complete parameters, checked against the search space.

    Raises StudyFileError (one line) for a value the space cannot take, a missing one, or a
    name that is not a parameter of the space, before anything is trained.
    """
    out = []
    for baseline in spec.search.baselines:
        answers = _Answers(baseline.label, dict(baseline.params))
        suggest_student(answers, spec.student.space, input_shape)  # type: ignore[arg-type]
        suggest_recipe(answers, spec.student.train)  # type: ignore[arg-type]
        unknown = sorted(set(baseline.params) - set(answers.params))
        if unknown:
            raise answers._fail(f"'{unknown[0]}' is not a parameter of this search space "
                                f"(its parameters: {', '.join(answers.params)})")
        out.append((baseline.label, answers.params))
    return out


def enqueue(study: optuna.Study, baselines: list[tuple[str, dict[str, Any]]]) -> int:
    """Queue each baseline unless the study already holds a trial with its parameters.

    Callers hold the study's claim lock, so that workers starting together queue each
    baseline once. Returns how many were queued.
    """
    trials = study.get_trials(deepcopy=False)
    labels = {TrialRecord.of(t).baseline for t in trials}
    queued = 0
    for label, params in baselines:
        if label in labels or any(t.params == params for t in trials):
            continue
        study.enqueue_trial(params, user_attrs=trial_attrs(baseline=label))
        queued += 1
    return queued
