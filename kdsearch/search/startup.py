"""TPE's start-up students, spread over the decades of cost and run cheapest first.

Before TPE has a model it samples at random (its start-up: the first few trials). Random
draws of a student space pile up in its middle: most of cifar_resnet's students hold 20k-150k
params, and a 160k-param MobileNet drawn first keeps a CPU study busy for minutes before the
front has a single point. The front and its hypervolume count size in decades, and a student a
decade smaller trains several times faster, so the start-up is planned instead (`startup =
"spread"`, the default): many random draws of the space, their sizes known before training
(`arch_params`, `count_macs`), one student picked per equal band of log10(cost) between the
smallest and the largest draw, run smallest first. The first minutes then give a front from
the cheapest students up, early stopping's first peers are quick, and TPE still starts from a
sample that covers the space, evenly in cost rather than in the density of its parameters.

Each pick is one of the random draws, with all its knobs (T, alpha, a searched learning rate
and batch size) drawn as TPE's own start-up would draw them; with `startup_recipe = "centre"`
the shape stays drawn and those four knobs sit at the centre of their ranges (`centre`). A
plan holds one student per band of size, so a drawn recipe decides alone what TPE learns of
that size: in cifar_resnet's first search (docs/RESULTS.md section 6) the plan's five resnets
of 21k to 147k params drew T 1.1 to 19, alpha 0.12 to 0.96 and lr 0.05 to 0.38, all were
stopped behind smaller students, and TPE spent the rest of the study on the other family.

The plan is drawn from the study seed, so every worker of a study holds the same one
(search/tpe.py hands it out); `startup = "random"` is the start-up as Optuna runs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from kdsearch.record import TrialRecord
from kdsearch.search.objective import over_budget
from kdsearch.search.space import suggest_recipe, suggest_student
from kdsearch.spec import FloatChoices, FloatRange, IntChoices, IntRange, StudySpec
from kdsearch.training.models import ArchitectureError, arch_params, count_macs

MAX_BASELINES = 100  # [[search.baselines]]' limit (spec.py): no planned trial numbers past it
DRAWS_PER_PICK = 40  # random draws per start-up student: enough to fill the sparse end bands


def startup_trials(spec: StudySpec) -> int:
    """How many trials TPE samples at random before it models the study."""
    return min(10, max(3, spec.search.n_trials // 3))


def planned_cost(spec: StudySpec) -> str:
    """The cost the start-up is spread over: the study's first, or MACs for a latency, which
    is known only after a build and a timing and follows the MACs."""
    first = spec.search.objectives[0]
    return "macs" if first == "latency_ms" else first


def draws(spec: StudySpec, input_shape: tuple[int, int, int], num_classes: int, n: int,
          seed: int) -> list[tuple[float, dict[str, Any]]]:
    """`n` random students of the space within its size limits: (cost, params) each."""
    before = optuna.logging.get_verbosity()  # no "new study created in memory" line
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    finally:
        optuna.logging.set_verbosity(before)
    cost = planned_cost(spec)
    out = []
    for _ in range(n):
        trial = study.ask()
        choice = suggest_student(trial, spec.student.space, input_shape)
        suggest_recipe(trial, spec.student.train)
        try:
            sizes = {"params": arch_params(choice.arch, input_shape, num_classes),
                     "macs": count_macs(choice.arch, input_shape, num_classes)}
        except ArchitectureError:
            continue  # unbuildable on these images: the objective would refuse it
        if over_budget(spec, sizes["params"], sizes["macs"]):
            continue
        out.append((float(sizes[cost]), trial.params))
    return out


def spread(drawn: list[tuple[float, dict[str, Any]]], n: int) -> list[tuple[float, dict[str, Any]]]:
    """Up to `n` of the draws, one per equal band of log10(cost) in turn, cheapest first.

    A band with no draw is skipped and the turn goes on to the next, so a space whose sizes
    leave gaps still gets `n` students while it has `n` distinct ones. A band's pick is its
    first draw of a size not picked yet (a shape TPE has not seen), else its first draw: the
    picks stay random within their band, and a space of few shapes (an MLP's widths) gets as
    many of them as the plan holds before any shape twice.
    """
    drawn = list({repr(sorted(p.items())): (c, p) for c, p in drawn}.values())  # distinct
    if not drawn:
        return []
    logs = [math.log10(max(c, 1e-9)) for c, _ in drawn]
    lo, hi = min(logs), max(logs)
    width = (hi - lo) / n or 1.0
    bands: list[list[int]] = [[] for _ in range(n)]
    for i, x in enumerate(logs):
        bands[min(n - 1, int((x - lo) / width))].append(i)
    picked: list[int] = []
    while len(picked) < min(n, len(drawn)):
        for band in bands:
            if band and len(picked) < n:
                seen = {drawn[i][0] for i in picked}
                new = next((j for j, i in enumerate(band) if drawn[i][0] not in seen), 0)
                picked.append(band.pop(new))
    return sorted((drawn[i] for i in picked), key=lambda d: d[0])


def centre(param: Any) -> float | int | str:
    """The middle of a searched knob: of a range (geometric for a log range; on the grid of
    an integer step), the median of numeric choices (the lower of two middles), the first of
    other choices; a fixed value is itself."""
    if isinstance(param, FloatRange):
        return (math.sqrt(param.low * param.high) if param.log
                else (param.low + param.high) / 2)
    if isinstance(param, IntRange):
        return param.low + param.step * round((param.high - param.low) / param.step / 2)
    if isinstance(param, FloatChoices | IntChoices):
        return sorted(param.choices)[(len(param.choices) - 1) // 2]
    choices = getattr(param, "choices", None)
    return choices[0] if choices else param


def recipe_centre(spec: StudySpec) -> dict[str, Any]:
    """The planned students' T, alpha, lr and batch size under `startup_recipe = "centre"`."""
    space, train = spec.student.space, spec.student.train
    return {"temperature": centre(space.temperature), "alpha": centre(space.alpha),
            "lr": centre(train.lr), "batch_size": centre(train.batch_size)}


def plan(spec: StudySpec, input_shape: tuple[int, int, int], num_classes: int,
         seed: int) -> list[tuple[float, dict[str, Any]]]:
    """The study's start-up students, (cost, params) cheapest first; none when the study file
    asks for Optuna's own start-up or another sampler."""
    if spec.search.sampler != "tpe" or spec.search.startup != "spread":
        return []
    n = min(startup_trials(spec), spec.search.n_trials)  # never more than the study asks for
    drawn = draws(spec, input_shape, num_classes, n * DRAWS_PER_PICK, seed)
    if spec.search.startup_recipe == "centre":  # a knob the study does not search stays unset
        # Centred before the spread, which keeps distinct points only: two draws of one shape
        # that differ only in these knobs are one student once centred, and the plan would
        # otherwise train it twice (a discrete space, docs/PERFORMANCE.md section 5's table).
        fixed = recipe_centre(spec)
        drawn = [(c, {**p, **{k: v for k, v in fixed.items() if k in p}}) for c, p in drawn]
    return spread(drawn, n)


def _searched(trial: FrozenTrial) -> bool:
    """A trial of the search itself, not a hand-picked baseline."""
    return not TrialRecord.of(trial).baseline


def started(study: optuna.Study) -> bool:
    """Whether the search has begun: any trial that is not a hand-picked baseline."""
    return any(_searched(t) for t in study.get_trials(deepcopy=False))


def planned_for(study: optuna.Study, trial: FrozenTrial,
                planned: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The planned student of this trial, if it is one of the first of the search.

    The k-th trial that is not a hand-picked baseline takes the k-th plan: workers started
    together hold distinct trial numbers, so they take distinct students without a lock or a
    queue, and nothing waits in storage for a run that ends early (`--n-trials 1`).
    """
    if not planned or trial.number >= len(planned) + MAX_BASELINES:
        return None
    k = sum(1 for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and _searched(t))
    return planned[k] if k < len(planned) else None
