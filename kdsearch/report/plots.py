"""The drawing steps: a data step's NamedTuple in, a plotly figure out.

Nothing here reads storage; each function draws what `rows`, `hypervolume` or `accuracy`
built, so a figure can be tested by handing it rows.
"""

from __future__ import annotations

import plotly.graph_objects as go

from kdsearch.objectives import COST
from kdsearch.record import TrialRecord
from kdsearch.report.accuracy import AccuracyBy, Point
from kdsearch.report.compare import Front
from kdsearch.report.hypervolume import HypervolumeHistory
from kdsearch.report.rows import PLAIN, ParetoData, Row

FAINT = "rgba(90,110,160,0.35)"
FRONT = "#d62728"
TEACHER = "#2ca02c"
BASELINE = "#ff7f0e"
LINE_COLORS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
LAYOUT = dict(template="plotly_white", width=900, height=560)


def _hover(r: Row) -> str:
    latency = f" · {r.latency_ms:.4g} ms" if r.latency_ms is not None else ""
    return (f"trial {r.number}<br>{r.arch}<br>val acc {r.val_accuracy:.4f} · "
            f"test acc {r.test_accuracy:.4f}<br>{r.params:,} params · {r.macs:,} MACs{latency}<br>"
            f"T={r.temperature or 0:.2f} alpha={r.alpha or 0:.2f}")


def pareto_figure(data: ParetoData) -> go.Figure:
    """All trials faint, the front highlighted, hand-picked students as labelled diamonds and
    the teacher as a star: the references a user compares the front with.

    With one cost objective, accuracy against that cost (log axis) and the front joined as a
    staircase. With several, one panel per cost, accuracy shared: each panel is a projection
    of the same front, so its points are not joined (a student on the front may look beaten in
    one panel because it is cheaper on another cost).
    """
    from plotly.subplots import make_subplots

    costs = data.objectives
    joined = len(costs) == 1
    fig = make_subplots(rows=1, cols=len(costs), shared_yaxes=True, horizontal_spacing=0.06)
    for col, cost in enumerate(costs, start=1):
        first = col == 1  # one legend entry per kind of marker, not one per panel

        def x(rows: list[Row], cost: str = cost) -> list:
            return [r.cost(cost) for r in rows]

        fig.add_trace(go.Scatter(
            x=x(data.done), y=[r.val_accuracy for r in data.done], mode="markers",
            name="all trials", marker=dict(color=FAINT, size=8), showlegend=first,
            legendgroup="all", hovertext=[_hover(r) for r in data.done], hoverinfo="text"),
            row=1, col=col)
        fig.add_trace(go.Scatter(
            x=x(data.front), y=[r.val_accuracy for r in data.front],
            mode="lines+markers" if joined else "markers", name="Pareto front",
            line=dict(color=FRONT, width=2, shape="hv"), showlegend=first, legendgroup="front",
            marker=dict(color=FRONT, size=10), hovertext=[_hover(r) for r in data.front],
            hoverinfo="text"), row=1, col=col)
        if data.baselines:
            fig.add_trace(go.Scatter(
                x=x(data.baselines), y=[r.val_accuracy for r in data.baselines],
                mode="markers+text", name="hand-picked", text=[r.baseline for r in data.baselines],
                # Right of the diamond, free to reach into the margin: centred, the smallest
                # student's label was cut at the plot's left edge. Panels keep it centred, so
                # it stays out of the neighbour panel.
                textposition="top right" if joined else "top center", cliponaxis=not joined,
                marker=dict(symbol="diamond", size=13, color=BASELINE,
                            line=dict(width=1, color="black")),
                showlegend=first, legendgroup="baseline",
                hovertext=[f"{r.baseline}<br>{_hover(r)}" for r in data.baselines],
                hoverinfo="text"), row=1, col=col)
        teacher = data.teacher
        teacher_cost = data.teacher_costs.get(
            cost, (teacher.params or None) if teacher and cost == "params" else None)
        # A teacher file of unknown size (params or MACs 0) has no place on a log axis.
        if teacher and teacher_cost:
            # Labelled beside the star on one plot; in panels the label would cross into the
            # neighbour panel, and the legend names the star.
            fig.add_trace(go.Scatter(
                x=[teacher_cost], y=[teacher.val_accuracy],
                mode="markers+text" if joined else "markers",
                name="teacher", marker=dict(symbol="star", size=16, color=TEACHER),
                text=["teacher"], textposition="bottom left", showlegend=first,
                legendgroup="teacher",
                hovertext=[f"teacher<br>{teacher.description}<br>"
                           f"{COST[cost].format(teacher_cost)}<br>"
                           f"val acc {teacher.val_accuracy:.4f}"],
                hoverinfo="text"), row=1, col=col)
        fig.update_xaxes(title_text=f"{COST[cost].label} (log scale)", type="log", row=1, col=col)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    against = " and ".join(COST[c].label for c in costs)
    fig.update_layout(
        title=f"{data.study_name}: validation accuracy vs {against}"
              + ("" if joined else "<br><sup>one panel per cost objective; red: the "
                 "students on the front of all objectives</sup>"),
        legend=dict(orientation="h", x=0, y=-0.16, yanchor="top"),  # below: never on the data
        **{**LAYOUT, "width": LAYOUT["width"] if joined else 520 * len(costs)})
    return fig


