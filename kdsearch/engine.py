"""Training and evaluation on in-memory tensors: no DataLoader, no teacher in the hot loop.

The whole split sits in memory (on the GPU when there is one) as uint8; each epoch draws a
permutation and slices batches by index; augmentation runs on whole batches as tensor ops.
A distilled student reads its teacher's logits from the cache, unless it augments its inputs,
in which case the cached logits no longer describe what it sees and the teacher runs live
under no-grad.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.data import Dataset, Split
from kdsearch.distill import kd_loss
from kdsearch.errors import NonFiniteLossError
from kdsearch.spec import TrainRecipe

EVAL_BATCH = 2048


@dataclass
class TrainResult:
    val_accuracy: float  # of the returned weights
    epochs_run: int
    seconds: float
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from kdsearch.errors import KdsearchError

        raise KdsearchError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def jitter(x: torch.Tensor, pixels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by its own random offset of up to `pixels` in x and y, zero-filled."""
    if pixels <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    dy = torch.randint(0, 2 * pixels + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, recipe: TrainRecipe) -> torch.Tensor:
    if recipe.hflip:
        x = hflip(x)
    return jitter(x, recipe.jitter)


def augments(recipe: TrainRecipe) -> bool:
    return recipe.jitter > 0 or recipe.hflip


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, device: torch.device) -> torch.Tensor:
    """Logits for a whole split, in large batches, as float32 on the CPU."""
    model.eval()
    outs = [model(split.x[i : i + EVAL_BATCH].to(device)).float().cpu()
            for i in range(0, len(split), EVAL_BATCH)]
    return torch.cat(outs) if outs else torch.empty(0)


@torch.inference_mode()
def accuracy(model: nn.Module, split: Split, device: torch.device) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(split), EVAL_BATCH):
        pred = model(split.x[i : i + EVAL_BATCH].to(device)).argmax(1)
        correct += int((pred == split.y[i : i + EVAL_BATCH].to(device)).sum())
    return correct / max(len(split), 1)


def _make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


@torch.no_grad()
def _apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Hinton et al.'s constraint: each unit's incoming weight vector has norm <= max_norm."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            flat = m.weight.view(m.weight.shape[0], -1)
            flat.copy_(torch.renorm(flat, p=2, dim=0, maxnorm=max_norm))


def train(
    model: nn.Module,
    data: Dataset,
    recipe: TrainRecipe,
    device: torch.device,
    *,
    seed: int = 0,
    teacher_logits: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    train_split: Split | None = None,
    keep_best: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train `model` on `data.train` (or `train_split`), distilling when `alpha > 0`.

    `teacher_logits` must be aligned with the training split's images; with augmentation,
    pass `teacher` instead. `on_epoch(epoch, val_accuracy)` may raise to stop (pruning).
    With `keep_best`, the weights of the best validation epoch are restored at the end.
    """
    # Setup: the data on the device once, a seeded generator for the batch order.
    split = train_split or data.train
    x, y = split.x.to(device), split.y.to(device)
    distilling = alpha > 0
    if distilling and augments(recipe) and teacher is None:
        raise ValueError("augmented distillation needs the teacher model, not cached logits")
    if distilling and teacher is None and teacher_logits is None:
        raise ValueError("distillation needs teacher_logits or a teacher")
    soft = teacher_logits.to(device) if (distilling and teacher is None) else None
    if teacher is not None:
        teacher.eval()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device)
    optimizer = _make_optimizer(model, recipe)
    steps_per_epoch = math.ceil(len(split) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    schedule = None
    if recipe.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    start = time.perf_counter()
    curve: list[float] = []
    best_acc, best_state = -1.0, None
    for epoch in range(1, recipe.epochs + 1):
        # One epoch: a fresh permutation, batches sliced by index.
        model.train()
        order = torch.randperm(len(split), generator=gen).to(device)
        running, seen = 0.0, 0
        for i in range(0, len(split), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            xb, yb = x[idx], y[idx]
            if augments(recipe):
                xb = augment(xb, recipe)
            logits = model(xb)
            if not distilling:
                loss = F.cross_entropy(logits, yb)
            else:
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(xb)
                else:
                    t_logits = soft[idx]
                loss = kd_loss(logits, t_logits, yb, temperature, alpha)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at epoch {epoch}, batch {i // recipe.batch_size + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            if recipe.max_norm is not None:
                _apply_max_norm(model, recipe.max_norm)
            running += float(loss.detach()) * len(idx)
            seen += len(idx)

        # Validation after every epoch: the only signal used to select or stop.
        val_acc = accuracy(model, data.val, device)
        curve.append(val_acc)
        if keep_best and val_acc > best_acc:
            best_acc = val_acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress is not None:
            progress(epoch, running / max(seen, 1), val_acc)
        if on_epoch is not None:
            on_epoch(epoch, val_acc)

    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    final = max(curve) if keep_best else curve[-1]
    return TrainResult(final, len(curve), time.perf_counter() - start, curve)
