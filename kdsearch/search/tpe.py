"""The TPE sampler kdsearch runs: Optuna's multi-objective TPE, shown the trials as the
reports measure them.

Two things differ from what Optuna's `TPESampler` sees in the stored study, and one in what
it draws:

- **Costs in decades.** Optuna's multi-objective TPE models the few best complete trials
  (`gamma`: a tenth of them) and, when the first Pareto front holds more than that, picks
  them by their hypervolume contribution in the objectives' own units. In raw parameters a
  front's largest students own nearly all of that area (200k against 5k params), so TPE
  learns from them and draws large, slow students; the small end of the front, which the
  reports' hypervolume counts per decade of parameters (report/hypervolume.py), is left to
  chance. The sampler sees each cost as log10(cost), the scale the reports measure it on.
  Fronts are unchanged (the log is monotone); only that choice changes.
- **Pruned trials without curves.** TPE ranks pruned trials by their last intermediate
  value through `study.direction`, which a multi-objective study refuses (RuntimeError,
  Optuna 5.0). kdsearch keeps a trial's curve in its record (`val_curve`) only, but studies
  run by earlier versions stored it as intermediate values too: the sampler sees pruned trials
  without them.
- **A planned start-up.** Its first trials take the students of search/startup.py's plan,
  spread over the decades of cost and smallest first, instead of TPE's random start-up draws.

Storage, reports and every other reader see the stored values unchanged. The sampler shows
TPE its trials through `optuna_internals.TrialsView`, the one place that knows how TPE reads
them; tests/test_optuna_internals.py checks that the ranking TPE acts on is this one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdsearch.objectives import FLOOR
from kdsearch.optuna_internals import TrialsView, holds
from kdsearch.search.startup import planned_for

_LEAST = min(FLOOR.values())  # a cost is positive; the floor keeps the log finite


def as_ranked(trial: FrozenTrial) -> FrozenTrial:
    """The trial as TPE should rank it: costs in decades, a pruned trial without a curve."""
    if trial.state == TrialState.COMPLETE and trial.values and len(trial.values) > 1:
        seen = copy.copy(trial)
        acc, *costs = trial.values
        seen.values = [acc, *(math.log10(max(c, _LEAST)) for c in costs)]
        return seen
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        seen = copy.copy(trial)
        seen.intermediate_values = {}
        return seen
    return trial


class KDSearchTPESampler(optuna.samplers.TPESampler):
    """`TPESampler` over the trials in the reports' scale (see the module doc), whose first
    trials take the planned start-up students (`startup`, search/startup.py) in turn."""

    def __init__(self, *args, startup: Sequence[dict[str, Any]] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._startup = list(startup)

    def sample_relative(self, study, trial, search_space):
        if planned_for(study, trial, self._startup) is not None:
            return {}  # every knob comes from the plan, one by one (sample_independent)
        return super().sample_relative(TrialsView(study, as_ranked), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        planned = planned_for(study, trial, self._startup)
        if planned is not None and param_name in planned:
            if holds(param_distribution, planned[param_name]):
                return planned[param_name]
            # a value the distribution cannot take is drawn instead
        return super().sample_independent(TrialsView(study, as_ranked), trial, param_name,
                                          param_distribution)
