"""Reports read only from storage: the Pareto table, CSV, and plots.

Split as Optuna's own plots are: a data step (`pareto_data`) that turns a study into plain
rows, and drawing steps that turn rows into figures.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import math
import statistics
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdsearch.record import STUDY_SPEC, TeacherRecord, TrialRecord, study_teacher


@dataclass(frozen=True)
class Row:
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


class ParetoData(NamedTuple):
    study_name: str
    done: list[Row]  # complete trials
    front: list[Row]  # Pareto-optimal trials, smallest first
    teacher: TeacherRecord | None  # None when unknown
    baselines: list[Row] = []  # complete hand-picked students


def pareto_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the complete trials no other beats on (accuracy up, params down).

    The same set as `study.best_trials` for this study's two objectives, without the deep copy
    of every trial that it makes (a report reads the trials several times).
    """
    points = sorted(((t.values[1], -t.values[0], t.number) for t in trials
                     if t.state == TrialState.COMPLETE and t.values),)
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


_SNAPSHOT: contextvars.ContextVar[tuple[optuna.Study, list[Row]] | None] = contextvars.ContextVar(
    "kdsearch_rows_snapshot", default=None)


@contextlib.contextmanager
def snapshot(study: optuna.Study) -> Iterator[None]:
    """Read the trials once for everything inside the block.

    An export writes a CSV, a summary and several figures: each would otherwise read every
    trial from the database again (1.8 s of a 1,000-trial export), and with workers still
    writing, the files could describe different moments of the study.
    """
    token = _SNAPSHOT.set((study, _read_rows(study)))
    try:
        yield
    finally:
        _SNAPSHOT.reset(token)


def rows(study: optuna.Study) -> list[Row]:
    held = _SNAPSHOT.get()
    if held is not None and held[0] is study:
        return list(held[1])
    return _read_rows(study)


def _read_rows(study: optuna.Study) -> list[Row]:
    trials = study.get_trials(deepcopy=False)
    front = pareto_numbers(trials)
    out = []
    for t in trials:
        a = TrialRecord.of(t)
        out.append(Row(
            number=t.number, state=t.state.name,
            val_accuracy=a.val_accuracy, test_accuracy=a.test_accuracy,
            params=a.params, macs=a.macs, arch=a.arch_summary,
            temperature=t.params.get("temperature"), alpha=t.params.get("alpha"),
            pareto=t.number in front, trial=t, baseline=a.baseline,
        ))
    return out


def pareto_rows(study: optuna.Study) -> list[Row]:
    return sorted((r for r in rows(study) if r.pareto), key=lambda r: (r.params or 0, r.number))


def teacher_info(study: optuna.Study) -> TeacherRecord | None:
    return study_teacher(study)


def best_table(study: optuna.Study) -> str:
    """The Pareto-optimal trials as an aligned text table, smallest first."""
    with snapshot(study):  # the front, the count and the baselines from one read
        return _best_table(study)


def _count(n: int) -> str:
    """A teacher's size; 0 means a teacher file that does not say it."""
    return f"{n:,}" if n else "unknown"


def _best_table(study: optuna.Study) -> str:
    front = pareto_rows(study)
    teacher = teacher_info(study)
    lines = []
    if teacher:
        lines.append(f"teacher: {teacher.description}  params {_count(teacher.params)}  "
                     f"val_acc {teacher.val_accuracy:.4f}  test_acc {teacher.test_accuracy:.4f}")
    if not front:
        lines.append("no complete trials yet")
        return "\n".join(lines)
    header = f"{'trial':>5}  {'val_acc':>7}  {'test_acc':>8}  {'params':>10}  {'macs':>12}  " \
             f"{'T':>6}  {'alpha':>5}  architecture"
    lines += [f"Pareto front of '{study.study_name}' ({len(front)} of "
              f"{sum(r.state == 'COMPLETE' for r in rows(study))} complete trials):", header]
    def line(r: Row) -> str:
        return (f"{r.number:>5}  {r.val_accuracy:>7.4f}  {r.test_accuracy:>8.4f}  "
                f"{r.params:>10,}  {r.macs:>12,}  {r.temperature or 0:>6.2f}  "
                f"{r.alpha or 0:>5.2f}  {r.arch}" + (f"  [{r.baseline}]" if r.baseline else ""))

    lines += [line(r) for r in front]
    picked = [r for r in rows(study) if r.baseline and r.state == "COMPLETE" and not r.pareto]
    if picked:
        lines.append("hand-picked baselines, off the front:")
        lines += [line(r) for r in picked]
    return "\n".join(lines)


