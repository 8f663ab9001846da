"""kdsearch's TPE: trials ranked in decades of cost, stored curves out of its sight.

tests/test_optuna_internals.py checks that Optuna's TPE acts on the ranking shown here.
"""

import math
import warnings

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from kdsearch import optuna_internals
from kdsearch.search.tpe import KDSearchTPESampler, as_ranked


def _study(sampler=None) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)


def test_tpe_ranks_complete_trials_by_decades_of_cost_and_pruned_ones_without_curves():
    complete = create_trial(values=[0.6, 20_000.0, 0.0], params={}, distributions={})
    pruned = create_trial(state=TrialState.PRUNED, params={}, distributions={},
                          intermediate_values={1: 0.3, 2: 0.4})
    seen = as_ranked(complete)
    assert seen.values[0] == 0.6 and seen.values[1] == pytest.approx(math.log10(20_000))
    assert math.isfinite(seen.values[2])  # a zero cost is floored, not log10(0)
    assert as_ranked(pruned).intermediate_values == {}
    assert complete.values == [0.6, 20_000.0, 0.0]  # the stored trial is untouched
    assert pruned.intermediate_values == {1: 0.3, 2: 0.4}
    single = create_trial(value=0.5, params={}, distributions={})
    assert as_ranked(single) is single


def test_tpe_samples_after_pruned_trials_that_carry_learning_curves():
    """Optuna's TPE ranks pruned trials by their last intermediate value through
    `study.direction`, which a multi-objective study refuses; kdsearch's TPE must go on in
    studies whose trials carry curves there (kdsearch stored them so before)."""
    study = _study(KDSearchTPESampler(seed=0, n_startup_trials=2, multivariate=True,
                                      group=True, constant_liar=True))
    for i in range(4):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.storage.set_trial_intermediate_value(optuna_internals.trial_id(trial), 1, x)
        if i % 2:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [x, 1.0 + 1000 * (1.0 - x)])
    trial = study.ask()  # TPE proper now: past the two start-up trials
    assert 0.0 <= trial.suggest_float("x", 0.0, 1.0) <= 1.0
    pruned = study.get_trials(states=[TrialState.PRUNED])
    assert all(t.intermediate_values for t in pruned)  # storage keeps them: only TPE is blind


@pytest.mark.parametrize("shipped", [True, False])
def test_tpe_models_a_family_s_knobs_jointly(shipped, tmp_path):
    """A searched family names its own knobs (`resnet.blocks`), absent from the other family's
    trials. The shipped sampler models them in groups, with the family; without groups Optuna
    models only the knobs every trial has and samples the rest one by one."""
    from kdsearch.spec import parse_study
    from kdsearch.study.runner import make_sampler
    from tests.helpers import tiny_study_text

    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    sampler = make_sampler(spec, 0) if shipped else KDSearchTPESampler(
        seed=0, multivariate=True, constant_liar=True, n_startup_trials=3)
    study = _study(sampler)

    def objective(trial):
        family = trial.suggest_categorical("family", ["resnet", "mobilenet"])
        width = trial.suggest_int(f"{family}.width", 4, 64, log=True)
        blocks = trial.suggest_int(f"{family}.blocks", 1, 3)
        return width * blocks / 200, width * width * blocks

    study.optimize(objective, n_trials=12)
    trial = study.ask()
    modelled = sampler.infer_relative_search_space(study, study.trials[trial.number])
    assert "family" in modelled
    assert ({"resnet.width", "resnet.blocks", "mobilenet.width", "mobilenet.blocks"}
            <= set(modelled)) is shipped


def test_make_sampler_takes_tpe_arguments_for_tpe_only(tmp_path):
    """The benchmarks' variants change TPE's own arguments through `make_sampler`'s `tpe`:
    they reach the sampler (without groups the family's knobs are not modelled), and a study
    whose sampler is not TPE refuses them rather than dropping them."""
    from kdsearch.spec import parse_study
    from kdsearch.study.runner import make_sampler
    from tests.helpers import tiny_study_text

    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    sampler = make_sampler(spec, 0, tpe={"group": False})
    study = _study(sampler)

    def objective(trial):
        family = trial.suggest_categorical("family", ["resnet", "mobilenet"])
        width = trial.suggest_int(f"{family}.width", 4, 64, log=True)
        return width / 64, width * width

    study.optimize(objective, n_trials=12)
    trial = study.ask()
    modelled = sampler.infer_relative_search_space(study, study.trials[trial.number])
    assert "family" in modelled and "resnet.width" not in modelled
    nsga = spec.model_copy(update={"search": spec.search.model_copy(update={"sampler": "nsga2"})})
    with pytest.raises(ValueError, match="TPE arguments"):
        make_sampler(nsga, 0, tpe={"group": False})
