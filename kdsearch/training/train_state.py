"""A training run's state after an epoch: saved so an interrupted run ends bit-identical.

Everything the next epoch depends on (weights, optimizer, schedule, best-so-far, curve and every
random state) as tensors and plain types, loadable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdsearch.errors import why
from kdsearch.spec import TrainRecipe

STATE_FORMAT = 1  # of the state `train` hands to `checkpoint`; bump when its keys change


class ResumeError(ValueError):
    """A saved training state that does not fit this model, recipe or state format."""


@dataclass
class Progress:
    """How far a run is: finished epochs, seconds spent, its curve and best epoch so far."""

    epoch: int = 0
    seconds: float = 0.0
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch
    best_acc: float = -1.0
    best_state: dict | None = None  # the weights of the best epoch, with keep_best


@dataclass
class Loop:
    """The objects besides the model whose state a resumed run needs back."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler | None
    gen: torch.Generator  # the batch order's (and the views') generator


def capture(done: Progress, model: nn.Module, loop: Loop, recipe: TrainRecipe, seed: int,
            device: torch.device) -> dict:
    """The state after `done.epoch`. Tensors may alias the live model: save them at once."""
    rng = {"torch": torch.get_rng_state(), "batches": loop.gen.get_state()}
    if device.type == "cuda":  # augmentation and dropout draw from the device's generator
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "format": STATE_FORMAT,
        "recipe": recipe.model_dump(mode="json"),
        "seed": seed,
        "epoch": done.epoch,
        "seconds": done.seconds,
        "curve": list(done.curve),
        "best_acc": done.best_acc,
        "best_state": done.best_state,
        "model": model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "schedule": loop.schedule.state_dict() if loop.schedule is not None else None,
        "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
        "rng": rng,
    }


def check_resumable(state: dict, recipe: TrainRecipe, seed: int, owner: dict | None = None) -> None:
    """`ResumeError` unless `state` was saved by `train` in this format, recipe and seed, and
    (when given) for this `owner`: what the caller trains beyond the recipe (a trial, its T)."""
    try:
        if owner is not None and state.get("owner") != owner:
            raise ResumeError("saved for another run (" + ", ".join(
                f"{k} {state.get('owner', {}).get(k)!r}, not {v!r}" for k, v in owner.items()
                if state.get("owner", {}).get(k) != v) + ")")
        if state["format"] != STATE_FORMAT:
            raise ResumeError(f"state format {state['format']!r}, expected {STATE_FORMAT}")
        if state["recipe"] != recipe.model_dump(mode="json") or state["seed"] != seed:
            raise ResumeError("saved for another recipe or seed")
        if not isinstance(state["epoch"], int) or not 1 <= state["epoch"] <= recipe.epochs:
            raise ResumeError(f"epoch {state['epoch']!r} outside 1..{recipe.epochs}")
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ResumeError(f"not a training state ({type(e).__name__}: {e})") from e


def save_state(path: Path, state: dict) -> None:
    """Write a training state to `path` atomically: a kill leaves the previous one intact."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: Path, recipe: TrainRecipe, seed: int, owner: dict | None = None,
               fit: str = "") -> tuple[dict | None, str | None]:
    """(the state saved at `path`, None) when it fits this run; (None, why not) when it is
    unreadable or another run's, for the caller to warn and start over ("does not fit" +
    `fit`, e.g. " this teacher"); (None, None) when there is none. Read with
    `weights_only`: tensors and plain types, never code."""
    if not path.exists():
        return None, None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - truncated, garbage, or from another torch
        return None, f"is unreadable ({why(e)})"
    try:
        if not isinstance(state, dict):
            raise ResumeError(f"not a training state (a {type(state).__name__})")
        check_resumable(state, recipe, seed, owner)
    except ResumeError as e:
        return None, f"does not fit{fit} ({e})"
    return state, None


def restore(state: dict, model: nn.Module, loop: Loop, recipe: TrainRecipe, seed: int,
            device: torch.device) -> Progress:
    """Put a `capture`d state back; how far that run was.

    `ResumeError` if the state belongs to another run or format. The model may be
    half-overwritten when this raises: the caller starts over from scratch.
    """
    check_resumable(state, recipe, seed)
    try:
        model.load_state_dict(state["model"])
        loop.optimizer.load_state_dict(state["optimizer"])
        if loop.schedule is not None:
            loop.schedule.load_state_dict(state["schedule"])
        if loop.scaler is not None and state["scaler"] is not None:
            loop.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        loop.gen.set_state(rng["batches"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
        return Progress(state["epoch"], float(state["seconds"]), list(state["curve"]),
                        float(state["best_acc"]), state["best_state"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise ResumeError(why(e)) from e