def write_csv(study: optuna.Study, path: Path) -> None:
    all_rows = rows(study)
    param_names = sorted({k for r in all_rows for k in r.trial.params})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "pareto", "baseline", "val_accuracy", "test_accuracy", "params",
                    "macs", "architecture", "epochs", "train_seconds", "stopped_reason",
                    *[f"param_{p}" for p in param_names]])
        for r in all_rows:
            a = TrialRecord.of(r.trial)
            w.writerow([r.number, r.state, int(r.pareto), r.baseline, r.val_accuracy, r.test_accuracy,
                        r.params, r.macs, r.arch, a.epochs, a.train_seconds, a.stopped_reason,
                        *[r.trial.params.get(p) for p in param_names]])


def pareto_data(study: optuna.Study) -> ParetoData:
    """The data step of the Pareto plot: complete trials, the front, the teacher."""
    done = [r for r in rows(study) if r.state == "COMPLETE"]
    return ParetoData(study.study_name, done, pareto_rows(study), teacher_info(study),
                      [r for r in done if r.baseline])


def pareto_figure(study: optuna.Study):
    """All trials faint, the front highlighted and joined, the teacher as a reference star."""
    from kdsearch.report.plots import pareto_figure as draw

    return draw(pareto_data(study))


class ImageExportError(Exception):
    pass


def write_image(fig, path: Path) -> None:
    """PNG/SVG through kaleido, which drives a Chrome; a clear error when none is found."""
    try:
        fig.write_image(str(path), scale=2 if path.suffix == ".png" else 1)
    except Exception as e:
        raise ImageExportError(
            f"{path.name} not written ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}); "
            "static images need a Chrome/Chromium: 'apt-get install -y chromium' "
            "(or 'plotly_get_chrome'), then run export again") from None


def figures(study: optuna.Study) -> dict[str, object]:
    """Every figure `export` writes, by file stem; plots with a single setting are left out."""
    from kdsearch.report import plots

    figs: dict[str, object] = {"pareto": plots.pareto_figure(pareto_data(study))}
    history = hypervolume_history(study)
    if history.numbers:
        figs["hypervolume"] = plots.hypervolume_figure(history)
    for key in accuracy_axes(study):
        data = accuracy_by(study, key)
        if len({p.x for points in data.groups.values() for p in points}) >= 2:
            figs[f"accuracy_vs_{key}"] = plots.accuracy_figure(data)
    return figs


@contextlib.contextmanager
def _one_browser() -> Iterator[None]:
    """One Chrome for every image: kaleido otherwise starts one per image (~2 s each).

    Starting the server returns at once; Chrome boots in its thread.
    """
    try:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
    except Exception:  # an older kaleido, or none: write_image starts its own or reports why
        yield
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        try:
            kaleido.stop_sync_server(silence_warnings=True)
        except Exception:
            pass


def export(study: optuna.Study, out: Path, log=print) -> list[Path]:
    """Write trials.csv, summary.md and each figure as .html, .png and .svg into `out`.

    HTML and CSV need nothing but plotly; when PNG/SVG fail (no Chrome for kaleido), the rest
    is still written and `ImageExportError` says how to get the images.
    """
    out.mkdir(parents=True, exist_ok=True)
    # Chrome boots (~2 s) in kaleido's server thread while the trials are read and the CSV and
    # HTML written, instead of before the first image.
    with _one_browser(), snapshot(study):
        return _export(study, out, log)


def _export(study: optuna.Study, out: Path, log) -> list[Path]:
    written: list[Path] = []
    write_csv(study, out / "trials.csv")
    written.append(out / "trials.csv")
    figs = figures(study)
    (out / "summary.md").write_text(summary_markdown(study, [f"{stem}.png" for stem in figs]))
    written.append(out / "summary.md")
    for stem, fig in figs.items():
        fig.write_html(out / f"{stem}.html", include_plotlyjs=True)
        written.append(out / f"{stem}.html")
    errors = []
    for stem, fig in figs.items():
        for suffix in (".png", ".svg"):
            if errors:  # one missing Chrome is enough to know; don't wait for it N times
                break
            try:
                write_image(fig, out / f"{stem}{suffix}")
                written.append(out / f"{stem}{suffix}")
            except ImageExportError as e:
                errors.append(str(e))
    for path in written:
        log(f"wrote {path}")
    if errors:
        raise ImageExportError(errors[0])
    return written


