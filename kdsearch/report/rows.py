"""The data step of every report: a study's trials read ONCE into plain rows.

`read_rows(study)` returns a `Snapshot`, the one object every table, file and figure is built
from. An export writes a CSV, a summary and several figures: reading the trials once costs one
database round trip instead of one per file (1.8 s of a 1,000-trial export), and with workers
still writing, every file describes the same moment of the study. The snapshot is passed
explicitly, so what a report reads is visible in its signature.

A study of the same name that kdsearch did not create (other objectives, or complete trials
without kdsearch's records) is refused here, in one line naming it, rather than failing later
as an IndexError or a format error inside a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from kdsearch import objectives
from kdsearch.errors import KdsearchError
from kdsearch.record import (
    KD,
    STUDY_DEFINITION,
    TEACHER_LATENCY,
    TeacherRecord,
    TrialRecord,
    study_attr,
    study_teacher,
)

# Below this weight the teacher's term is effectively absent. The KD loss is
# alpha * T^2 * KL + (1 - alpha) * CE, and the T^2 factor keeps the soft term's gradient on the
# scale of the hard term's, so alpha is roughly the share of the gradient that comes from the
# teacher: at alpha 0.01 it is 1%, and such a student trains as a plain one would. Reports draw
# and count it as plain; the exact alpha is still in every table and in the CSV.
KD_MIN_ALPHA = 0.05
PLAIN = f"plain (alpha < {KD_MIN_ALPHA})"
DISTILLED = f"distilled (alpha >= {KD_MIN_ALPHA})"


def is_distilled(alpha: float | None) -> bool:
    """True when the teacher carries at least `KD_MIN_ALPHA` of the loss."""
    return (alpha or 0.0) >= KD_MIN_ALPHA


def kd_label(alpha: float | None) -> str:
    return DISTILLED if is_distilled(alpha) else PLAIN


@dataclass(frozen=True)
class Row:
    """One trial as reports see it: its record, the sampled knobs and whether it is on the front."""

    number: int
    state: str
    val_accuracy: float | None
    test_accuracy: float | None
    params: int | None
    macs: int | None
    arch: str
    temperature: float | None
    alpha: float | None
    pareto: bool
    trial: FrozenTrial
    baseline: str = ""  # the label of a hand-picked student ([[search.baselines]])
    record: TrialRecord = field(default_factory=TrialRecord)
    latency_ms: float | None = None  # measured only in studies where latency counts

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    def cost(self, name: str) -> float | None:
        """Its value of one cost objective (`params`, `macs` or `latency_ms`)."""
        return getattr(self, name)


@dataclass(frozen=True)
class Snapshot:
    """Everything a report needs from storage, read at one moment."""

    study_name: str
    rows: tuple[Row, ...]  # every trial, by number
    teacher: TeacherRecord | None  # None for a study kdsearch has not annotated (yet)
    spec: dict[str, Any]  # the stored study spec as JSON; {} when absent
    objectives: tuple[str, ...] = objectives.DEFAULT  # the cost objective(s), from storage
    teacher_latency_ms: float | None = None  # the teacher timed as the students were

    @property
    def done(self) -> list[Row]:
        """Complete trials, by number."""
        return [r for r in self.rows if r.complete]

    @property
    def front(self) -> list[Row]:
        """Pareto-optimal trials, cheapest first on the first cost objective."""
        first = self.objectives[0]
        return sorted((r for r in self.rows if r.pareto),
                      key=lambda r: (r.cost(first) or 0, r.number))

    def teacher_cost(self, name: str) -> float | None:
        """The teacher's value of a cost objective, None when unknown (a teacher from a file
        may not say its params or MACs: 0 there)."""
        if name == "latency_ms":
            return self.teacher_latency_ms
        value = getattr(self.teacher, name, None) if self.teacher is not None else None
        return value or None

    @property
    def baselines(self) -> list[Row]:
        """Complete hand-picked students, on the front or not."""
        return [r for r in self.done if r.baseline]

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.rows)

    @property
    def is_sweep(self) -> bool:
        return (self.spec.get("search") or {}).get("sampler") == "grid"

    @property
    def family(self) -> str:
        return ((self.spec.get("student") or {}).get("space") or {}).get("family", "")


def pareto_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the complete trials no other beats on (accuracy up, every cost down).

    The same set as `study.best_trials`, without the deep copy of every trial that it makes.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if complete and len(complete[0].values) > 2:
        return _pareto_numbers_nd(complete)
    points = sorted((t.values[1], -t.values[0], t.number) for t in complete
                    if len(t.values) == 2)
    front: set[int] = set()
    best_acc, best_params = float("-inf"), None
    for params, neg_acc, number in points:
        acc = -neg_acc
        if acc > best_acc:
            front.add(number)
            best_acc, best_params = acc, params
        elif acc == best_acc and params == best_params:  # an exact tie is not dominated
            front.add(number)
    return front


def _pareto_numbers_nd(complete: list[FrozenTrial]) -> set[int]:
    """The front with several costs: each trial against every other, O(n^2) on a few hundred
    complete trials. An exact tie is not dominated, as in the two-objective sweep above."""
    pts = [((-t.values[0], *t.values[1:]), t.number) for t in complete]

    def dominates(a: tuple, b: tuple) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return {n for p, n in pts if not any(dominates(q, p) for q, _ in pts)}


def _check_kdsearch_study(study: optuna.Study, trials: list[FrozenTrial]) -> tuple[str, ...]:
    """The study's cost objectives; refuses, in one line naming the study, a study whose
    contents kdsearch did not write."""
    directions = tuple(study.directions)
    costs = objectives.from_metric_names(study.metric_names, len(directions))
    if costs is None or directions != (StudyDirection.MAXIMIZE,
                                       *[StudyDirection.MINIMIZE] * len(costs)):
        names = study.metric_names or [""] * len(directions)
        found = ", ".join(f"{d.name.lower()} {n}".strip()
                          for d, n in zip(directions, names, strict=False))
        raise KdsearchError(
            f"study '{study.study_name}' was not created by kdsearch: its objectives are "
            f"({found}), expected (maximize val_accuracy, minimize one or more of "
            f"{', '.join(objectives.COSTS)}); choose another --study-name")
    needed = ("val_accuracy", "test_accuracy", *dict.fromkeys(("params", *costs)))
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        a = TrialRecord.of(t)
        if any(getattr(a, k) is None for k in needed):
            raise KdsearchError(
                f"study '{study.study_name}' was not created by kdsearch: complete trial "
                f"{t.number} carries no {', '.join(needed[:-1])} and {needed[-1]} attributes; "
                "choose another --study-name")
    return costs


def read_rows(study: optuna.Study) -> Snapshot:
    """Read the study's trials and attributes once; the snapshot every report is built from."""
    trials = study.get_trials(deepcopy=False)
    costs = _check_kdsearch_study(study, trials)
    front = pareto_numbers(trials)
    rows = []
    for t in trials:
        a = TrialRecord.of(t)
        rows.append(Row(
            number=t.number, state=t.state.name,
            val_accuracy=a.val_accuracy, test_accuracy=a.test_accuracy,
            params=a.params, macs=a.macs, arch=a.arch_summary,
            temperature=KD.of(t.params).temperature, alpha=KD.of(t.params).alpha,
            pareto=t.number in front, trial=t, baseline=a.baseline, record=a,
            latency_ms=a.latency_ms,
        ))
    spec = study_attr(study, STUDY_DEFINITION)
    timed = study_attr(study, TEACHER_LATENCY)
    teacher_ms = timed.get("latency_ms") if isinstance(timed, dict) else None
    return Snapshot(study.study_name, tuple(rows), study_teacher(study),
                    spec if isinstance(spec, dict) else {}, costs,
                    float(teacher_ms) if isinstance(teacher_ms, (int, float)) else None)


# --- the Pareto plot's data step -----------------------------------------------------------


class ParetoData(NamedTuple):
    study_name: str
    done: list[Row]  # complete trials
    front: list[Row]  # Pareto-optimal trials, cheapest first
    teacher: TeacherRecord | None  # None when unknown
    baselines: list[Row] = []  # complete hand-picked students
    objectives: tuple[str, ...] = objectives.DEFAULT  # the cost axis (or axes) to draw
    teacher_costs: dict[str, float] = {}  # the teacher's known costs, by name


def pareto_data(snap: Snapshot) -> ParetoData:
    """The data step of the Pareto plot: complete trials, the front, the teacher."""
    known = {c: v for c in snap.objectives if (v := snap.teacher_cost(c)) is not None}
    return ParetoData(snap.study_name, snap.done, snap.front, snap.teacher, snap.baselines,
                      snap.objectives, known)


def smallest_match(target: Row, front: list[Row]) -> Row | None:
    """The smallest front student whose validation accuracy is at least `target`'s."""
    return next((r for r in sorted(front, key=lambda r: (r.params or 0, r.number))
                 if (r.val_accuracy or 0) >= (target.val_accuracy or 0)), None)
