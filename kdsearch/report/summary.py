"""summary.md: the study in a page of Markdown (counts, teacher, front, baselines, figures)."""

from __future__ import annotations

from pathlib import Path

from kdsearch.report.hypervolume import HypervolumeHistory, hypervolume_history
from kdsearch.report.rows import KD_MIN_ALPHA, Snapshot, smallest_match
from kdsearch.report.tables import study_time, sweep_table, trials_markdown


def summary_markdown(snap: Snapshot, images: list[str] | None = None,
                     history: HypervolumeHistory | None = None) -> str:
    """The summary page; `history` is passed when the caller computed it already."""
    teacher = snap.teacher
    lines = [f"# {snap.study_name}", ""]
    counts = {s: snap.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    lines.append(f"{len(snap.rows)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} "
                 f"stopped early, refused or repeats, {counts['FAIL']} failed.")
    lines.append("")
    if teacher:
        params = f"{teacher.params:,}" if teacher.params else "unknown"  # a file may not say
        lines.append(f"Teacher `{teacher.description}`: {params} params, "
                     f"val acc {teacher.val_accuracy:.4f}, test acc {teacher.test_accuracy:.4f}.")
        lines.append("")
    front = snap.front
    timed = "latency_ms" in snap.objectives
    if snap.objectives != ("params",):
        lines += [f"Objectives: validation accuracy (maximized) and "
                  f"{' and '.join(snap.objectives)} (minimized).", ""]
    lines += ["## Pareto front (selected on validation accuracy)", "",
              "| trial | val acc | test acc | params | MACs | " + ("latency (ms) | " if timed else "")
              + "compression | T | alpha | architecture |",
              "|---:|---:|---:|---:|---:|" + ("---:|" if timed else "") + "---:|---:|---:|---|"]
    for r in front:
        ratio = f"{teacher.params / r.params:.1f}x" if teacher and teacher.params and r.params else ""
        latency = f"{r.latency_ms:.4g} | " if timed and r.latency_ms is not None else (
            "| " if timed else "")
        lines.append(f"| {r.number} | {r.val_accuracy:.4f} | {r.test_accuracy:.4f} | {r.params:,} | "
                     f"{r.macs or 0:,} | {latency}{ratio} | {r.temperature or 0:.2f} | "
                     f"{r.alpha or 0:.2f} | `{r.arch}` |")
    picked = snap.baselines
    if picked:
        lines += ["", "## Hand-picked baselines", "",
                  "| baseline | trial | val acc | test acc | params | smallest student at least as "
                  "accurate (val) |", "|---|---:|---:|---:|---:|---|"]
        for r in picked:
            rival = smallest_match(r, front)
            found = (f"trial {rival.number}: {rival.params:,} params "
                     f"({r.params / rival.params:.1f}x fewer), val acc {rival.val_accuracy:.4f}"
                     if rival and rival.number != r.number else "none smaller: it is on the front")
            lines.append(f"| {r.baseline} | {r.number} | {r.val_accuracy:.4f} | "
                         f"{r.test_accuracy:.4f} | {r.params:,} | {found} |")
    history = history if history is not None else hypervolume_history(snap)
    if history.numbers:
        units = ("decades of parameters x accuracy" if snap.objectives == ("params",)
                 else history.units)
        lines += ["", f"Hypervolume of the front after the last trial: {history.values[-1]:.4f} "
                  f"({units}; {history.reference})."]
    if snap.is_sweep:
        lines += ["", "## Sweep", "", "```", sweep_table(snap), "```"]
    if snap.rows:
        lines += ["", "## Every trial", "", study_time(snap), "", trials_markdown(snap)]
    if images:
        lines += ["", "## Figures", "",
                  f"Plots draw students with alpha < {KD_MIN_ALPHA} as plain: their teacher term "
                  f"carries under {KD_MIN_ALPHA:.0%} of the loss.", ""]
        lines += [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines) + "\n"