def fronts_figure(fronts: list[Front], cost: str) -> go.Figure:
    """Each study's front as its own staircase on one cost axis: which space gives the better
    trade-off, at every size. Hand-picked students on a front are labelled diamonds."""
    fig = go.Figure()
    for i, front in enumerate(fronts):
        color = [FRONT, *LINE_COLORS][i % (len(LINE_COLORS) + 1)]
        points = sorted(front.points, key=lambda p: (p.costs[cost], p.number))
        fig.add_trace(go.Scatter(
            x=[p.costs[cost] for p in points], y=[p.val_accuracy for p in points],
            mode="lines+markers", name=f"{front.name} ({len(points)} on the front)",
            line=dict(color=color, width=2, shape="hv"), marker=dict(color=color, size=9),
            hovertext=[f"{front.name} trial {p.number}<br>{p.architecture}<br>val acc "
                       f"{p.val_accuracy:.4f} · test acc {p.test_accuracy:.4f}<br>"
                       f"{COST[cost].format(p.costs[cost])}" for p in points],
            hoverinfo="text"))
        picked = [p for p in points if p.baseline]
        if picked:
            fig.add_trace(go.Scatter(
                x=[p.costs[cost] for p in picked], y=[p.val_accuracy for p in picked],
                mode="markers+text", text=[p.baseline for p in picked],
                textposition="top right", cliponaxis=False,  # a label may reach into the margin
                marker=dict(symbol="diamond", size=13, color=color,
                            line=dict(width=1, color="black")),
                showlegend=False, hoverinfo="skip"))
    fig.update_layout(
        title=f"Pareto fronts: validation accuracy vs {COST[cost].label}",
        xaxis=dict(title=f"{COST[cost].label} (log scale)", type="log"),
        yaxis=dict(title="validation accuracy"),
        legend=dict(orientation="h", x=0, y=-0.16, yanchor="top"), **LAYOUT)
    return fig


def hypervolume_figure(data: HypervolumeHistory) -> go.Figure:
    """The front's hypervolume after each complete trial; flat stretches added nothing."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=data.numbers, y=data.values, mode="lines+markers", name="hypervolume",
        line=dict(color=FRONT, width=2, shape="hv"), marker=dict(size=6, color=FRONT),
        hovertemplate="after trial %{x}<br>hypervolume %{y:.4f}<extra></extra>"))
    fig.update_layout(
        title=dict(text=f"{data.study_name}: hypervolume of the Pareto front<br>"
                        f"<sup>{data.reference}; {'area' if len(data.objectives) == 1 else 'volume'}"
                        f" in {data.units}</sup>"),
        xaxis=dict(title="trial number", tickmode="linear", tick0=0,
                   dtick=trial_tick_step(data.numbers)),
        yaxis=dict(title="hypervolume", rangemode="tozero"),
        showlegend=False, **LAYOUT)
    return fig


def trial_tick_step(numbers: list[int], most: int = 12) -> int:
    """A whole-number tick step (1, 2, 5, 10, 20, ...) giving at most `most` ticks: trial
    numbers are integers, and plotly's own choice for a few trials is 0.5."""
    span = max(numbers, default=0) - min(numbers, default=0)
    step = 1
    while span / step > most:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    return step


