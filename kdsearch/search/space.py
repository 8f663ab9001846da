"""The search space is code: `suggest_student(trial, space, ...)` -> a `StudentChoice`.

Every choice of the student goes through `trial.suggest_*`, fixed values included (as
one-choice categoricals), so a trial's params always name its depth, width, kernel, T and
alpha. The training recipe's learning rate and batch size are suggested only when the study
searches them (`suggest_recipe`), so studies that fix them store the parameters they always did.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from kdsearch.architecture import Arch, MLPArch, cnn_arch
from kdsearch.spec import (
    CNNSpace,
    FamilyChoiceSpace,
    FloatChoices,
    FloatParam,
    FloatRange,
    IntChoices,
    IntParam,
    IntRange,
    MLPSpace,
    ResNetShape,
    StagedSpace,
    StrChoices,
    StrParam,
    StudentRecipe,
    TrainRecipe,
    staged_arch,
)


@dataclass(frozen=True)
class StudentChoice:
    arch: Arch
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


def suggest_str(trial: optuna.Trial, name: str, param: StrParam) -> str:
    return str(trial.suggest_categorical(name, param.choices if isinstance(param, StrChoices)
                                         else [param]))


def suggest_recipe(trial: optuna.Trial, recipe: StudentRecipe) -> TrainRecipe:
    """The trial's training recipe: its own learning rate and batch size where they are searched."""
    lr = None if isinstance(recipe.lr, float | int) else suggest_float(trial, "lr", recipe.lr)
    batch_size = (None if isinstance(recipe.batch_size, int)
                  else suggest_int(trial, "batch_size", recipe.batch_size))
    return recipe.for_trial(lr=lr, batch_size=batch_size)


def _suggest_staged(trial: optuna.Trial, space: StagedSpace) -> Arch:
    """A resnet or mobilenet student; with the family searched, its knobs carry its name."""
    if isinstance(space, FamilyChoiceSpace):
        family = str(trial.suggest_categorical("family", space.family.choices))
        shape, prefix = space.shapes()[family], f"{family}."
    else:
        shape, prefix = space, ""
    values = dict(stages=suggest_int(trial, f"{prefix}stages", shape.stages),
                  blocks=suggest_int(trial, f"{prefix}blocks", shape.blocks),
                  base_width=suggest_int(trial, f"{prefix}base_width", shape.base_width),
                  width_growth=suggest_float(trial, f"{prefix}width_growth", shape.width_growth),
                  kernel=suggest_int(trial, f"{prefix}kernel", shape.kernel))
    if isinstance(shape, ResNetShape):
        return staged_arch(shape, **values, shortcut=suggest_str(trial, f"{prefix}shortcut",
                                                                 shape.shortcut))
    return staged_arch(shape, **values,
                       expansion=suggest_int(trial, f"{prefix}expansion", shape.expansion),
                       head=suggest_int(trial, f"{prefix}head", shape.head))


def suggest_student(trial: optuna.Trial, space: MLPSpace | CNNSpace | StagedSpace,
                    input_shape: tuple[int, int, int]) -> StudentChoice:
    if not isinstance(space, MLPSpace | CNNSpace):
        return StudentChoice(arch=_suggest_staged(trial, space),
                             temperature=suggest_float(trial, "temperature", space.temperature),
                             alpha=suggest_float(trial, "alpha", space.alpha))
    depth = suggest_int(trial, "depth", space.depth)
    if isinstance(space, MLPSpace):
        if space.width_per_layer:
            widths = [suggest_int(trial, f"width_{i + 1}", space.width) for i in range(depth)]
        else:
            widths = [suggest_int(trial, "width", space.width)] * depth
        arch: Arch = MLPArch(hidden=widths,
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
