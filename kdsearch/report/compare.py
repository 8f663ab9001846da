"""Fronts of several studies side by side: is the new search space better than the old one?

A front comes from a study in the same storage, or from a CSV that `kdsearch best --format csv`
wrote (a front saved from another storage or machine). Only the front is compared: it is what
a user chooses from, and a CSV holds nothing else.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

from kdsearch.errors import KdsearchError
from kdsearch.objectives import COSTS
from kdsearch.report.rows import Snapshot
from kdsearch.report.tables import FRONT_KEYS


class FrontPoint(NamedTuple):
    number: int
    costs: dict[str, float]  # params and MACs always; latency_ms where the study timed it
    val_accuracy: float
    test_accuracy: float
    architecture: str
    baseline: str  # the hand-picked label, "" for a searched student


class Front(NamedTuple):
    name: str  # the study's name, or the CSV's file name
    points: list[FrontPoint]


def snapshot_front(snap: Snapshot) -> Front:
    points = [FrontPoint(r.number, {k: v for k in COSTS if (v := r.cost(k)) is not None},
                         r.val_accuracy or 0.0, r.test_accuracy or 0.0, r.arch, r.baseline)
              for r in snap.front]
    return Front(snap.study_name, points)


def read_front_csv(path: Path) -> Front:
    """A front as `kdsearch best --format csv` writes it; anything else refused in one line."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else None
    except (OSError, UnicodeDecodeError) as e:
        raise KdsearchError(f"--compare {path}: cannot read it ({getattr(e, 'strerror', None) or e})"
                            ) from None
    missing = [k for k in FRONT_KEYS if header is None or k not in header]
    if not rows or missing:
        raise KdsearchError(f"--compare {path}: expected a front written by 'kdsearch best "
                            f"--format csv', found " + ("no rows" if not rows else
                                                        f"no column {missing[0]!r}"))
    points = []
    for line, row in enumerate(rows, start=2):
        try:
            costs = {k: float(row[k]) for k in COSTS if row[k]}
            points.append(FrontPoint(int(row["number"]), costs, float(row["val_accuracy"]),
                                     float(row["test_accuracy"]), row["architecture"],
                                     row["baseline"]))
        except (TypeError, ValueError):
            raise KdsearchError(f"--compare {path}: line {line} is not a front row "
                                f"(number {row.get('number')!r}, params {row.get('params')!r}, "
                                f"val_accuracy {row.get('val_accuracy')!r})") from None
    return Front(path.stem, points)


def resolve_front(source: str, load_snapshot) -> Front:
    """`source` is a CSV file (ends in .csv) or the name of a study in the export's storage;
    `load_snapshot(name)` reads the latter."""
    if source.lower().endswith(".csv"):
        path = Path(source)
        if not path.is_file():
            raise KdsearchError(f"--compare {source}: no such file")
        return read_front_csv(path)
    return snapshot_front(load_snapshot(source))


def check_cost(fronts: list[Front], cost: str) -> None:
    """Every front must know the cost drawn on the shared axis."""
    for front in fronts:
        lacking = [p.number for p in front.points if cost not in p.costs]
        if lacking:
            raise KdsearchError(f"--compare {front.name}: its front has no {cost} for trial "
                                f"{lacking[0]}, so it cannot share the plot's {cost} axis")
