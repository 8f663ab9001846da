import warnings

import optuna
import pytest
from optuna.samplers._tpe.sampler import _split_trials, default_gamma_multiobjective
from optuna.trial import TrialState, create_trial

from kdsearch.search.tpe import KDSearchTPESampler, RankedStudy

# A front over two decades of parameters, and dominated trials behind it.
FRONT = [(2_000, 0.40), (5_000, 0.50), (12_000, 0.58), (40_000, 0.64), (120_000, 0.68),
         (250_000, 0.70)]
BEHIND = [(3_000, 0.30), (50_000, 0.50), (200_000, 0.60), (10_000, 0.45)] * 6


def _study(sampler=None) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)


def test_tpe_learns_from_the_small_end_of_the_front_when_costs_are_in_decades():
    """Optuna's MO-TPE models a tenth of the trials, chosen on the front by hypervolume in the
    objectives' units: in raw parameters the large students own that area and the small end
    is never modelled. Ranked in decades, as the reports measure the front, it is."""
    study = _study()
    for params, acc in FRONT + BEHIND:
        study.add_trial(create_trial(values=[acc, params], params={}, distributions={}))
    n_below = default_gamma_multiobjective(len(study.trials))
    assert n_below < len(FRONT)  # the front is cut down by hypervolume: the case that differs

    def modelled(view) -> list[int]:
        below, _ = _split_trials(view, view._get_trials(deepcopy=False), n_below)
        return sorted(int(study.trials[t.number].values[1]) for t in below)

    raw, decades = modelled(study), modelled(RankedStudy(study))
    assert min(raw) >= 12_000  # Optuna alone: nothing below 12k params is modelled
    assert min(decades) <= 5_000
    assert set(decades) <= {p for p, _ in FRONT} and set(raw) <= {p for p, _ in FRONT}
    assert study.trials[0].values == [0.40, 2_000]  # only the sampler's view changed


def test_tpe_samples_after_pruned_trials_that_carry_learning_curves():
    """Optuna's TPE ranks pruned trials by their last intermediate value through
    `study.direction`, which a multi-objective study refuses; kdsearch's TPE must go on."""
    study = _study(KDSearchTPESampler(seed=0, n_startup_trials=2, multivariate=True,
                                      group=True, constant_liar=True))
    for i in range(4):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.storage.set_trial_intermediate_value(trial._trial_id, 1, x)
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
    modelled = sampler.infer_relative_search_space(study, study._storage.get_trial(trial._trial_id))
    assert "family" in modelled
    assert ({"resnet.width", "resnet.blocks", "mobilenet.width", "mobilenet.blocks"}
            <= set(modelled)) is shipped