def _point_hover(line: str, p: Point) -> str:
    archs = sorted(set(p.archs))
    return (f"{line}<br>x = {p.x}<br>{len(p.values)} trial(s): "
            f"{', '.join(map(str, p.numbers[:8]))}<br>val acc mean {p.mean:.4f} ± {p.std:.4f} "
            f"(best {p.best:.4f})<br>test acc mean {sum(p.tests) / len(p.tests):.4f}<br>"
            f"{'<br>'.join(archs[:4])}")


def accuracy_figure(data: AccuracyBy) -> go.Figure:
    """Validation accuracy against one setting: one line per group (distilled, plain, ...).

    A sweep draws each setting's mean with a +-1 sd bar over its seeds; a search draws the
    best trial at each setting, with every trial faint behind it.
    """
    fig = go.Figure()
    for i, (line, points) in enumerate(data.groups.items()):
        color = LINE_COLORS[i % len(LINE_COLORS)]
        dash = "dash" if line.startswith(PLAIN) else "solid"
        xs = [p.x for p in points]
        fig.add_trace(go.Scatter(  # every single trial, faint
            x=[p.x for p in points for _ in p.values], y=[v for p in points for v in p.values],
            mode="markers", marker=dict(color=color, size=6, opacity=0.3), showlegend=False,
            hoverinfo="skip", legendgroup=line))
        if data.statistic == "mean":
            ys = [p.mean for p in points]
            error = dict(type="data", array=[p.std for p in points], visible=True, width=6)
            name = f"{line} (mean ± sd)"
        else:
            ys, error, name = [p.best for p in points], None, f"{line} (best)"
        fig.add_trace(go.Scatter(
            x=xs, y=ys, error_y=error, mode="lines+markers", name=name, legendgroup=line,
            line=dict(color=color, width=2, dash=dash), marker=dict(color=color, size=9),
            hovertext=[_point_hover(line, p) for p in points], hoverinfo="text"))
    if data.teacher is not None:
        # The teacher is a dotted line named in the legend, below the plot: a label on the line
        # itself sits on whichever point reaches the teacher's accuracy.
        teacher = f"teacher {data.teacher.val_accuracy:.4f}"
        fig.add_hline(y=data.teacher.val_accuracy, line=dict(color=TEACHER, dash="dot"))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=teacher,
                                 line=dict(color=TEACHER, dash="dot"), hoverinfo="skip"))
    what = "mean over seeds" if data.statistic == "mean" else "best trial per setting"
    all_x = sorted({p.x for points in data.groups.values() for p in points})
    fig.update_layout(
        title=dict(text=f"{data.study_name}: validation accuracy vs {data.label}<br>"
                        f"<sup>{what}; faint dots are single trials</sup>"),
        xaxis=dict(title=data.label, tickmode="array", tickvals=all_x),
        yaxis=dict(title="validation accuracy"),
        legend=dict(orientation="h", x=0, y=-0.16, yanchor="top"),  # below: never on the data
        **LAYOUT)
    return fig


CURVE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#bbbbbb", "FAIL": "#d62728", "RUNNING": "#2ca02c"}


def learning_curves_figure(trials) -> go.Figure:
    """Every trial's validation accuracy per epoch, one line each, coloured by how it ended.

    optuna-dashboard draws intermediate values only for single-objective studies, so kdsearch
    draws its own curves for the dashboard (and for stopped trials, where they end shows the
    rung that stopped them).
    """
    fig = go.Figure()
    shown: set[str] = set()
    for t in trials:
        curve = list(t.intermediate_values.items()) or list(
            enumerate(TrialRecord.of(t).val_curve, start=1))
        if not curve:
            continue
        state = t.state.name
        fig.add_trace(go.Scatter(
            x=[step for step, _ in sorted(curve)], y=[v for _, v in sorted(curve)],
            mode="lines+markers", line=dict(color=CURVE_COLORS.get(state, "#999999"), width=1),
            marker=dict(size=4), name=state.lower(), legendgroup=state,
            showlegend=state not in shown, hovertemplate=f"trial {t.number}<br>epoch %{{x}}"
            "<br>val acc %{y:.4f}<extra></extra>"))
        shown.add(state)
    fig.update_layout(title="Learning curves: validation accuracy per epoch",
                      xaxis_title="epoch", yaxis_title="validation accuracy",
                      legend=dict(orientation="h", y=-0.2), template="plotly_white")
    fig.update_xaxes(dtick=1)
    return fig
