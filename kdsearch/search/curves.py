"""Learning curves in storage: each trial's validation accuracy per epoch as its intermediate
values, so optuna-dashboard shows them, and a TPE sampler that does not trip over them.

Optuna refuses `Trial.report` in multi-objective studies, but its storage accepts intermediate
values for any running trial. Optuna's TPE sampler then fails in such a study once a PRUNED
trial carries them: it ranks pruned trials by their last intermediate value through
`study.direction`, which a multi-objective study refuses (RuntimeError, Optuna 5.0). The
sampler here shows TPE its pruned trials without their curves, exactly what TPE saw before
kdsearch stored curves; complete, running and failed trials it does not rank by curve at all.
"""

from __future__ import annotations

import copy

import optuna
from optuna.trial import FrozenTrial, TrialState


def report_epoch(trial: optuna.Trial, epoch: int, val_acc: float) -> None:
    """Store the epoch's validation accuracy as the trial's intermediate value at step `epoch`.

    Written as the trial runs, so pruned and failed trials keep the epochs they finished.
    Optuna's pruners never read them here: kdsearch stops trials itself.
    """
    trial.storage.set_trial_intermediate_value(trial._trial_id, epoch, float(val_acc))


def _without_curve(trial: FrozenTrial) -> FrozenTrial:
    blind = copy.copy(trial)
    blind.intermediate_values = {}
    return blind


class _CurveBlindStudy:
    """A read-through view of a study whose pruned trials show no intermediate values."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def _get_trials(self, *args, **kwargs) -> list[FrozenTrial]:
        return [_without_curve(t) if t.state == TrialState.PRUNED and t.intermediate_values
                else t for t in self._study._get_trials(*args, **kwargs)]


class CurveBlindTPESampler(optuna.samplers.TPESampler):
    """`TPESampler` that ignores pruned trials' intermediate values (see the module doc)."""

    def _sample(self, study, trial, search_space):
        return super()._sample(_CurveBlindStudy(study), trial, search_space)
