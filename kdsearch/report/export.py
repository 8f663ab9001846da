"""`kdsearch export`: the trials read once, then every file written from that one snapshot.

The folder holds trials.csv, summary.md, and each figure as .html, .png and .svg (`fronts` too
when other studies' fronts are given to compare with). The HTML files share one plotly.js,
written once beside them as `plotly.min.js` (4.7 MB, instead of a copy inside every file): the
folder works offline and can be moved whole, but an HTML file copied out of it alone shows no
plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import optuna

from kdsearch.errors import KdsearchError
from kdsearch.report import images, plots
from kdsearch.report.accuracy import accuracy_axes, accuracy_by
from kdsearch.report.compare import Front, check_cost, snapshot_front
from kdsearch.report.hypervolume import HypervolumeHistory, hypervolume_history
from kdsearch.report.rows import Snapshot, pareto_data, read_rows
from kdsearch.report.summary import summary_markdown
from kdsearch.report.tables import write_trials_csv

PLOTLY_JS = "plotly.min.js"  # beside the HTML files, which reference it by this name


def figures(snap: Snapshot, history: HypervolumeHistory | None = None,
            compare: Sequence[Front] = ()) -> dict[str, object]:
    """Every figure `export` writes, by file stem; plots with a single setting are left out."""
    figs: dict[str, object] = {"pareto": plots.pareto_figure(pareto_data(snap))}
    if compare:
        figs["fronts"] = plots.fronts_figure([snapshot_front(snap), *compare], snap.objectives[0])
    history = history if history is not None else hypervolume_history(snap)
    if history.numbers:
        figs["hypervolume"] = plots.hypervolume_figure(history)
    for key in accuracy_axes(snap):
        data = accuracy_by(snap, key)
        if len({p.x for points in data.groups.values() for p in points}) >= 2:
            figs[f"accuracy_vs_{key}"] = plots.accuracy_figure(data)
    return figs


def _refuse_a_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise KdsearchError(f"--out {out}: expected a folder, found an existing file")


def _out_folder(out: Path) -> None:
    """Create the folder, or say in one line why it cannot be one."""
    _refuse_a_file(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KdsearchError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None


def export(study: optuna.Study, out: Path, log: Callable[[str], None] = print,
           compare: Sequence[Front] = ()) -> list[Path]:
    """Write trials.csv, summary.md and each figure as .html, .png and .svg into `out`;
    `compare` adds `fronts`: this study's front beside each of theirs.

    A study with no complete trial is refused (an empty plot says nothing) before anything is
    written. HTML and CSV need nothing but plotly; when PNG/SVG fail (no Chrome for kaleido),
    the rest is still written and `ImageExportError` says how to get the images.
    """
    _refuse_a_file(out)  # before reading the study: a typo is told at once
    # Chrome boots (~2 s) in kaleido's server thread while the trials are read and the CSV and
    # HTML written, instead of before the first image.
    with images.one_browser():
        snap = read_rows(study)
        if not snap.done:
            states = ", ".join(f"{snap.count(s)} {s.lower()}" for s in ("PRUNED", "FAIL", "RUNNING")
                               if snap.count(s))
            n = len(snap.rows)
            raise KdsearchError(f"study '{snap.study_name}' has no complete trial to export "
                                f"({n} trial{'' if n == 1 else 's'}"
                                f"{': ' + states if states else ''})")
        check_cost(list(compare), snap.objectives[0])
        _out_folder(out)
        return _write(snap, out, log, list(compare))


def _write(snap: Snapshot, out: Path, log: Callable[[str], None],
           compare: list[Front]) -> list[Path]:
    written: list[Path] = []
    write_trials_csv(snap, out / "trials.csv")
    written.append(out / "trials.csv")
    history = hypervolume_history(snap)
    figs = figures(snap, history, compare)
    (out / "summary.md").write_text(
        summary_markdown(snap, [f"{stem}.png" for stem in figs], history))
    written.append(out / "summary.md")
    from plotly.offline import get_plotlyjs

    # Written every time (never trusted from an earlier export): the bundle must match the
    # plotly that wrote the figures.
    (out / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")
    written.append(out / PLOTLY_JS)
    for stem, fig in figs.items():
        fig.write_html(out / f"{stem}.html", include_plotlyjs=PLOTLY_JS)
        written.append(out / f"{stem}.html")
    errors = []
    for stem, fig in figs.items():
        for suffix in (".png", ".svg"):
            if errors:  # one missing Chrome is enough to know; don't wait for it N times
                break
            try:
                images.write_image(fig, out / f"{stem}{suffix}")
                written.append(out / f"{stem}{suffix}")
            except images.ImageExportError as e:
                errors.append(str(e))
    for path in written:
        log(f"wrote {path}")
    if errors:
        raise images.ImageExportError(errors[0])
    return written
