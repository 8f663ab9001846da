"""The search space is code: `suggest_student(trial, space, ...)` -> a `StudentChoice`.

Every choice goes through `trial.suggest_*`, fixed values included (as one-choice
categoricals), so a trial's params always name its depth, width, kernel, T and alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from kdsearch.architecture import CNNArch, MLPArch, cnn_arch
from kdsearch.spec import (
    CNNSpace,
    FloatChoices,
    FloatParam,
    FloatRange,
    IntChoices,
    IntParam,
    IntRange,
    MLPSpace,
)


@dataclass(frozen=True)
class StudentChoice:
    arch: MLPArch | CNNArch
    temperature: float
    alpha: float


def suggest_int(trial: optuna.Trial, name: str, param: IntParam) -> int:
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, step=param.step)
    if isinstance(param, IntChoices):
        return int(trial.suggest_categorical(name, param.choices))
    return int(trial.suggest_categorical(name, [param]))


def suggest_float(trial: optuna.Trial, name: str, param: FloatParam) -> float:
    if isinstance(param, FloatRange):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    if isinstance(param, FloatChoices):
        return float(trial.suggest_categorical(name, param.choices))
    return float(trial.suggest_categorical(name, [float(param)]))


def suggest_student(trial: optuna.Trial, space: MLPSpace | CNNSpace,
                    input_shape: tuple[int, int, int]) -> StudentChoice:
    depth = suggest_int(trial, "depth", space.depth)
    if isinstance(space, MLPSpace):
        if space.width_per_layer:
            widths = [suggest_int(trial, f"width_{i + 1}", space.width) for i in range(depth)]
        else:
            widths = [suggest_int(trial, "width", space.width)] * depth
        arch: MLPArch | CNNArch = MLPArch(hidden=widths,
                                          dropout=suggest_float(trial, "dropout", space.dropout))
    else:
        per_block = suggest_int(trial, "convs_per_block", space.convs_per_block)
        width = suggest_int(trial, "width", space.width)
        n_convs = depth * per_block
        if space.kernel_per_layer:
            kernels = [suggest_int(trial, f"kernel_{i + 1}", space.kernel) for i in range(n_convs)]
        else:
            kernels = [suggest_int(trial, "kernel", space.kernel)] * n_convs
        dense = suggest_int(trial, "dense", space.dense)
        arch = cnn_arch(depth, per_block, width, space.channel_growth, kernels, dense,
                        min(input_shape[1:]),
                        conv_dropout=suggest_float(trial, "conv_dropout", space.conv_dropout),
                        dropout=suggest_float(trial, "dropout", space.dropout))
    return StudentChoice(
        arch=arch,
        temperature=suggest_float(trial, "temperature", space.temperature),
        alpha=suggest_float(trial, "alpha", space.alpha),
    )
