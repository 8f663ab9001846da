"""The front, the sweep and every trial as tables: aligned text, JSON and CSV.

`best --format` picks one of `BEST_FORMATS`: `table` for people, `json` and `csv` for programs
(their keys are stable: see `FRONT_KEYS`).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

from kdsearch.report.accuracy import swept
from kdsearch.report.rows import Row, Snapshot, kd_label

BEST_FORMATS = ("table", "json", "csv")

# One front row for programs, in this order (JSON keys, CSV columns): the trial's number and
# Optuna objective values, the parameter count and MACs, both accuracies, the architecture (one
# line), the KD temperature and alpha, how reports label it ("plain ..." or "distilled ..."),
# and the hand-picked baseline's label ("" when it is not one).
FRONT_KEYS = ("number", "values", "params", "macs", "val_accuracy", "test_accuracy",
              "architecture", "temperature", "alpha", "kd", "baseline")


def best_table(snap: Snapshot) -> str:
    """The Pareto-optimal trials as an aligned text table, smallest first."""
    front = snap.front
    teacher = snap.teacher
    lines = []
    if teacher:
        params = f"{teacher.params:,}" if teacher.params else "unknown"  # a file may not say
        lines.append(f"teacher: {teacher.description}  params {params}  "
                     f"val_acc {teacher.val_accuracy:.4f}  test_acc {teacher.test_accuracy:.4f}")
    if not front:
        lines.append("no complete trials yet")
        return "\n".join(lines)
    header = f"{'trial':>5}  {'val_acc':>7}  {'test_acc':>8}  {'params':>10}  {'macs':>12}  " \
             f"{'T':>6}  {'alpha':>5}  architecture"
    lines += [f"Pareto front of '{snap.study_name}' ({len(front)} of "
              f"{snap.count('COMPLETE')} complete trials):", header]

    def line(r: Row) -> str:
        return (f"{r.number:>5}  {r.val_accuracy:>7.4f}  {r.test_accuracy:>8.4f}  "
                f"{r.params:>10,}  {r.macs or 0:>12,}  {r.temperature or 0:>6.2f}  "
                f"{r.alpha or 0:>5.2f}  {r.arch}" + (f"  [{r.baseline}]" if r.baseline else ""))

    lines += [line(r) for r in front]
    picked = [r for r in snap.baselines if not r.pareto]
    if picked:
        lines.append("hand-picked baselines, off the front:")
        lines += [line(r) for r in picked]
    return "\n".join(lines)


def front_records(snap: Snapshot) -> list[dict[str, Any]]:
    """The front, smallest first, as plain dicts with the keys `FRONT_KEYS`."""
    return [{"number": r.number, "values": list(r.trial.values), "params": r.params,
             "macs": r.macs, "val_accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
             "architecture": r.arch, "temperature": r.temperature, "alpha": r.alpha,
             "kd": kd_label(r.alpha), "baseline": r.baseline}
            for r in snap.front]


def best_json(snap: Snapshot) -> str:
    """The front as a JSON list (`[]` when nothing is complete)."""
    return json.dumps(front_records(snap), indent=2)


def best_csv(snap: Snapshot) -> str:
    """The front as CSV with a header row; `values` as `val_accuracy;params`."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FRONT_KEYS)
    for rec in front_records(snap):
        rec["values"] = ";".join(map(str, rec["values"]))
        w.writerow([rec[k] for k in FRONT_KEYS])
    return out.getvalue().rstrip("\n")


def best_text(snap: Snapshot, fmt: str = "table") -> str:
    """What `kdsearch best --format FMT` prints."""
    return {"table": best_table, "json": best_json, "csv": best_csv}[fmt](snap)


def write_trials_csv(snap: Snapshot, path: Path) -> None:
    """Every trial, one row each: its state, record and sampled parameters."""
    param_names = sorted({k for r in snap.rows for k in r.trial.params})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "pareto", "baseline", "val_accuracy", "test_accuracy", "params",
                    "macs", "architecture", "epochs", "train_seconds", "stopped_reason",
                    *[f"param_{p}" for p in param_names]])
        for r in snap.rows:
            a = r.record
            w.writerow([r.number, r.state, int(r.pareto), r.baseline, r.val_accuracy, r.test_accuracy,
                        r.params, r.macs, r.arch, a.epochs, a.train_seconds, a.stopped_reason,
                        *[r.trial.params.get(p) for p in param_names]])


def sweep_table(snap: Snapshot) -> str:
    """Every sweep setting with mean and spread of validation and test accuracy over seeds."""
    done = snap.done
    axes = swept(done)
    cells: dict[tuple, list[Row]] = {}
    for r in done:
        cells.setdefault((*(r.trial.params.get(k) for k in axes), r.alpha or 0.0), []).append(r)
    head = "  ".join(f"{k:>11}" for k in axes)
    lines = [f"{head}  {'alpha':>5}  {'seeds':>5}  {'val acc (mean ± sd)':>19}  "
             f"{'test acc (mean ± sd)':>20}  {'params':>9}  architecture"]

    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.4f} ± {sd:.4f}"

    for key in sorted(cells):
        rs = cells[key]
        vals = "  ".join(f"{v!s:>11}" for v in key[:-1])
        lines.append(f"{vals}  {key[-1]:>5.2f}  {len(rs):>5}  {ms([r.val_accuracy for r in rs]):>19}"
                     f"  {ms([r.test_accuracy for r in rs]):>20}  {rs[0].params:>9,}  {rs[0].arch}")
    return "\n".join(lines)
