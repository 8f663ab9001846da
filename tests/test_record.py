"""record.py names every stored key: a typo fails loudly, and what is written reads back."""

from __future__ import annotations

import optuna
import pytest

from kdsearch.record import TeacherRecord, TrialRecord, set_trial, trial_attrs
from tests.helpers import teacher_summary


def test_a_key_that_is_not_a_record_field_is_refused():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    with pytest.raises(TypeError, match="val_acuracy"):
        set_trial(trial, val_acuracy=0.5)
    with pytest.raises(TypeError, match="label"):
        trial_attrs(label="seed student")
    assert trial.user_attrs == {}


def test_what_a_trial_stores_reads_back_typed():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    set_trial(trial, params=1234, val_curve=(0.5, 0.6), baseline="seed student")
    study.tell(trial, [0.6, 1234.0])
    record = TrialRecord.of(study.trials[0])
    assert record.params == 1234 and record.val_curve == (0.5, 0.6)
    assert record.baseline == "seed student" and record.val_accuracy is None


def test_teacher_record_round_trips_through_json():
    summary = teacher_summary()
    record = TeacherRecord.from_json(summary)
    assert record.summary() == summary
    assert TeacherRecord.from_json(record.to_json()) == record
