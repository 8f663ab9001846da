"""The hypervolume by hand, and its history over a study's trials."""

from __future__ import annotations

import math
import random

import optuna
import pytest

from kdsearch.record import TEACHER
from kdsearch.report.hypervolume import hypervolume, hypervolume_history, hypervolume_nd
from kdsearch.report.rows import read_rows
from tests.helpers import hand_study, teacher_summary


def test_hypervolume_by_hand():
    # reference: 1000 params, accuracy 0; x axis is log10(params)
    assert hypervolume([], ref_params=1000) == 0
    assert hypervolume([(0.5, 10)], ref_params=1000) == pytest.approx((3 - 1) * 0.5)
    # a second point with more params and more accuracy adds the strip above the first
    two = hypervolume([(0.5, 10), (0.8, 100)], ref_params=1000)
    assert two == pytest.approx((2 - 1) * 0.5 + (3 - 2) * 0.8)
    # a dominated point adds nothing; points outside the reference box add nothing
    assert hypervolume([(0.5, 10), (0.8, 100), (0.4, 50), (0.9, 5000)], ref_params=1000) == two
    assert math.isclose(hypervolume([(0.8, 100), (0.5, 10)], 1000), two)


def test_hypervolume_history_by_hand():
    # Reference: the teacher's 1000 params, chance 0.5. (0.9, 10): 2 decades x 0.4 = 0.8;
    # (0.7, 100) is dominated; (0.95, 100) adds 1 decade x 0.05: 0.85.
    h = hypervolume_history(read_rows(hand_study(
        [(0.9, 10, 3, 0.5), (0.7, 100, 3, 0.5), (0.95, 100, 5, 0.5)])))
    assert h.numbers == [0, 1, 2]
    assert h.values == pytest.approx([0.8, 0.8, 0.85])
    assert (h.ref_params, h.ref_acc) == (1000.0, 0.5)
    assert "1,000 params" in h.reference and "0.500" in h.reference


def test_hypervolume_history_equals_the_hypervolume_of_all_trials_so_far():
    rng = random.Random(1)
    trials = [(rng.randint(50, 100) / 100, rng.choice([10, 30, 100, 300, 900]), 3, 0.5)
              for _ in range(60)]
    h = hypervolume_history(read_rows(hand_study(trials)))
    points = [(acc, params) for acc, params, _, _ in trials]
    brute = [hypervolume(points[: i + 1], h.ref_params, h.ref_acc) for i in range(len(points))]
    assert h.values == pytest.approx(brute)


def test_hypervolume_never_falls():
    snap = read_rows(hand_study([(0.6 + 0.3 * math.sin(i), 10 + 37 * i, 3, 0.5)
                                 for i in range(12)]))
    values = hypervolume_history(snap).values
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_hypervolume_of_several_costs_by_hand():
    # reference (1000, 1000) and accuracy 0; each cost axis in decades
    assert hypervolume_nd([], (1000, 1000)) == 0
    assert hypervolume_nd([(0.5, (10, 100))], (1000, 1000)) == pytest.approx(2 * 1 * 0.5)
    # a second box (1 x 2 x 0.8) overlapping the first in 1 x 1 x 0.5
    two = hypervolume_nd([(0.5, (10, 100)), (0.8, (100, 10))], (1000, 1000))
    assert two == pytest.approx(1.0 + 1.6 - 0.5)
    # outside the reference box on any cost: adds nothing
    assert hypervolume_nd([(0.5, (10, 100)), (0.9, (10, 5000))], (1000, 1000)) == pytest.approx(1)
    # a latency below 1 ms counts in decades too (no clamp at 1)
    assert hypervolume_nd([(0.5, (0.01,))], (1.0,), floors=(1e-9,)) == pytest.approx(2 * 0.5)


def test_a_macs_study_measures_against_the_teachers_macs():
    study = hand_study([(0.9, 10, 3, 0.5), (0.95, 100, 5, 0.5)])  # MACs are 10x the params
    study.set_metric_names(["val_accuracy", "macs"])
    h = hypervolume_history(read_rows(study))
    # teacher_summary: 10,000 MACs, 2 classes. (0.9, 100 MACs): 2 decades x 0.4; (0.95, 1000
    # MACs) adds 1 decade x 0.05.
    assert h.values == pytest.approx([0.8, 0.85])
    assert h.objectives == ("macs",) and "the teacher's 10,000 MACs" in h.reference


def test_two_costs_history_equals_the_volume_of_all_trials_so_far():
    rng = random.Random(2)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(["val_accuracy", "params", "macs"])
    study.set_user_attr(TEACHER, teacher_summary())
    points = []
    for _ in range(25):
        acc, params, macs = rng.randint(50, 100) / 100, rng.choice([10, 30, 100]), rng.choice(
            [100, 300, 3000])
        points.append((acc, (params, macs)))
        study.add_trial(optuna.trial.create_trial(
            values=[acc, params, macs], user_attrs={
                "val_accuracy": acc, "test_accuracy": acc, "params": params, "macs": macs}))
    h = hypervolume_history(read_rows(study))
    ref = h.ref_costs
    assert ref == (1000.0, 10_000.0)  # the teacher's params and MACs
    brute = [hypervolume_nd(points[: i + 1], ref, h.ref_acc) for i in range(len(points))]
    assert h.values == pytest.approx(brute) and h.values[-1] > 0
