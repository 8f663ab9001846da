"""The optimizer, its learning-rate schedule and the max-norm constraint, built from a recipe."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from kdsearch.spec import TrainRecipe
from kdsearch.training.epoch_plan import steps_until


def param_groups(model: nn.Module, recipe: TrainRecipe) -> list[dict]:
    """The optimizer's parameter groups: one, or with `decay_norms_and_biases = false`, the
    conv and linear weights (decayed) apart from biases and batch-norm scales and shifts (not).

    Decay pulls a weight towards 0 to keep the function simple; a batch-norm scale or a bias
    sets no complexity, and the layer after a batch norm does not see its weights' scale, so
    decaying them only fights the fit (He et al. 2019, "Bag of tricks", section 3.1).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.decay_norms_and_biases or recipe.weight_decay == 0:
        return [{"params": params, "weight_decay": recipe.weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """Fused implementations (one kernel for all parameters) where this torch has them."""
    groups = param_groups(model, recipe)
    for fused in (True, False):
        try:
            if recipe.optimizer == "sgd":
                # Nesterov needs momentum: torch refuses it with none.
                return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                                       nesterov=recipe.nesterov and recipe.momentum > 0,
                                       fused=fused or None)
            return torch.optim.Adam(groups, lr=recipe.lr, fused=fused or None)
        except (RuntimeError, TypeError, ValueError):  # fused unsupported for this device/torch
            continue
    raise AssertionError("unreachable")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate at optimizer step `step` of `total`, as a fraction of the recipe's.

    A linear warm-up over the first `warmup` steps (large early steps on freshly initialised
    weights, with batch norm's statistics still settling, can throw a short run off for good),
    then: constant; cosine down to 0; or onecycle, linearly down to 0 (Smith & Topin 2019:
    within a few epochs, the triangle reaches more than any fixed rate).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(step - warmup, total - warmup) / max(total - warmup, 1)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress


def make_schedule(optimizer: torch.optim.Optimizer, recipe: TrainRecipe,
                  steps: list[int]) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The recipe's schedule over `steps` (each epoch's, epoch_plan.epoch_steps), stepped once
    per batch; None for a constant rate without warm-up."""
    total = sum(steps)
    warmup = min(steps_until(recipe.warmup(), steps), total)
    if recipe.lr_schedule == "constant" and not warmup:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, total=total, warmup=warmup, schedule=recipe.lr_schedule))


@torch.no_grad()
def apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Hinton et al.'s constraint: each unit's incoming weight vector has norm <= max_norm."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight  # may be channels_last: reshape, then copy back whatever the layout
            flat = w.reshape(w.shape[0], -1)
            w.copy_(torch.renorm(flat, p=2, dim=0, maxnorm=max_norm).view(w.shape))
