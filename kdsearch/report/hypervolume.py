"""How much of the accuracy-versus-size plane the front covers, and how that grew.

The area is measured in decades of parameters x accuracy, so a front that halves the size of
its students gains as much at 1,000 params as at 1,000,000.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from kdsearch.report.rows import Row, Snapshot


def hypervolume(points: list[tuple[float, int]], ref_params: float, ref_acc: float = 0.0) -> float:
    """Area dominated by (accuracy up, log10 params down) points within the reference box."""
    pts = sorted((math.log10(max(p, 1)), a) for a, p in points
                 if a > ref_acc and p < ref_params)
    area, best = 0.0, ref_acc
    ref_x = math.log10(ref_params)
    for i, (x, acc) in enumerate(pts):
        best = max(best, acc)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_x
        area += (nxt - x) * (best - ref_acc)
    return area


class HypervolumeHistory(NamedTuple):
    study_name: str
    numbers: list[int]  # trial numbers of complete trials, in order
    values: list[float]  # hypervolume of the front of all complete trials up to each
    ref_params: float
    ref_acc: float
    reference: str  # the reference point, in words


def hypervolume_reference(snap: Snapshot, done: list[Row]) -> tuple[float, float, str]:
    """(params, accuracy) of the reference point and a sentence saying why.

    With a teacher: its parameter count (a student no smaller than its teacher compresses
    nothing) and chance accuracy (1 / classes). Without one: ten times the largest student
    and accuracy 0.
    """
    teacher = snap.teacher
    if teacher is not None and teacher.params:
        classes = teacher.num_classes or 0
        acc = 1.0 / classes if classes else 0.0
        return (float(teacher.params), acc,
                f"reference point: the teacher's {teacher.params:,} params and chance "
                f"accuracy {acc:.3f}")
    largest = max((r.params or 1 for r in done), default=1)
    return (10.0 * largest, 0.0,
            f"reference point: 10x the largest student ({10 * largest:,} params) and accuracy 0")


def hypervolume_history(snap: Snapshot) -> HypervolumeHistory:
    """The hypervolume of the front of complete trials, after each complete trial."""
    done = snap.done
    ref_params, ref_acc, reference = hypervolume_reference(snap, done)
    numbers: list[int] = []
    values: list[float] = []
    front: list[tuple[float, int]] = []
    value = 0.0
    for r in done:
        point = (r.val_accuracy, r.params)
        numbers.append(r.number)
        # Only the front counts: a dominated trial leaves the hypervolume as it was, and the
        # front stays small, so the history costs O(trials x front) rather than O(trials^2).
        if not any(a >= point[0] and p <= point[1] for a, p in front):
            front = [(a, p) for a, p in front if not (point[0] >= a and point[1] <= p)]
            front.append(point)
            value = hypervolume(front, ref_params, ref_acc)
        values.append(value)
    return HypervolumeHistory(snap.study_name, numbers, values, ref_params, ref_acc, reference)
