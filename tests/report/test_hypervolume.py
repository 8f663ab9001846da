"""The hypervolume by hand, and its history over a study's trials."""

from __future__ import annotations

import math
import random

import pytest

from kdsearch.report.hypervolume import hypervolume, hypervolume_history
from kdsearch.report.rows import read_rows
from tests.helpers import hand_study


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
