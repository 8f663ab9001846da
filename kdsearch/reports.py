"""Reports read only from storage: the Pareto table, CSV, and plots.

Split as Optuna's own plots are: a data step (`pareto_data`) that turns a study into plain
rows, and drawing steps that turn rows into figures.
"""

from __future__ import annotations

import contextlib
import csv
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState


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


def rows(study: optuna.Study) -> list[Row]:
    trials = study.get_trials(deepcopy=False)
    front = {t.number for t in study.best_trials} if any(
        t.state == TrialState.COMPLETE for t in trials) else set()
    out = []
    for t in trials:
        a = t.user_attrs
        out.append(Row(
            number=t.number, state=t.state.name,
            val_accuracy=a.get("val_accuracy"), test_accuracy=a.get("test_accuracy"),
            params=a.get("params"), macs=a.get("macs"), arch=a.get("arch_summary", ""),
            temperature=t.params.get("temperature"), alpha=t.params.get("alpha"),
            pareto=t.number in front, trial=t,
        ))
    return out


def pareto_rows(study: optuna.Study, all_rows: list[Row] | None = None) -> list[Row]:
    all_rows = rows(study) if all_rows is None else all_rows
    return sorted((r for r in all_rows if r.pareto), key=lambda r: (r.params or 0, r.number))


def teacher_info(study: optuna.Study) -> dict:
    return dict(study.user_attrs.get("teacher", {}))


def best_table(study: optuna.Study) -> str:
    """The Pareto-optimal trials as an aligned text table, smallest first."""
    all_rows = rows(study)  # read once: each read fetches every trial from storage
    front = pareto_rows(study, all_rows)
    teacher = teacher_info(study)
    lines = []
    if teacher:
        lines.append(f"teacher: {teacher.get('description', '?')}  params {teacher['params']:,}  "
                     f"val_acc {teacher['val_accuracy']:.4f}  test_acc {teacher['test_accuracy']:.4f}")
    if not front:
        lines.append("no complete trials yet")
        return "\n".join(lines)
    header = f"{'trial':>5}  {'val_acc':>7}  {'test_acc':>8}  {'params':>10}  {'macs':>12}  " \
             f"{'T':>6}  {'alpha':>5}  architecture"
    lines += [f"Pareto front of '{study.study_name}' ({len(front)} of "
              f"{sum(r.state == 'COMPLETE' for r in all_rows)} complete trials):", header]
    for r in front:
        lines.append(f"{r.number:>5}  {r.val_accuracy:>7.4f}  {r.test_accuracy:>8.4f}  "
                     f"{r.params:>10,}  {r.macs:>12,}  {r.temperature or 0:>6.2f}  "
                     f"{r.alpha or 0:>5.2f}  {r.arch}")
    return "\n".join(lines)


def write_csv(study: optuna.Study, path: Path, all_rows: list[Row] | None = None) -> None:
    all_rows = rows(study) if all_rows is None else all_rows
    param_names = sorted({k for r in all_rows for k in r.trial.params})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "pareto", "val_accuracy", "test_accuracy", "params",
                    "macs", "architecture", "epochs", "train_seconds", "stopped_reason",
                    *[f"param_{p}" for p in param_names]])
        for r in all_rows:
            a = r.trial.user_attrs
            w.writerow([r.number, r.state, int(r.pareto), r.val_accuracy, r.test_accuracy,
                        r.params, r.macs, r.arch, a.get("epochs"), a.get("train_seconds"),
                        a.get("stopped_reason", ""),
                        *[r.trial.params.get(p) for p in param_names]])


def _hover(r: Row) -> str:
    return (f"trial {r.number}<br>{r.arch}<br>val acc {r.val_accuracy:.4f} · "
            f"test acc {r.test_accuracy:.4f}<br>{r.params:,} params · {r.macs:,} MACs<br>"
            f"T={r.temperature or 0:.2f} alpha={r.alpha or 0:.2f}")