def smallest_match(target: Row, front: list[Row]) -> Row | None:
    """The smallest front student whose validation accuracy is at least `target`'s."""
    return next((r for r in sorted(front, key=lambda r: (r.params or 0, r.number))
                 if (r.val_accuracy or 0) >= (target.val_accuracy or 0)), None)


def summary_markdown(study: optuna.Study, images: list[str] | None = None) -> str:
    teacher = teacher_info(study)
    lines = [f"# {study.study_name}", ""]
    all_rows = rows(study)
    counts = {s: sum(r.state == s for r in all_rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    lines.append(f"{len(all_rows)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} "
                 f"stopped early or refused, {counts['FAIL']} failed.")
    lines.append("")
    if teacher:
        lines.append(f"Teacher `{teacher.description}`: {_count(teacher.params)} params, "
                     f"val acc {teacher.val_accuracy:.4f}, test acc {teacher.test_accuracy:.4f}.")
        lines.append("")
    lines += ["## Pareto front (selected on validation accuracy)", "",
              "| trial | val acc | test acc | params | MACs | compression | T | alpha | architecture |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in pareto_rows(study):
        ratio = f"{teacher.params / r.params:.1f}x" if teacher and teacher.params and r.params else ""
        lines.append(f"| {r.number} | {r.val_accuracy:.4f} | {r.test_accuracy:.4f} | {r.params:,} | "
                     f"{r.macs:,} | {ratio} | {r.temperature or 0:.2f} | {r.alpha or 0:.2f} | "
                     f"`{r.arch}` |")
    picked = [r for r in all_rows if r.baseline and r.state == "COMPLETE"]
    if picked:
        lines += ["", "## Hand-picked baselines", "",
                  "| baseline | trial | val acc | test acc | params | smallest student at least as "
                  "accurate (val) |", "|---|---:|---:|---:|---:|---|"]
        front = pareto_rows(study)
        for r in picked:
            rival = smallest_match(r, front)
            found = (f"trial {rival.number}: {rival.params:,} params "
                     f"({r.params / rival.params:.1f}x fewer), val acc {rival.val_accuracy:.4f}"
                     if rival and rival.number != r.number else "none smaller: it is on the front")
            lines.append(f"| {r.baseline} | {r.number} | {r.val_accuracy:.4f} | "
                         f"{r.test_accuracy:.4f} | {r.params:,} | {found} |")
    history = hypervolume_history(study)
    if history.numbers:
        lines += ["", f"Hypervolume of the front after the last trial: {history.values[-1]:.4f} "
                  f"(decades of parameters x accuracy; {history.reference})."]
    if is_sweep(study):
        lines += ["", "## Sweep", "", "```", sweep_table(study), "```"]
    if images:
        lines += ["", "## Figures", ""] + [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines) + "\n"


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


# --- hypervolume history ------------------------------------------------------------------


class HypervolumeHistory(NamedTuple):
    study_name: str
    numbers: list[int]  # trial numbers of complete trials, in order
    values: list[float]  # hypervolume of the front of all complete trials up to each
    ref_params: float
    ref_acc: float
    reference: str  # the reference point, in words


def hypervolume_reference(study: optuna.Study, done: list[Row]) -> tuple[float, float, str]:
    """(params, accuracy) of the reference point and a sentence saying why.

    With a teacher: its parameter count (a student no smaller than its teacher compresses
    nothing) and chance accuracy (1 / classes). Without one: ten times the largest student
    and accuracy 0.
    """
    teacher = teacher_info(study)
    if teacher is not None and teacher.params:
        classes = teacher.num_classes or 0
        acc = 1.0 / classes if classes else 0.0
        return (float(teacher.params), acc,
                f"reference point: the teacher's {teacher.params:,} params and chance "
                f"accuracy {acc:.3f}")
    largest = max((r.params or 1 for r in done), default=1)
    return (10.0 * largest, 0.0,
            f"reference point: 10x the largest student ({10 * largest:,} params) and accuracy 0")


def hypervolume_history(study: optuna.Study) -> HypervolumeHistory:
    """The hypervolume of the front of complete trials, after each complete trial."""
    done = sorted((r for r in rows(study) if r.state == "COMPLETE"), key=lambda r: r.number)
    ref_params, ref_acc, reference = hypervolume_reference(study, done)
    numbers, values, front = [], [], []
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
    return HypervolumeHistory(study.study_name, numbers, values, ref_params, ref_acc, reference)


# --- accuracy against one setting (layers, kernel size, a swept parameter) ------------------


PLAIN, DISTILLED = "plain (alpha = 0)", "distilled"


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


def is_sweep(study: optuna.Study) -> bool:
    spec = study.user_attrs.get(STUDY_SPEC) or {}
    return (spec.get("search") or {}).get("sampler") == "grid"


def _family(study: optuna.Study) -> str:
    spec = study.user_attrs.get(STUDY_SPEC) or {}
    return ((spec.get("student") or {}).get("space") or {}).get("family", "")


def _kernel(r: Row) -> int | None:
    """The kernel size of a CNN student whose conv layers all share one (else None)."""
    convs = (TrialRecord.of(r.trial).architecture or {}).get("convs") or []
    kernels = {c.get("kernel") for c in convs}
    return kernels.pop() if len(kernels) == 1 else None


def _swept(done: list[Row]) -> list[str]:
    from kdsearch.search.sweep import NOT_SWEPT

    names = sorted({k for r in done for k in r.trial.params if k not in NOT_SWEPT})
    return [k for k in names if len({r.trial.params.get(k) for r in done}) > 1]


def accuracy_axes(study: optuna.Study) -> list[str]:
    """The settings to plot accuracy against: layers, kernel (CNNs), and a sweep's other axes."""
    axes = ["layers"]
    if _family(study) == "cnn":
        axes.append("kernel")
    if is_sweep(study):
        done = [r for r in rows(study) if r.state == "COMPLETE"]
        axes += [k for k in _swept(done) if k not in ("depth", "kernel", "convs_per_block")]
    return axes


def _x(r: Row, key: str) -> float | None:
    if key == "layers":
        return TrialRecord.of(r.trial).n_layers
    if key == "kernel":
        return _kernel(r)
    return r.trial.params.get(key)


def accuracy_by(study: optuna.Study, key: str) -> AccuracyBy:
    """Validation accuracy against one setting, one line for distilled and one for plain.

    In a sweep each point is the mean over the seeds at that setting, and a second swept
    parameter splits the lines; in a search each point is the best trial at that setting.
    """
    done = [r for r in rows(study) if r.state == "COMPLETE" and r.val_accuracy is not None]
    sweep = is_sweep(study)
    other = [k for k in _swept(done) if k != key and not (
        key == "layers" and k in ("depth", "convs_per_block"))] if sweep else []
    cells: dict[str, dict[float, list[Row]]] = {}
    for r in done:
        x = _x(r, key)
        if x is None:
            continue
        line = PLAIN if (r.alpha or 0.0) == 0.0 else DISTILLED
        if other:
            line += ", " + ", ".join(f"{k}={r.trial.params.get(k)}" for k in other)
        cells.setdefault(line, {}).setdefault(x, []).append(r)
    groups = {
        line: [Point(x, [r.val_accuracy for r in rs], [r.test_accuracy for r in rs],
                     [r.number for r in rs], [r.arch for r in rs])
               for x, rs in sorted(by_x.items())]
        for line, by_x in sorted(cells.items(), key=lambda kv: (kv[0].startswith("plain"), kv[0]))
    }
    family = _family(study)
    label = {"layers": "hidden layers" if family == "mlp" else "conv layers",
             "kernel": "kernel (filter) size"}.get(key, key)
    return AccuracyBy(study.study_name, key, label, groups, "mean" if sweep else "best",
                      teacher_info(study))


def sweep_table(study: optuna.Study) -> str:
    """Every sweep setting with mean and spread of validation and test accuracy over seeds."""
    done = [r for r in rows(study) if r.state == "COMPLETE"]
    axes = _swept(done)
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
