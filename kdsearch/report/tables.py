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
from kdsearch.study.console import duration, trial_seconds

BEST_FORMATS = ("table", "json", "csv")

# One front row for programs, in this order (JSON keys, CSV columns): the trial's number, its
# Optuna objective values and their names (val_accuracy, then the study's cost objectives), the
# parameter count, MACs and measured latency in ms (null / empty where the study does not time
# students), both accuracies, the architecture (one line), the KD temperature and alpha, how
# reports label it ("plain ..." or "distilled ..."), and the hand-picked baseline's label ("" when
# it is not one).
FRONT_KEYS = ("number", "values", "objectives", "params", "macs", "latency_ms", "val_accuracy",
              "test_accuracy", "architecture", "temperature", "alpha", "kd", "baseline")


def best_table(snap: Snapshot) -> str:
    """The Pareto-optimal trials as an aligned text table, cheapest first (first cost)."""
    front = snap.front
    teacher = snap.teacher
    timed = "latency_ms" in snap.objectives
    lines = []
    if teacher:
        params = f"{teacher.params:,}" if teacher.params else "unknown"  # a file may not say
        lines.append(f"teacher: {teacher.description}  params {params}  "
                     + (f"latency {snap.teacher_latency_ms:.4g} ms  "
                        if timed and snap.teacher_latency_ms is not None else "")
                     + f"val_acc {teacher.val_accuracy:.4f}  test_acc {teacher.test_accuracy:.4f}")
    if not front:
        lines.append("no complete trials yet")
        return "\n".join(lines)
    header = f"{'trial':>5}  {'val_acc':>7}  {'test_acc':>8}  {'params':>10}  {'macs':>12}  " \
             + (f"{'latency_ms':>10}  " if timed else "") + f"{'T':>6}  {'alpha':>5}  architecture"
    # A study on other costs says which; a params study reads as it always did.
    costs = "" if snap.objectives == ("params",) else f" on {' and '.join(snap.objectives)}"
    lines += [f"Pareto front of '{snap.study_name}'{costs} ({len(front)} of "
              f"{snap.count('COMPLETE')} complete trials):", header]

    def line(r: Row) -> str:
        latency = f"{r.latency_ms or 0:>10.4f}  " if timed else ""
        return (f"{r.number:>5}  {r.val_accuracy:>7.4f}  {r.test_accuracy:>8.4f}  "
                f"{r.params:>10,}  {r.macs or 0:>12,}  {latency}{r.temperature or 0:>6.2f}  "
                f"{r.alpha or 0:>5.2f}  {r.arch}" + (f"  [{r.baseline}]" if r.baseline else ""))

    lines += [line(r) for r in front]
    picked = [r for r in snap.baselines if not r.pareto]
    if picked:
        lines.append("hand-picked baselines, off the front:")
        lines += [line(r) for r in picked]
    return "\n".join(lines)


def front_records(snap: Snapshot) -> list[dict[str, Any]]:
    """The front, smallest first, as plain dicts with the keys `FRONT_KEYS`."""
    names = ["val_accuracy", *snap.objectives]
    return [{"number": r.number, "values": list(r.trial.values), "objectives": names,
             "params": r.params, "macs": r.macs, "latency_ms": r.latency_ms,
             "val_accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
             "architecture": r.arch, "temperature": r.temperature, "alpha": r.alpha,
             "kd": kd_label(r.alpha), "baseline": r.baseline}
            for r in snap.front]


def best_json(snap: Snapshot) -> str:
    """The front as a JSON list (`[]` when nothing is complete)."""
    return json.dumps(front_records(snap), indent=2)


