"""The rules a student is trained by, written once for the search and for `compress`.

A trial and its retraining by `compress` must start from the same seed and distil from the
teacher the same way, or the model folder would not be the student the search scored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from kdsearch.spec import TrainRecipe
from kdsearch.training.data import Dataset, Split
from kdsearch.training.distill import KD
from kdsearch.training.engine import Hooks, TrainResult, TrainSettings, augments, train
from kdsearch.training.teacher import Teacher
from kdsearch.training.views import ViewSet

SEED_STRIDE = 100_003  # a prime: studies with nearby seeds never share a student's seed


def student_seed(study_seed: int, index: int) -> int:
    """The seed of a student's weights and batch order.

    `index` is the trial number in a search, and the repeat index in a sweep, so a sweep's
    plain and distilled students at one point start from the same weights: a paired comparison.
    """
    return study_seed * SEED_STRIDE + index


def distill(model: nn.Module, data: Dataset, recipe: TrainRecipe, device: torch.device,
            teacher: Teacher, *, seed: int, temperature: float, alpha: float,
            train_split: Split | None = None, teacher_logits: torch.Tensor | None = None,
            on_epoch: Callable[[int, float], None] | None = None,
            progress: Callable[[int, float, float], None] | None = None,
            on_batches: Callable[[int, int, int], None] | None = None,
            views: ViewSet | None = None,
            checkpoint: Callable[[dict], None] | None = None,
            resume: dict | None = None) -> TrainResult:
    """Train `model` from the teacher: cached logits, per fixed view or un-augmented, or live.

    A distilled student must see the teacher's logits for the very pixels it is given. With
    `recipe.views` it trains on the fixed views whose logits are cached (`views`, default the
    training split's); under random augmentation the teacher runs live. A plain student
    (alpha 0) needs no teacher at all. `teacher_logits` defaults to the cached logits of the
    training split (`compress` passes those, and the views, of train + validation).
    `checkpoint` hears the state after each epoch and `resume` continues from one (`compress`:
    a retraining of hours survives a stop).
    """
    kd = KD(temperature, alpha)
    hooks = Hooks(on_epoch=on_epoch, progress=progress, on_batches=on_batches,
                  checkpoint=checkpoint)
    base = TrainSettings(recipe, device, seed=seed, kd=kd, train_split=train_split, hooks=hooks,
                         resume=resume)
    if recipe.views:
        views = views if views is not None else teacher.views["train"]
        return train(model, data, dataclasses.replace(base, views=views))
    live = augments(recipe) and alpha > 0
    if live and teacher.model is None:  # the study file refuses this; a guard for code callers
        raise ValueError("random augmentation needs a live teacher; a teacher file needs views")
    cached = teacher.logits["train"] if teacher_logits is None else teacher_logits
    return train(model, data, dataclasses.replace(
        base, teacher_logits=None if live or alpha == 0 else cached,
        teacher=teacher.model if live else None))
