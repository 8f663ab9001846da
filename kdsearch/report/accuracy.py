"""The data step of the accuracy plots: validation accuracy against one setting.

The settings are the number of layers, the kernel size (CNNs) and, in a sweep, each other swept
parameter. Students are split into plain and distilled lines by `rows.kd_label`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import NamedTuple

from kdsearch.record import TeacherRecord
from kdsearch.report.rows import PLAIN, Row, Snapshot, kd_label
from kdsearch.search.sweep import NOT_SWEPT


@dataclass(frozen=True)
class Point:
    x: float
    values: list[float]  # validation accuracies of the trials at this setting
    tests: list[float]  # their test accuracies (reported, never selected on)
    numbers: list[int]  # their trial numbers
    archs: list[str]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def best(self) -> float:
        return max(self.values)


class AccuracyBy(NamedTuple):
    study_name: str
    key: str  # "layers", "kernel" or a parameter name
    label: str  # the x axis title
    groups: dict[str, list[Point]]  # line name -> points sorted by x
    statistic: str  # "mean" (a sweep: mean and spread over seeds) or "best" (a search)
    teacher: TeacherRecord | None


def _kernel(r: Row) -> int | None:
    """The kernel size of a CNN student whose conv layers all share one (else None)."""
    convs = (r.record.architecture or {}).get("convs") or []
    kernels = {c.get("kernel") for c in convs}
    return kernels.pop() if len(kernels) == 1 else None


def swept(done: list[Row]) -> list[str]:
    """The sampled parameters that take more than one value (alpha and the seed excepted)."""
    names = sorted({k for r in done for k in r.trial.params if k not in NOT_SWEPT})
    return [k for k in names if len({r.trial.params.get(k) for r in done}) > 1]


def accuracy_axes(snap: Snapshot) -> list[str]:
    """The settings to plot accuracy against: layers, kernel (CNNs), and a sweep's other axes."""
    axes = ["layers"]
    if snap.family == "cnn":
        axes.append("kernel")
    if snap.is_sweep:
        axes += [k for k in swept(snap.done) if k not in ("depth", "kernel", "convs_per_block")]
    return axes


def _x(r: Row, key: str) -> float | None:
    if key == "layers":
        return r.record.n_layers
    if key == "kernel":
        return _kernel(r)
    return r.trial.params.get(key)


def accuracy_by(snap: Snapshot, key: str) -> AccuracyBy:
    """Validation accuracy against one setting, one line for distilled and one for plain.

    In a sweep each point is the mean over the seeds at that setting, and a second swept
    parameter splits the lines; in a search each point is the best trial at that setting.
    """
    done = [r for r in snap.done if r.val_accuracy is not None]
    sweep = snap.is_sweep
    other = [k for k in swept(done) if k != key and not (
        key == "layers" and k in ("depth", "convs_per_block"))] if sweep else []
    cells: dict[str, dict[float, list[Row]]] = {}
    for r in done:
        x = _x(r, key)
        if x is None:
            continue
        line = kd_label(r.alpha)
        if other:
            line += ", " + ", ".join(f"{k}={r.trial.params.get(k)}" for k in other)
        cells.setdefault(line, {}).setdefault(x, []).append(r)
    groups = {
        line: [Point(x, [r.val_accuracy for r in rs], [r.test_accuracy for r in rs],
                     [r.number for r in rs], [r.arch for r in rs])
               for x, rs in sorted(by_x.items())]
        for line, by_x in sorted(cells.items(), key=lambda kv: (kv[0].startswith(PLAIN), kv[0]))
    }
    label = {"layers": "hidden layers" if snap.family == "mlp" else "conv layers",
             "kernel": "kernel (filter) size"}.get(key, key)
    return AccuracyBy(snap.study_name, key, label, groups, "mean" if sweep else "best",
                      snap.teacher)