def best_csv(snap: Snapshot) -> str:
    """The front as CSV with a header row; `values` and `objectives` joined by ';'
    (`0.8;100` and `val_accuracy;params`)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FRONT_KEYS)
    for rec in front_records(snap):
        rec["values"] = ";".join(map(str, rec["values"]))
        rec["objectives"] = ";".join(rec["objectives"])
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
                    "macs", "latency_ms", "architecture", "epochs", "train_seconds", "stopped_reason",
                    "stopped_at_rung", "started", "finished",
                    *[f"param_{p}" for p in param_names]])
        for r in snap.rows:
            a = r.record
            w.writerow([r.number, r.state, int(r.pareto), r.baseline, r.val_accuracy, r.test_accuracy,
                        r.params, r.macs, r.latency_ms, r.arch, a.epochs, a.train_seconds, a.stopped_reason,
                        a.stopped_at_rung, _when(r.trial.datetime_start),
                        _when(r.trial.datetime_complete),
                        *[r.trial.params.get(p) for p in param_names]])


def _when(moment) -> str:
    return moment.isoformat(timespec="seconds") if moment else ""


TRIALS_SHOWN = 400  # summary.md's table of every trial stops here; trials.csv has them all


def study_time(snap: Snapshot) -> str:
    """How long the study took: the wall clock from its first trial's start to its last trial's
    end (every worker together), and the trials' own seconds, so a reader sees both the wait
    and the work."""
    starts = [r.trial.datetime_start for r in snap.rows if r.trial.datetime_start]
    ends = [r.trial.datetime_complete for r in snap.rows if r.trial.datetime_complete]
    if not starts or not ends:
        return "No trial has finished yet."
    wall = (max(ends) - min(starts)).total_seconds()
    work = sum(trial_seconds(r.trial) or 0.0 for r in snap.rows)
    finished = sum(r.state in ("COMPLETE", "PRUNED", "FAIL") for r in snap.rows)
    stopped: dict[int, int] = {}
    for r in snap.rows:
        if r.record.stopped_at_rung is not None:
            stopped[r.record.stopped_at_rung] = stopped.get(r.record.stopped_at_rung, 0) + 1
    at = ", ".join(f"{n} after epoch {rung}" for rung, n in sorted(stopped.items()))
    # ended before any epoch: refused (over budget, unbuildable) or a repeat of a trained point
    repeats = sum(r.record.repeat_of is not None for r in snap.rows)
    refused = sum(r.state == "PRUNED" and not r.record.val_curve for r in snap.rows) - repeats
    return (f"{finished} trials finished in {duration(wall)} of wall time "
            f"({min(starts):%Y-%m-%d %H:%M} to {max(ends):%H:%M}), {duration(work)} of "
            f"trials in all (workers side by side); stopped early: {at or 'none'}; refused "
            f"before training: {refused}" + (f"; repeats not trained again: {repeats}."
                                             if repeats else "."))


def trials_markdown(snap: Snapshot, limit: int = TRIALS_SHOWN) -> str:
    """Every trial as a Markdown table: what was tried, where it was stopped and why, and what
    it cost, in trial order (the front is marked *)."""
    knobs = ("lr", "batch_size")
    shown = [k for k in knobs if any(k in r.trial.params for r in snap.rows)]
    head = (["trial", "state", "architecture", "params", "T", "alpha", *shown, "epochs",
             "val acc", "test acc", "s", "stopped"])
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h not in ("state", "architecture", "stopped") else "---"
                            for h in head) + "|"]
    for r in snap.rows[:limit]:
        a = r.record
        val = r.val_accuracy if r.val_accuracy is not None else (
            a.val_curve[-1] if a.val_curve else None)
        stopped = (f"after epoch {a.stopped_at_rung}" if a.stopped_at_rung is not None
                   else (a.stopped_reason or ""))
        seconds = trial_seconds(r.trial)
        cells = [f"{r.number}{' *' if r.pareto else ''}",
                 r.state.lower() + (f" ({r.baseline})" if r.baseline else ""),
                 f"`{r.arch}`" if r.arch else "",
                 f"{r.params:,}" if r.params else "",
                 f"{r.temperature:.2f}" if r.temperature is not None else "",
                 f"{r.alpha:.2f}" if r.alpha is not None else "",
                 *[f"{r.trial.params[k]:.3g}" if isinstance(r.trial.params.get(k), float)
                   else str(r.trial.params.get(k, "")) for k in shown],
                 str(a.epochs or ""),
                 f"{val:.4f}" if val is not None else "",
                 f"{r.test_accuracy:.4f}" if r.test_accuracy is not None else "",
                 f"{seconds:.0f}" if seconds is not None else "",
                 stopped.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    if len(snap.rows) > limit:
        lines.append(f"\n{len(snap.rows) - limit} more trials in trials.csv.")
    return "\n".join(lines)


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
