"""Grid sweeps: one or two parameters varied, the rest fixed, optionally plain beside distilled.

A sweep is a study file with `sampler = "grid"`. Every student parameter is a fixed value or
a list of choices; at most two (besides `alpha`) may have more than one value. Writing
`alpha = { choices = [0.0, 0.9] }` trains each setting plainly (alpha = 0) and distilled, side
by side; `repeats = 3` in `[search]` runs every point with three seeds, so the plots can show
a mean and a spread. Optuna's GridSampler needs the whole grid up front, keyed by the same
names that `suggest_student` uses, so this walks the space the same way.
"""

from __future__ import annotations

import optuna

from kdsearch.errors import StudyFileError
from kdsearch.spec import (
    CNNSpace,
    FamilyChoiceSpace,
    FloatChoices,
    FloatRange,
    IntChoices,
    IntRange,
    MLPSpace,
    MobileNetSpace,
    ResNetSpace,
    StrChoices,
    StudySpec,
)

REPEAT = "repeat"  # the grid parameter that numbers a point's seeds
NOT_SWEPT = ("alpha", REPEAT)  # plain-vs-distilled and seeds are drawn as lines, not axes
FLOAT_PARAMS = ("dropout", "temperature", "alpha", "conv_dropout", "width_growth", "lr")


def _values(name: str, param) -> list:
    if isinstance(param, (IntRange, FloatRange)):
        if isinstance(param, IntRange):
            return list(range(param.low, param.high + 1, param.step))
        raise StudyFileError(f"student.{name}: a grid sweep needs a fixed value or "
                             f"{{ choices = [...] }}, found a float range")
    if isinstance(param, (IntChoices, FloatChoices, StrChoices)):
        return list(param.choices)
    return [float(param) if isinstance(param, float) else param]


def grid_space(space: MLPSpace | CNNSpace | ResNetSpace | MobileNetSpace | FamilyChoiceSpace,
               ) -> dict[str, list]:
    if getattr(space, "width_per_layer", False) or getattr(space, "kernel_per_layer", False):
        raise StudyFileError("a grid sweep needs width_per_layer = false and kernel_per_layer = false")
    if isinstance(space, FamilyChoiceSpace):
        raise StudyFileError("a grid sweep needs one student family, not family = { choices = .. }")
    if isinstance(space, ResNetSpace | MobileNetSpace):
        names = ["stages", "blocks", "base_width", "width_growth", "kernel",
                 *(["shortcut"] if isinstance(space, ResNetSpace) else ["expansion", "head"]),
                 "temperature", "alpha"]
    else:
        names = ["depth", "width", "dropout", "temperature", "alpha"]
    if isinstance(space, CNNSpace):
        names += ["convs_per_block", "kernel", "dense", "conv_dropout"]
    grid = {}
    for name in names:
        values = _values(name, getattr(space, name))
        grid[name] = [float(v) for v in values] if name in FLOAT_PARAMS else values
    return grid


def sweep_grid(spec: StudySpec) -> dict[str, list]:
    """The full grid of a sweep study: the space's values, plus the repeat index."""
    grid = grid_space(spec.student.space)
    recipe = spec.student.train
    for name in ("lr", "batch_size"):  # suggested only where searched (space.suggest_recipe)
        param = getattr(recipe, name)
        if not isinstance(param, int | float):
            grid[name] = [float(v) if name in FLOAT_PARAMS else v for v in _values(f"train.{name}", param)]
    swept = [name for name, values in grid.items() if len(values) > 1 and name not in NOT_SWEPT]
    if len(swept) > 2:
        raise StudyFileError(
            f"{spec.name}: a sweep varies one or two parameters (besides alpha), found "
            f"{len(swept)}: {', '.join(swept)}; fix the others to one value (e.g. width = 32)")
    if spec.search.repeats > 1:
        grid[REPEAT] = list(range(spec.search.repeats))
    return grid


def swept_params(spec: StudySpec) -> list[str]:
    """The parameters a sweep varies (its plot axes), in grid order."""
    return [name for name, values in sweep_grid(spec).items()
            if len(values) > 1 and name not in NOT_SWEPT]


def sweep_size(spec: StudySpec) -> int:
    n = 1
    for values in sweep_grid(spec).values():
        n *= len(values)
    return n


def trials_wanted(spec: StudySpec, requested: int | None) -> tuple[int, str | None]:
    """The number of finished trials to aim for, and a note when it differs from the request.

    A grid defaults to its own size (the file's `n_trials` counts only if written there), and
    asking for more than the grid would only repeat points, so it is capped.
    """
    if spec.search.sampler != "grid":
        return requested or spec.search.n_trials, None
    size = sweep_size(spec)
    wanted = requested or (spec.search.n_trials if "n_trials" in spec.search.model_fields_set
                           else size)
    if wanted > size:
        return size, f"the grid has {size} points: running {size} trials, not {wanted}"
    return wanted, None


def suggest_repeat(trial: optuna.Trial, spec: StudySpec) -> int:
    """The repeat index of a sweep trial (0 outside sweeps); it seeds the student."""
    if spec.search.sampler != "grid" or spec.search.repeats == 1:
        return 0
    return int(trial.suggest_categorical(REPEAT, list(range(spec.search.repeats))))
