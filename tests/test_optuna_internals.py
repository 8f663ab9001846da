"""Contract tests: the Optuna behaviour kdsearch relies on beyond Optuna's public API.

Each test drives Optuna through kdsearch/optuna_internals.py and checks the outcome kdsearch
needs, read back through public calls where Optuna has one. An Optuna that changes any of
these fails here; pyproject.toml pins Optuna to the versions that pass.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from kdsearch import optuna_internals
from kdsearch.options import Heartbeats
from kdsearch.search.tpe import KDSearchTPESampler
from kdsearch.study.storage import open_storage
from tests.helpers import BACKENDS, scratch_storage

# A front whose best two trials differ by scale: in raw parameters, MO-TPE's hypervolume
# choice of the two it models is 30k and 500k; in decades of parameters it is 3k and 10k.
# Behind it, dominated trials that TPE never models.
FRONT = [(2_000, 0.53), (3_000, 0.60), (10_000, 0.64), (30_000, 0.66), (500_000, 0.74)]
BEHIND = [(4_000, 0.40), (60_000, 0.50), (800_000, 0.60)] * 3
N_BELOW = 2


def _tpe_draws(sampler_class, seeds=range(12)) -> set[int]:
    """The students TPE draws: each front trial has a knob value of its own, so a draw names
    the trial it was modelled on (TPE draws near the trials it models, from no other)."""
    choices = [f"p{p}" for p, _ in FRONT] + ["behind"]
    knob = {"student": CategoricalDistribution(choices)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(directions=["maximize", "minimize"])
        for params, acc in FRONT + BEHIND:
            name = f"p{params}" if (params, acc) in FRONT else "behind"
            study.add_trial(create_trial(values=[acc, params], params={"student": name},
                                         distributions=knob))
        drawn = set()
        for seed in seeds:
            study.sampler = sampler_class(seed=seed, multivariate=True, group=True,
                                          constant_liar=True, n_startup_trials=2,
                                          gamma=lambda n: N_BELOW)
            trial = study.ask()
            drawn.add(int(trial.suggest_categorical("student", choices)[1:]))
            study.tell(trial, state=TrialState.FAIL)
    return drawn


def test_tpe_models_the_trials_ranked_in_decades_of_cost():
    """KDSearchTPESampler shows TPE each cost as log10(cost) through `TrialsView`. If TPE read
    its trials some other way, or chose the trials it models differently, the draws move."""
    assert _tpe_draws(optuna.samplers.TPESampler) <= {30_000, 500_000}  # raw parameters
    assert _tpe_draws(KDSearchTPESampler) <= {3_000, 10_000}  # decades


def test_the_view_changes_only_what_the_sampler_reads():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(values=[0.5, 1000.0], params={}, distributions={}))

    def halved(t):
        seen = t.__class__.__new__(t.__class__)
        seen.__dict__.update(t.__dict__)
        seen.values = [t.values[0], t.values[1] / 2]
        return seen

    view = optuna_internals.TrialsView(study, halved)
    assert [t.values for t in view.get_trials(deepcopy=False)] == [[0.5, 500.0]]
    assert [t.values for t in view.trials] == [[0.5, 500.0]]
    assert view.directions == study.directions and view.study_name == study.study_name
    assert study.trials[0].values == [0.5, 1000.0]


def test_ids_are_the_ones_public_storage_calls_take(tmp_path):
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="ids",
                                directions=["maximize", "minimize"])
    study.ask()
    trial = study.ask()
    sid = storage.get_study_id_from_name("ids")
    assert optuna_internals.study_id(study) == sid
    assert optuna_internals.trial_id(trial) == \
        storage.get_trial_id_from_study_id_trial_number(sid, trial.number)
    assert optuna_internals.trial_id(study.trials[1]) == optuna_internals.trial_id(trial)
    assert storage.get_trial(optuna_internals.trial_id(trial)).number == 1


def test_study_system_attrs_persist_apart_from_user_attrs(tmp_path):
    url = f"sqlite:///{tmp_path / 'attrs.db'}"
    study = optuna.create_study(storage=url, study_name="attrs")
    optuna_internals.set_study_system_attr(study, "study_file", "x" * 5_000)
    optuna_internals.set_study_system_attr(study, "teacher", {"params": 12})
    again = optuna.load_study(study_name="attrs", storage=url)
    stored = optuna_internals.study_system_attrs(again)
    assert stored["study_file"] == "x" * 5_000 and stored["teacher"] == {"params": 12}
    assert again.user_attrs == {}
    summary, = optuna.get_all_study_summaries(url)
    assert summary.user_attrs == {}  # what `optuna studies` prints stays short


@pytest.mark.parametrize(("distribution", "inside", "outside"), [
    (IntDistribution(4, 64, step=4), [4, 8, 64], [2, 6, 68, 0]),
    (IntDistribution(1, 100, log=True), [1, 37, 100], [0, 101]),
    (FloatDistribution(0.0, 1.0), [0.0, 0.5, 1.0], [-0.1, 1.5]),
    (FloatDistribution(0.0, 1.0, step=0.25), [0.25, 0.75], [0.3, 1.25]),
    (CategoricalDistribution(["mlp", "cnn", 3]), ["mlp", 3], ["resnet", 4, None]),
])
def test_holds_says_which_values_a_trial_could_suggest(distribution, inside, outside):
    assert all(optuna_internals.holds(distribution, v) for v in inside)
    assert not any(optuna_internals.holds(distribution, v) for v in outside)


@pytest.mark.parametrize("backend", BACKENDS)
def test_silent_running_trials_are_the_running_ones_that_never_beat(backend, tmp_path):
    with warnings.catch_warnings(), scratch_storage(backend, tmp_path) as url:
        warnings.simplefilter("ignore", UserWarning)  # Optuna: heartbeats expect optimize()
        storage = open_storage(url, Heartbeats(60, 120))
        study = optuna.create_study(storage=storage, study_name="beats",
                                    directions=["maximize", "minimize"])
        beating, silent, done = study.ask(), study.ask(), study.ask()
        storage.record_heartbeat(optuna_internals.trial_id(beating))
        study.tell(done, [0.5, 1.0])
        later = datetime.now() + timedelta(seconds=1)
        found = optuna_internals.silent_running_trials(storage, study, started_before=later)
        assert found == [optuna_internals.trial_id(silent)]
        long_ago = datetime.now() - timedelta(days=1)
        assert optuna_internals.silent_running_trials(storage, study, long_ago) == []
        storage.engine.dispose()


def test_hypervolume_is_exact():
    # two boxes of 2 overlapping in 1: (3-1)(3-2) + (3-2)(3-1) - 1
    assert optuna_internals.hypervolume([[1, 2], [2, 1]], [3, 3]) == pytest.approx(3.0)
    assert optuna_internals.hypervolume([[0, 0, 0]], [1, 2, 3]) == pytest.approx(6.0)
    # 2x1x1 and 1x2x2 overlapping in a unit cube
    assert optuna_internals.hypervolume([[0, 1, 1], [1, 0, 0]], [2, 2, 2]) == pytest.approx(5.0)
    # a dominated point adds nothing
    assert optuna_internals.hypervolume([[0, 0], [1, 1]], [2, 2]) == pytest.approx(4.0)
