"""A teacher file that cannot be right, told before anything distils from it.

A model fed its pixels differently from how it was trained still runs and returns logits of
the right shape; only its numbers show it. Measured on the Keras export of issue 22: `scale =
255` on a model with its own `Rescaling` layer (divided twice) scored 0.089 on a 10-class
test set (chance 0.10); `scale = 1` on a model that expects [0, 1] kept its accuracy but made
its soft targets one-hot (top probability 0.9995 at T = 4, 90 % of log-probabilities at the
floor), so a student distilled from little more than its labels.
"""

from __future__ import annotations

import math

import torch

from kdsearch.errors import TeacherFileError
from kdsearch.record import TeacherRecord
from kdsearch.training.teacher_file import TeacherFile

CHANCE_FACTOR = 1.5  # validation accuracy below this many times chance (1 / classes): refused
ONE_HOT_TOP = 0.99  # a mean top probability above this at the study's lowest T: warned about
# A probability this small is nothing: teacher_file.py's floor for a softmax output that
# underflowed to 0 (its log is -69.1); logits that far apart carry no more.
FLOOR_LOG_PROB = math.log(1e-30)
FLOOR_SHARE = 0.5  # warned about when more than this share of log-probabilities is at the floor


def input_hint(file: TeacherFile) -> str:
    """The likely causes, with the `[teacher.input]` settings in force."""
    mean = list(file.mean) if file.mean is not None else "none (0)"
    std = list(file.std) if file.std is not None else "none (1)"
    return (f"check [teacher.input] (now scale = {file.scale:g}, mean = {mean}, std = {std}, "
            f"layout = \"{file.layout}\"): each of scale, mean and std must be applied exactly "
            "once, by kdsearch or by the model, never twice or not at all (a model that "
            "rescales its input itself, a Keras Rescaling layer, wants scale = 1), and layout "
            "must be what the model reads (NCHW; Keras: NHWC)")


def refuse_near_chance(record: TeacherRecord, file: TeacherFile) -> None:
    """`TeacherFileError` for a teacher file whose validation accuracy is near chance."""
    chance = 1.0 / record.num_classes
    if record.val_accuracy < CHANCE_FACTOR * chance:
        raise TeacherFileError(
            f"{file.path}: validation accuracy {record.val_accuracy:.4f} is near chance "
            f"({chance:.4f} for {record.num_classes} classes): the teacher cannot be right as "
            f"it is fed; {input_hint(file)}")


def soft_target_warning(logits: torch.Tensor, temperature: float, file: TeacherFile) -> str | None:
    """A warning when the teacher's soft targets at `temperature` (the study's lowest) carry
    almost nothing beyond the labels; None when they carry something."""
    if not len(logits):
        return None
    logits = logits.float()
    top = float(torch.softmax(logits / temperature, dim=1).max(dim=1).values.mean())
    floor = float((torch.log_softmax(logits, dim=1) <= FLOOR_LOG_PROB).float().mean())
    if top <= ONE_HOT_TOP and floor <= FLOOR_SHARE:
        return None
    return (f"warning: teacher file {file.path}: its soft targets carry almost nothing at the "
            f"study's temperatures (mean top probability {top:.4f} at T = {temperature:g}, "
            f"{floor:.0%} of log-probabilities at the floor), so students learn little more "
            f"than the labels from it; {input_hint(file)}")
