"""Grid sweeps: every search-space parameter a fixed value or a list of choices.

Optuna's GridSampler needs the whole grid up front, keyed by the same names that
`suggest_student` uses, so this walks the space the same way.
"""

from __future__ import annotations

from kdsearch.errors import StudyFileError
from kdsearch.spec import CNNSpace, FloatChoices, FloatRange, IntChoices, IntRange, MLPSpace


def _values(name: str, param) -> list:
    if isinstance(param, (IntRange, FloatRange)):
        if isinstance(param, IntRange):
            return list(range(param.low, param.high + 1, param.step))
        raise StudyFileError(f"student.{name}: a grid sweep needs a fixed value or "
                             f"{{ choices = [...] }}, found a float range")
    if isinstance(param, (IntChoices, FloatChoices)):
        return list(param.choices)
    return [float(param) if isinstance(param, float) else param]


def grid_space(space: MLPSpace | CNNSpace) -> dict[str, list]:
    if getattr(space, "width_per_layer", False) or getattr(space, "kernel_per_layer", False):
        raise StudyFileError("a grid sweep needs width_per_layer = false and kernel_per_layer = false")
    names = ["depth", "width", "dropout", "temperature", "alpha"]
    if isinstance(space, CNNSpace):
        names += ["convs_per_block", "kernel", "dense", "conv_dropout"]
    grid = {}
    for name in names:
        values = _values(name, getattr(space, name))
        grid[name] = [float(v) for v in values] if name in (
            "dropout", "temperature", "alpha", "conv_dropout") else values
    return grid


def grid_size(space: MLPSpace | CNNSpace) -> int:
    n = 1
    for values in grid_space(space).values():
        n *= len(values)
    return n
