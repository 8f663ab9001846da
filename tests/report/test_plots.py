"""The drawing steps, from data steps built on hand-made studies (no training)."""

from __future__ import annotations

from kdsearch.report.accuracy import accuracy_axes, accuracy_by
from kdsearch.report.hypervolume import hypervolume_history
from kdsearch.report.plots import accuracy_figure, hypervolume_figure, trial_tick_step
from kdsearch.report.rows import DISTILLED, PLAIN, read_rows
from tests.helpers import hand_study


def test_accuracy_by_kernel_splits_plain_and_distilled_and_takes_the_best():
    snap = read_rows(hand_study([(0.8, 50, 3, 0.7), (0.85, 60, 3, 0.2), (0.75, 70, 5, 0.5),
                                 (0.7, 50, 3, 0.0), (0.72, 70, 5, 0.0)]))
    assert accuracy_axes(snap) == ["layers", "kernel"]
    data = accuracy_by(snap, "kernel")
    assert data.statistic == "best" and list(data.groups) == [DISTILLED, PLAIN]
    assert [(p.x, p.best) for p in data.groups[DISTILLED]] == [(3, 0.85), (5, 0.75)]
    assert [(p.x, p.best) for p in data.groups[PLAIN]] == [(3, 0.7), (5, 0.72)]
    fig = accuracy_figure(data)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [list(t.y) for t in lines] == [[0.85, 0.75], [0.7, 0.72]]
    assert fig.layout.xaxis.title.text == "kernel (filter) size"


def test_a_student_with_alpha_001_is_drawn_with_the_plain_ones():
    data = accuracy_by(read_rows(hand_study([(0.9, 50, 3, 0.01), (0.8, 50, 5, 0.0)])), "kernel")
    assert list(data.groups) == [PLAIN]
    assert [p.best for p in data.groups[PLAIN]] == [0.9, 0.8]


def test_mlp_study_has_no_kernel_plot():
    assert accuracy_axes(read_rows(hand_study([(0.8, 50, 3, 0.5)], family="mlp"))) == ["layers"]


def test_the_teacher_is_named_in_the_legend_not_on_the_data():
    """A label on the teacher's line sat on the point that reached the teacher's accuracy."""
    fig = accuracy_figure(accuracy_by(read_rows(hand_study(
        [(0.97, 50, 3, 0.7), (0.8, 70, 5, 0.7)])), "kernel"))
    assert not fig.layout.annotations  # nothing drawn inside the plot area
    assert [s.y0 for s in fig.layout.shapes] == [0.97]  # the line itself stays
    named = [t for t in fig.data if t.name == "teacher 0.9700"]
    assert len(named) == 1 and named[0].showlegend is not False
    assert fig.layout.legend.y < 0  # the legend sits below the plot


def test_hypervolume_ticks_are_whole_trial_numbers():
    h = hypervolume_history(read_rows(hand_study([(0.9, 10, 3, 0.5), (0.95, 100, 5, 0.5)])))
    axis = hypervolume_figure(h).layout.xaxis
    assert (axis.tickmode, axis.tick0, axis.dtick) == ("linear", 0, 1)
    assert [trial_tick_step(list(range(n))) for n in (1, 13, 14, 30, 101, 1000)] == \
        [1, 1, 2, 5, 10, 100]
