"""The study's objectives: validation accuracy up, and the chosen cost(s) down.

`[search] objectives` names the cost objective(s) beside validation accuracy: any of `params`
(the default, and all there was before costs could be chosen), `macs` and `latency_ms`. Each
cost is also a field of `TrialRecord` of the same name, so the runner, early stopping, reports
and `compress` read a trial's costs by name from one place, here, instead of each hard-coding
"params". A stored study's objectives are its Optuna metric names, so reports recover them from
storage alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ACCURACY = "val_accuracy"  # the one objective maximized
COSTS = ("params", "macs", "latency_ms")  # the costs a study may minimize, in display order
DEFAULT = ("params",)  # a study file without `objectives`: exactly what kdsearch always did
# Costs are measured in decades (hypervolume, the sampler's ranking); below these they are
# clamped before the log: a parameter or MAC count is at least 1, a latency in ms may well be
# below 1 (and is never 0).
FLOOR = {"params": 1.0, "macs": 1.0, "latency_ms": 1e-9}


@dataclass(frozen=True)
class Cost:
    """How a cost reads in messages, tables and plots."""

    name: str  # the TrialRecord field and the Optuna metric name
    label: str  # axis and column title
    unit: str  # after a value in a sentence ("12,345 params")
    known_before_training: bool  # refused before training when over its limit

    def format(self, value: float | None) -> str:
        """The value as a person reads it: whole counts with separators, latency in ms."""
        if value is None:
            return "?"
        if self.name == "latency_ms":
            return f"{value:.4g} ms"
        return f"{int(value):,} {self.unit}"


COST = {
    "params": Cost("params", "parameters", "params", True),
    "macs": Cost("macs", "MACs per image", "MACs", True),
    # The latency of an untrained student equals a trained one's (same shapes, same kernels),
    # so it is measured before training too and an over-limit student is refused early.
    "latency_ms": Cost("latency_ms", "latency per image at batch 1, ms", "ms", True),
}


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna's study directions: maximize accuracy, minimize each cost."""
    return ["maximize", *["minimize"] * len(objectives)]


def metric_names(objectives: Sequence[str]) -> list[str]:
    """Optuna's metric names, the same words as the trial record's fields."""
    return [ACCURACY, *objectives]


def from_metric_names(names: Sequence[str] | None, n_values: int) -> tuple[str, ...] | None:
    """A stored study's cost objectives, or None when they are not kdsearch's.

    A study whose metric names were never set (a study made by hand) with two directions is
    read as kdsearch's original (accuracy, params).
    """
    if not names:
        return DEFAULT if n_values == 2 else None
    names = list(names)
    costs = tuple(names[1:])
    if names[0] != ACCURACY or not costs or len(set(costs)) != len(costs) \
            or any(c not in COSTS for c in costs):
        return None
    return costs


def costs_of(record: Any, objectives: Sequence[str]) -> tuple[float, ...] | None:
    """The record's value of each cost, or None when one is missing."""
    values = tuple(getattr(record, name) for name in objectives)
    return None if any(v is None for v in values) else tuple(float(v) for v in values)
