"""A sampled point equal to a finished trial's is not trained again (search/repeats.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from kdsearch.options import Options
from kdsearch.record import TrialRecord, trial_attrs
from kdsearch.search.repeats import trained_twin
from kdsearch.spec import load_study, parse_study
from kdsearch.study.runner import run_study
from tests.helpers import mlp_study_text

WIDTH = {"width": CategoricalDistribution([4, 8])}
SPEC = parse_study(mlp_study_text(), Path("tiny.toml"))


def _study(*ended: tuple[TrialState, int, dict]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for state, width, attrs in ended:
        study.add_trial(create_trial(
            state=state, params={"width": width}, distributions=WIDTH, user_attrs=attrs,
            values=(0.5, 100.0) if state == TrialState.COMPLETE else None))
    return study


def _asked(study: optuna.Study, width: int, **attrs) -> optuna.Trial:
    study.enqueue_trial({"width": width}, user_attrs=trial_attrs(**attrs))
    trial = study.ask()
    trial.suggest_categorical("width", [4, 8])
    return trial


def test_a_point_repeats_a_complete_trial_or_one_stopped_by_the_rule():
    study = _study((TrialState.COMPLETE, 4, {}), (TrialState.PRUNED, 8, {"stopped_at_rung": 3}))
    assert trained_twin(_asked(study, 4), SPEC) == 0
    assert trained_twin(_asked(study, 8), SPEC) == 1


def test_a_new_point_or_a_twin_that_ended_for_its_own_reasons_is_trained():
    study = _study((TrialState.COMPLETE, 4, {}),
                   (TrialState.PRUNED, 8, {"stopped_reason": "out of memory on cuda"}),
                   (TrialState.FAIL, 8, {}))
    assert trained_twin(_asked(study, 8), SPEC) is None


def test_a_baseline_a_sweep_and_a_study_that_says_so_train_their_repeats():
    study = _study((TrialState.COMPLETE, 4, {}))
    assert trained_twin(_asked(study, 4, baseline="in production"), SPEC) is None
    sweep = SPEC.model_copy(update={"search": SPEC.search.model_copy(update={"sampler": "grid"})})
    assert trained_twin(_asked(study, 4), sweep) is None
    off = SPEC.model_copy(update={"search": SPEC.search.model_copy(update={"skip_repeats": False})})
    assert trained_twin(_asked(study, 4), off) is None


@pytest.mark.slow
def test_a_study_of_two_points_trains_two_and_skips_the_rest(tmp_path):
    # one depth, two widths, fixed T and alpha: six trials of random draws hold two students
    path = tmp_path / "two.toml"
    path.write_text(mlp_study_text(epochs=1, n_trials=6).replace(
        "depth = { low = 1, high = 2 }\nwidth = { choices = [4, 8, 16] }",
        "depth = 1\nwidth = { choices = [4, 8] }\ntemperature = 4.0\nalpha = 0.5"))
    opts = Options(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="two", n_trials=6,
                   timeout=None, data_dir=None, cache_dir=str(tmp_path / "cache"), device="cpu")
    logs: list[str] = []
    study = run_study(load_study(str(path)), opts, log=logs.append)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    repeats = study.get_trials(states=(TrialState.PRUNED,))
    assert len(complete) + len(repeats) == 6
    assert sorted(t.params["width"] for t in complete) == [4, 8]  # each trained once
    for t in repeats:
        twin = TrialRecord.of(t).repeat_of
        assert study.trials[twin].params == t.params and study.trials[twin].number < t.number
        assert t.user_attrs["stopped_reason"] == f"repeat of trial {twin}: the same student and settings"
        assert TrialRecord.of(t).val_curve == ()  # nothing trained
        assert TrialRecord.of(t).params == TrialRecord.of(study.trials[twin]).params  # its size
    assert any(f"{len(repeats)} pruned ({len(repeats)} repeats, not trained)" in line
               for line in logs)
