"""A student trained once is not trained again: a sampled point equal to a finished trial's
ends at once, PRUNED, as a repeat of that trial.

TPE draws categorical knobs from a few values, so on a space of choices it proposes points it
has already trained: on the tabulated cifar_resnet grid (T three values, alpha two; docs/
PERFORMANCE.md section 5) a quarter of kdsearch's trials were repeats, each a full training
that adds no point to the front, and the search trained fewer distinct students than random
search. Ending a repeat costs a database read; the worker then asks for the next trial, and
TPE, which sees the repeat as an ended trial without values, moves on.

What is not a repeat: anything in a study with `[search] skip_repeats = false`, a sweep's
deliberate repeats (`sampler = "grid"`, `repeats` > 1), a hand-picked baseline, and a point
whose twin ended for a reason of its own worker (out of memory, a non-finite loss: another
worker or seed may get through). A twin counts when it completed or was stopped by the
early-stopping rule (its result is known). On a continuous range (T, alpha or lr searched as
numbers) two draws practically never match, so the rule costs nothing there.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from kdsearch.record import TrialRecord
from kdsearch.spec import StudySpec


def trained_twin(trial: optuna.Trial, spec: StudySpec) -> int | None:
    """The number of a finished trial with exactly this trial's params, or None (then train)."""
    search = spec.search
    if not search.skip_repeats or search.sampler == "grid" or TrialRecord.of(trial).baseline:
        return None
    params = trial.params
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                            TrialState.PRUNED)):
        if t.number == trial.number or t.params != params:
            continue
        if t.state == TrialState.COMPLETE or TrialRecord.of(t).stopped_at_rung is not None:
            return t.number
    return None
