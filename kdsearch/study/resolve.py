"""The study file's settings for training/, resolved once: below study/ no code sees a spec.

The teacher's plan (its architecture, recipe and seed, or its file with the path resolved
against the study file), the views' settings, and the teacher file loaded once per run.
"""

from __future__ import annotations

import torch

from kdsearch.spec import FloatChoices, FloatParam, FloatRange, StudySpec
from kdsearch.training.data import Dataset
from kdsearch.training.teacher import TeacherPlan
from kdsearch.training.teacher_file import FileTeacher, TeacherFile, load_teacher_file
from kdsearch.training.views import ViewSettings


def lowest(param: FloatParam) -> float:
    """The smallest value a float parameter of the search space can take."""
    if isinstance(param, FloatRange):
        return param.low
    if isinstance(param, FloatChoices):
        return min(param.choices)
    return float(param)


def teacher_file(spec: StudySpec) -> TeacherFile | None:
    """The study's `[teacher] file` as a `TeacherFile`, its path resolved against the study
    file; None for a teacher kdsearch trains."""
    f = spec.teacher_file
    if f is None:
        return None
    inp = f.input
    return TeacherFile(path=spec.teacher_path(f.weights if f.torchvision else f.file),
                       format=f.format, torchvision=f.torchvision, scale=inp.scale,
                       mean=tuple(inp.mean) if inp.mean else None,
                       std=tuple(inp.std) if inp.std else None, layout=inp.layout,
                       flip_average=f.flip_average)


def teacher_plan(spec: StudySpec) -> TeacherPlan:
    """What shapes the study's teacher, and the lowest temperature students distil at."""
    temperature = lowest(spec.student.space.temperature)
    file = teacher_file(spec)
    if file is not None:
        return TeacherPlan(seed=spec.seed, file=file, temperature=temperature)
    return TeacherPlan(seed=spec.seed, arch=spec.teacher, recipe=spec.teacher_train,
                       temperature=temperature)


def views_settings(spec: StudySpec) -> ViewSettings:
    r = spec.student.train
    return ViewSettings(k=r.views, hflip=r.hflip, translate=r.translate, seed=spec.seed)


def load_file_teacher(plan: TeacherPlan, data: Dataset, device: torch.device) -> FileTeacher | None:
    """The plan's teacher file loaded and run once on this data's shape (None for a trained
    teacher): before any trial, a file that does not load, rejects the input or has the wrong
    classes is one line (exit 2)."""
    if plan.file is None:
        return None
    return load_teacher_file(plan.file, data.num_classes, data.input_shape, device)
