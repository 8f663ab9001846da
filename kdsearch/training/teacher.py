"""The teacher's type: what shapes it (a `TeacherPlan`, resolved once from the study file by
the caller) and what a run holds of it (a `Teacher`: logits per split, its record, its views)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from kdsearch.architecture import Arch
from kdsearch.record import TeacherRecord
from kdsearch.spec import TrainRecipe
from kdsearch.training.teacher_file import TeacherFile
from kdsearch.training.views import ViewSet

SPLITS = ("train", "val", "test")
VIEW_SPLITS = ("train", "val")  # views for training, and for compress's train + validation


@dataclass(frozen=True)
class TeacherPlan:
    """Everything that shapes the teacher, and nothing else: a network kdsearch trains (`arch`,
    `recipe`, `seed`) or a file the user brings (`file`, its path already resolved).

    `temperature` is the lowest at which students will distil from it: a file teacher's soft
    targets are judged there (teacher_check.py); it is no part of the teacher's cache key.
    """

    seed: int
    arch: Arch | None = None
    recipe: TrainRecipe | None = None
    file: TeacherFile | None = None
    temperature: float | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.arch is None or self.recipe is None):
            raise ValueError("a teacher plan needs either arch and recipe, or file")


@dataclass
class Teacher:
    model: nn.Module | None  # None for a teacher file: trials never run a teacher, views need none
    arch: Arch | None  # None for a teacher file
    logits: dict[str, torch.Tensor]  # split name -> (N, K) float32, aligned with the data
    record: TeacherRecord
    path: Path
    reused: bool
    views: dict[str, ViewSet] = field(default_factory=dict)  # split -> its fixed views, if any


class StopSignal(Protocol):
    """What a caller that handles Ctrl-C lends the teacher's training (`study.shutdown.Shutdown`
    is one). Its signal handlers only set a flag; the training asks at its safe points:
    `at_epoch()`, after each epoch's checkpoint, raises after a first signal, `at_batch()` only
    after a second (stop now). Either way every finished epoch is in the checkpoint."""

    def training(self, what: str, now: str = "") -> AbstractContextManager[None]: ...

    def at_batch(self, done: int, per_epoch: int) -> None: ...

    def at_epoch(self) -> None: ...

    def check(self) -> None: ...  # raises after any signal: for waits outside training
