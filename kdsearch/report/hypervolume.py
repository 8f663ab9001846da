"""How much of the accuracy-versus-cost space the front covers, and how that grew.

The area is measured in decades of parameters x accuracy, so a front that halves the size of
its students gains as much at 1,000 params as at 1,000,000. A study on other costs
(`[search] objectives`) is measured the same way in decades of each cost: with one cost, the
same area with that cost on the x axis; with several, the exact volume in log10(cost) x ... x
accuracy, computed by Optuna's WFG (through kdsearch/optuna_internals.py). The reference
point is the teacher's cost (each cost the teacher has: params and MACs are in its record, its
latency is timed beside the students') and chance accuracy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from kdsearch import optuna_internals
from kdsearch.objectives import COST, FLOOR
from kdsearch.report.rows import Row, Snapshot


def hypervolume(points: list[tuple[float, float]], ref_params: float, ref_acc: float = 0.0,
                floor: float = 1.0) -> float:
    """Area dominated by (accuracy up, log10 cost down) points within the reference box.

    The cost is parameters unless the caller says otherwise; `floor` clamps it before the log.
    """
    pts = sorted((math.log10(max(p, floor)), a) for a, p in points
                 if a > ref_acc and p < ref_params)
    area, best = 0.0, ref_acc
    ref_x = math.log10(ref_params)
    for i, (x, acc) in enumerate(pts):
        best = max(best, acc)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_x
        area += (nxt - x) * (best - ref_acc)
    return area


def hypervolume_nd(points: list[tuple[float, tuple[float, ...]]], ref_costs: tuple[float, ...],
                   ref_acc: float = 0.0, floors: tuple[float, ...] | None = None) -> float:
    """Volume dominated by (accuracy up, log10 of each cost down) points within the reference
    box: exact, by Optuna's WFG implementation."""
    floors = floors or (1.0,) * len(ref_costs)
    inside = [(-a, *(math.log10(max(c, f)) for c, f in zip(costs, floors, strict=True)))
              for a, costs in points
              if a > ref_acc and all(c < r for c, r in zip(costs, ref_costs, strict=True))]
    if not inside:
        return 0.0
    ref = [-ref_acc, *(math.log10(max(r, f)) for r, f in zip(ref_costs, floors, strict=True))]
    return optuna_internals.hypervolume(inside, ref)


class HypervolumeHistory(NamedTuple):
    study_name: str
    numbers: list[int]  # trial numbers of complete trials, in order
    values: list[float]  # hypervolume of the front of all complete trials up to each
    ref_params: float  # the reference of the first cost (params, unless the study chose others)
    ref_acc: float
    reference: str  # the reference point, in words
    objectives: tuple[str, ...] = ("params",)  # the cost axes
    ref_costs: tuple[float, ...] = ()  # the reference of each cost

    @property
    def units(self) -> str:
        """What the hypervolume is measured in, for a subtitle or a sentence."""
        return " x ".join([*(f"log10({c})" for c in self.objectives), "accuracy"])


def _reference_cost(snap: Snapshot, done: list[Row], cost: str) -> tuple[float, str]:
    """The reference of one cost and how to say it: the teacher's when known (a student no
    cheaper than its teacher compresses nothing), else ten times the costliest student."""
    known = snap.teacher_cost(cost)
    if known:
        return float(known), f"the teacher's {COST[cost].format(known)}"
    largest = max((r.cost(cost) or 1 for r in done), default=1)
    return 10.0 * largest, f"10x the largest student ({COST[cost].format(10 * largest)})"


def hypervolume_reference(snap: Snapshot, done: list[Row]) -> tuple[tuple[float, ...], float, str]:
    """(each cost, accuracy) of the reference point and a sentence saying why.

    With a teacher: its costs and chance accuracy (1 / classes). Without one: ten times the
    largest student and accuracy 0.
    """
    teacher = snap.teacher
    if snap.objectives == ("params",):  # word for word what a params study always said
        if teacher is not None and teacher.params:
            classes = teacher.num_classes or 0
            acc = 1.0 / classes if classes else 0.0
            return ((float(teacher.params),), acc,
                    f"reference point: the teacher's {teacher.params:,} params and chance "
                    f"accuracy {acc:.3f}")
        largest = max((r.params or 1 for r in done), default=1)
        return ((10.0 * largest,), 0.0, f"reference point: 10x the largest student "
                f"({10 * largest:,} params) and accuracy 0")
    refs = [_reference_cost(snap, done, c) for c in snap.objectives]
    classes = teacher.num_classes if teacher is not None else 0
    acc = 1.0 / classes if classes else 0.0
    said = f"chance accuracy {acc:.3f}" if classes else "accuracy 0"
    return (tuple(v for v, _ in refs), acc,
            f"reference point: {', '.join(w for _, w in refs)} and {said}")


def hypervolume_history(snap: Snapshot) -> HypervolumeHistory:
    """The hypervolume of the front of complete trials, after each complete trial."""
    done = snap.done
    costs = snap.objectives
    ref_costs, ref_acc, reference = hypervolume_reference(snap, done)
    floors = tuple(FLOOR[c] for c in costs)
    numbers: list[int] = []
    values: list[float] = []
    front: list[tuple[float, tuple[float, ...]]] = []
    value = 0.0
    for r in done:
        acc, mine = r.val_accuracy, tuple(r.cost(c) for c in costs)
        numbers.append(r.number)
        # Only the front counts: a dominated trial leaves the hypervolume as it was, and the
        # front stays small, so the history costs O(trials x front) rather than O(trials^2).
        if not any(a >= acc and all(c <= m for c, m in zip(p, mine, strict=True))
                   for a, p in front):
            front = [(a, p) for a, p in front
                     if not (acc >= a and all(m <= c for c, m in zip(p, mine, strict=True)))]
            front.append((acc, mine))
            if len(costs) == 1:
                value = hypervolume([(a, p[0]) for a, p in front], ref_costs[0], ref_acc,
                                    floors[0])
            else:
                value = hypervolume_nd(front, ref_costs, ref_acc, floors)
        values.append(value)
    return HypervolumeHistory(snap.study_name, numbers, values, ref_costs[0], ref_acc, reference,
                              costs, ref_costs)