def pareto_figure(study: optuna.Study, all_rows: list[Row] | None = None):
    """All trials faint, the front highlighted and joined, the teacher as a reference star."""
    import plotly.graph_objects as go

    all_rows = rows(study) if all_rows is None else all_rows
    done = [r for r in all_rows if r.state == "COMPLETE"]
    front = pareto_rows(study, all_rows)
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[r.params for r in done], y=[r.val_accuracy for r in done], mode="markers",
        name="all trials", marker=dict(color="rgba(90,110,160,0.35)", size=8),
        hovertext=[_hover(r) for r in done], hoverinfo="text"))
    fig.add_trace(go.Scatter(
        x=[r.params for r in front], y=[r.val_accuracy for r in front], mode="lines+markers",
        name="Pareto front", line=dict(color="#d62728", width=2, shape="hv"),
        marker=dict(color="#d62728", size=10), hovertext=[_hover(r) for r in front],
        hoverinfo="text"))
    teacher = teacher_info(study)
    if teacher:
        fig.add_trace(go.Scatter(
            x=[teacher["params"]], y=[teacher["val_accuracy"]], mode="markers+text",
            name="teacher", marker=dict(symbol="star", size=16, color="#2ca02c"),
            text=["teacher"], textposition="bottom left",
            hovertext=[f"teacher<br>{teacher.get('description', '')}<br>"
                       f"{teacher['params']:,} params<br>val acc {teacher['val_accuracy']:.4f}"],
            hoverinfo="text"))
    fig.update_layout(
        title=f"{study.study_name}: validation accuracy vs parameters",
        xaxis=dict(title="parameters (log scale)", type="log"),
        yaxis=dict(title="validation accuracy"), template="plotly_white",
        width=900, height=560, legend=dict(x=0.01, y=0.99))
    return fig


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


@contextlib.contextmanager
def _one_browser() -> Iterator[None]:
    """One Chrome for both images: kaleido otherwise starts one per image (~2 s each)."""
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
    """Write pareto.html/.png, trials.csv and summary.md into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    all_rows = rows(study)  # read once: each read fetches every trial from storage
    write_csv(study, out / "trials.csv", all_rows)
    written.append(out / "trials.csv")
    fig = pareto_figure(study, all_rows)
    fig.write_html(out / "pareto.html", include_plotlyjs=True)
    written.append(out / "pareto.html")
    (out / "summary.md").write_text(summary_markdown(study, all_rows))
    written.append(out / "summary.md")
    errors = []
    with _one_browser():
        for suffix in (".png", ".svg"):
            try:
                write_image(fig, out / f"pareto{suffix}")
                written.append(out / f"pareto{suffix}")
            except ImageExportError as e:
                errors.append(str(e))
    for path in written:
        log(f"wrote {path}")
    if errors:
        raise ImageExportError(errors[0])
    return written


def summary_markdown(study: optuna.Study, all_rows: list[Row] | None = None) -> str:
    teacher = teacher_info(study)
    lines = [f"# {study.study_name}", ""]
    all_rows = rows(study) if all_rows is None else all_rows
    counts = {s: sum(r.state == s for r in all_rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    lines.append(f"{len(all_rows)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} "
                 f"stopped early or refused, {counts['FAIL']} failed.")
    lines.append("")
    if teacher:
        lines.append(f"Teacher `{teacher.get('description', '?')}`: {teacher['params']:,} params, "
                     f"val acc {teacher['val_accuracy']:.4f}, test acc {teacher['test_accuracy']:.4f}.")
        lines.append("")
    lines += ["## Pareto front (selected on validation accuracy)", "",
              "| trial | val acc | test acc | params | MACs | compression | T | alpha | architecture |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in pareto_rows(study, all_rows):
        ratio = f"{teacher['params'] / r.params:.1f}x" if teacher and r.params else ""
        lines.append(f"| {r.number} | {r.val_accuracy:.4f} | {r.test_accuracy:.4f} | {r.params:,} | "
                     f"{r.macs:,} | {ratio} | {r.temperature or 0:.2f} | {r.alpha or 0:.2f} | "
                     f"`{r.arch}` |")
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
