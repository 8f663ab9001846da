"""The search space is code: `suggest_student(trial, space, ...)` -> a `StudentChoice`.

Every choice goes through `trial.suggest_*`, fixed values included (as one-choice
categoricals), so a trial's params always name its depth, width, kernel, T and alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from kdsearch.architecture import CNNArch, ConvLayer, MLPArch
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


def cnn_arch(depth: int, convs_per_block: int, width: int, growth: int, kernels: list[int],
             dense: int, input_hw: int, conv_dropout: float = 0.0, dropout: float = 0.0) -> CNNArch:
    """Blocks of `convs_per_block` convs, 'same' then a final 'valid' one, then a 2x2 pool.

    With depth 2, 2 convs per block, width 8, kernel 3 and dense 128 this is the seed's
    student (8-8-16-16, dense 128, 79,442 params on CIFAR-10). A 'valid' conv or a pool that
    would shrink the feature map below 2 pixels is left out, so every sample can be built.
    """
    convs, size, k = [], input_hw, iter(kernels)
    for block in range(depth):
        channels = width * growth**block
        for j in range(convs_per_block):
            kernel = next(k)
            last = j == convs_per_block - 1
            valid = last and convs_per_block >= 2 and size - (kernel - 1) >= 2
            size -= (kernel - 1) if valid else 0
            pool = last and size >= 2
            size = size // 2 if pool else size
            convs.append(ConvLayer(channels=channels, kernel=kernel,
                                   padding="valid" if valid else "same", pool=pool))
    return CNNArch(convs=convs, dense=[dense] if dense else [], conv_dropout=conv_dropout,
                   dropout=dropout)


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
