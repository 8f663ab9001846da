"""Everything kdsearch takes from Optuna beyond its public API: the one module that does.

Optuna's public API leaves a few needs open. Each is met here by the smallest private call
that meets it, and tests/test_optuna_internals.py checks the behaviour kdsearch relies on,
so an Optuna that changes one fails those tests loudly instead of quietly changing a study's
search or losing its records. pyproject.toml pins Optuna to the versions they pass on.

- **Ids.** Optuna's public storage calls (`get_trial`, `record_heartbeat`, the study's
  system attributes) take a study's or a trial's storage id, which no public attribute
  gives: `study_id` and `trial_id` read them.
- **Study system attributes** (`study_system_attrs`, `set_study_system_attr`): Optuna 5 has
  no public accessor; kdsearch keeps its kilobytes-long study attributes there (record.py).
- **What a sampler sees** (`TrialsView`): Optuna's TPE reads a study's trials through the
  private `Study._get_trials`; the view changes how each trial reads on that path and on the
  public ones, so kdsearch's TPE ranks trials in decades of cost (search/tpe.py).
- **Whether a distribution holds a value** (`holds`): `BaseDistribution._contains`.
- **RUNNING trials that never beat** (`silent_running_trials`): Optuna's stale check skips
  them and no public query finds them; read from its table models.
- **Exact hypervolume** (`hypervolume`): Optuna's WFG, `optuna._hypervolume`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

# --- ids ----------------------------------------------------------------------------------------


def _storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes, as Optuna wraps it (`optuna.load_study` takes a
    storage but never hands it back)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's storage id (unique across studies; `trial.number` counts within one)."""
    return trial._trial_id


# --- study system attributes --------------------------------------------------------------------


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attributes, read from storage now."""
    return _storage_of(study).get_study_system_attrs(study_id(study))


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    _storage_of(study).set_study_system_attr(study_id(study), key, value)


# --- what a sampler sees ------------------------------------------------------------------------


class TrialsView:
    """A study whose trials read as `see` makes them, on every path a sampler reads them by;
    anything else is the study's own. Storage and every other reader see the trials as stored.
    """

    def __init__(self, study: optuna.Study, see: Callable[[FrozenTrial], FrozenTrial]) -> None:
        self._study, self._see = study, see

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [self._see(t) for t in self._study._get_trials(*args, **kwargs)]

    def get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [self._see(t) for t in self._study.get_trials(*args, **kwargs)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def holds(distribution: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one a trial could suggest from `distribution` (in range, on the step,
    one of the choices)."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):  # a categorical's index of a missing choice raises
        return False


# --- heartbeats ---------------------------------------------------------------------------------


def silent_running_trials(storage: RDBStorage, study: optuna.Study,
                          started_before: datetime) -> list[int]:
    """Ids of the study's RUNNING trials that never recorded a heartbeat and started before
    `started_before` (local time, as Optuna stores it)."""
    from optuna.storages._rdb import models

    with storage.scoped_session() as session:
        rows = (session.query(models.TrialModel)
                .filter(models.TrialModel.study_id == study_id(study))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(~models.TrialModel.heartbeats.any()).all())
        ids = [r.trial_id for r in rows
               if r.datetime_start is not None and r.datetime_start < started_before]
        session.close()
    return ids


# --- hypervolume --------------------------------------------------------------------------------


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The exact volume the points dominate (every axis minimised) up to `reference`; every
    point must lie below it on every axis."""
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(np.asarray(points, dtype=float),
                                     np.asarray(reference, dtype=float)))
