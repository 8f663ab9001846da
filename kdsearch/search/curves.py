"""Learning curves in storage: each trial's validation accuracy per epoch as its intermediate
values, so optuna-dashboard shows them.

Optuna refuses `Trial.report` in multi-objective studies, but its storage accepts intermediate
values for any running trial. Optuna's TPE sampler would then fail once a PRUNED trial carries
them (search/tpe.py shows it the trials without).
"""

from __future__ import annotations

import optuna


def report_epoch(trial: optuna.Trial, epoch: int, val_acc: float) -> None:
    """Store the epoch's validation accuracy as the trial's intermediate value at step `epoch`.

    Written as the trial runs, so pruned and failed trials keep the epochs they finished.
    Optuna's pruners never read them here: kdsearch stops trials itself.
    """
    trial.storage.set_trial_intermediate_value(trial._trial_id, epoch, float(val_acc))
