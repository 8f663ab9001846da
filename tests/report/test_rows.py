"""The data step: trials read once, the front, the plain/distilled rule, foreign studies refused."""

from __future__ import annotations

import random

import optuna
import pytest

from kdsearch.errors import KdsearchError
from kdsearch.report.rows import DISTILLED, KD_MIN_ALPHA, PLAIN, kd_label, pareto_numbers, read_rows
from tests.helpers import hand_study


def test_pareto_numbers_match_optuna_best_trials():
    rng = random.Random(0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(300):  # coarse values, so ties and duplicates occur
        study.add_trial(optuna.trial.create_trial(
            values=[rng.randint(0, 20) / 20, rng.choice([10, 20, 50, 100, 200, 500])]))
    assert pareto_numbers(study.trials) == {t.number for t in study.best_trials}
    assert 1 < len(pareto_numbers(study.trials)) < 300


def test_snapshot_is_one_read_and_does_not_follow_the_study():
    study = hand_study([(0.5, 10, 3, 0.5), (0.8, 100, 3, 0.5), (0.4, 50, 3, 0.5)])
    snap = read_rows(study)
    assert [(r.val_accuracy, r.params) for r in snap.front] == [(0.5, 10), (0.8, 100)]
    study.add_trial(optuna.trial.create_trial(values=[0.9, 5]))  # after the read: not in it
    assert len(snap.rows) == 3 and snap.count("COMPLETE") == 3
    assert snap.teacher is not None and snap.teacher.description == "cnn teacher"
    assert snap.family == "cnn" and not snap.is_sweep


def test_a_tiny_alpha_is_plain():
    """alpha is about the teacher's share of the gradient (the T^2 factor keeps the soft term
    on the hard term's scale): at 0.01 a student trains as a plain one would."""
    assert kd_label(0.0) == kd_label(None) == kd_label(0.01) == PLAIN
    assert kd_label(KD_MIN_ALPHA) == kd_label(0.5) == DISTILLED


def test_a_study_with_other_objectives_is_refused_by_name():
    study = optuna.create_study(directions=["minimize"], study_name="theirs")
    study.add_trial(optuna.trial.create_trial(value=0.3))
    with pytest.raises(KdsearchError, match=r"study 'theirs' was not created by kdsearch: its "
                       r"objectives are \(minimize\)"):
        read_rows(study)


def test_a_study_without_kdsearch_records_is_refused_by_name():
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="theirs")
    study.add_trial(optuna.trial.create_trial(values=[0.9, 100]))
    with pytest.raises(KdsearchError, match="study 'theirs' .* trial 0 carries no val_accuracy"):
        read_rows(study)


def test_a_kdsearch_study_before_its_first_trial_reads_empty():
    """run-study creates the study before the teacher: interrupted there, it has no attributes."""
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="new")
    snap = read_rows(study)
    assert snap.rows == () and snap.teacher is None and snap.spec == {} and snap.front == []
