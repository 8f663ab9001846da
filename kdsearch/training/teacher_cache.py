"""The teacher is trained (or, from a file, measured) once and cached with its logits.

`get_teacher` is the way in: the cached teacher for a `TeacherPlan` on a data set, or one
trained (teacher_train.py) or measured now and cached (teacher_store.py has the key, the folder
layout and the atomic writes). A teacher from a file (`[teacher] file = ..`) is cached the same
way without `model.pt`: its folder holds the logits kdsearch computed by running the file once,
and a file that cannot be right as it is fed is refused or named (teacher_check.py). The fixed
views' logits are attached apart (teacher_views.py).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdsearch.errors import CacheError
from kdsearch.record import TeacherRecord
from kdsearch.training.data import Dataset
from kdsearch.training.evaluate import predict_logits
from kdsearch.training.teacher import SPLITS, StopSignal, Teacher, TeacherPlan
from kdsearch.training.teacher_check import refuse_near_chance, soft_target_warning
from kdsearch.training.teacher_file import FileTeacher, file_logits
from kdsearch.training.teacher_store import (
    Corrupt,
    load,
    lock,
    save,
    teacher_key,
    teachers_dir,
    why,
)
from kdsearch.training.teacher_train import train_teacher


def get_teacher(plan: TeacherPlan, data: Dataset, cache_dir: Path, device: torch.device,
                log: Callable[[str], None] = print, train_if_missing: bool = True,
                stop: StopSignal | None = None, loaded: FileTeacher | None = None
                ) -> Teacher | None:
    """The cached teacher for `plan` on `data`, training (or measuring) and caching it first
    if needed; None when it is missing and `train_if_missing` is false.

    Training resumes from the last epoch an interrupted run checkpointed; with `stop`, a
    signal stops it at the next epoch boundary (see `StopSignal`). A teacher file runs as
    `loaded` (the caller's one load of it), needed only when its logits are not cached yet.
    """
    key = teacher_key(plan, data)
    folder = teachers_dir(cache_dir) / key
    try:
        with lock(folder.with_name(f"{key}.lock")):
            teacher = None
            if folder.is_dir():
                try:
                    teacher = load(folder, data, device)
                    log(f"reusing cached teacher {key} ({teacher.record.description}, "
                        f"val acc {teacher.record.val_accuracy:.4f}): training nothing")
                except Corrupt as e:
                    log(f"warning: cached teacher {key} is corrupt ({e}); rebuilding it")
                    shutil.rmtree(folder, ignore_errors=True)
            if teacher is None and not train_if_missing:
                return None
            if teacher is None and plan.file is not None:
                if loaded is None:
                    raise ValueError("a teacher file not cached yet needs the file loaded")
                teacher = _file_teacher(loaded, plan, data, key, folder, log)
            elif teacher is None:
                teacher = _trained_teacher(plan, data, device, key, folder, log, stop)
    except OSError as e:
        raise CacheError(f"teacher cache at {folder.parent}: {e.strerror or e}") from None
    if plan.file is not None:
        # A teacher that cannot be right: refused, or named (cached ones too: older caches).
        refuse_near_chance(teacher.record, plan.file)
        if plan.temperature is not None:
            warning = soft_target_warning(teacher.logits["train"], plan.temperature, plan.file)
            if warning is not None:
                log(warning)
    return teacher


def _trained_teacher(plan: TeacherPlan, data: Dataset, device: torch.device, key: str,
                     folder: Path, log: Callable[[str], None], stop: StopSignal | None) -> Teacher:
    partial = folder.with_name(f"{key}.partial.pt")
    model, record = train_teacher(plan, data, device, key, log, partial, stop)
    logits = {split: predict_logits(model, data.split(split), device) for split in SPLITS}
    record = save(folder, model, logits, record)
    partial.unlink(missing_ok=True)
    log(f"teacher cached at {folder}: val acc {record.val_accuracy:.4f}, "
        f"test acc {record.test_accuracy:.4f}, {record.train_seconds:.0f} s")
    return Teacher(model, plan.arch, logits, record, folder, reused=False)


def _file_params(teacher: FileTeacher) -> tuple[int, str]:
    """(parameters, a note on how they were counted); 0 when the format does not say."""
    if teacher.format == "onnx":
        try:
            import onnx

            graph = onnx.load(str(teacher.file.path), load_external_data=False).graph
        except Exception as e:  # no onnx package, or a graph it cannot read: say so, go on
            return 0, f"params unknown ({why(e)}); MACs not counted for a teacher file"
        floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                  onnx.TensorProto.BFLOAT16}  # weights; integer initializers are shapes
        count = sum(math.prod(init.dims) for init in graph.initializer if init.data_type in floats)
        return count, ("params counted as ONNX float initializers (norm statistics included); "
                       "MACs not counted for a teacher file")
    module = teacher._forward
    if isinstance(module, nn.Module):  # TorchScript, torch.export's module, torchvision
        return (sum(p.numel() for p in module.parameters()),
                "MACs not counted for a teacher file")
    return 0, "params and MACs not counted for a teacher file"


def _file_teacher(runner: FileTeacher, plan: TeacherPlan, data: Dataset, key: str, folder: Path,
                  log: Callable[[str], None]) -> Teacher:
    """Run the teacher file once over every split; cache its logits and accuracies.

    The accuracies are kdsearch's own measurement on this data, as for a teacher it trains.
    One near chance is refused before anything is cached.
    """
    start = time.perf_counter()
    log(f"running teacher file {runner.file.path} ({runner.format}"
        f"{', each image and its mirror' if runner.file.flip_average else ''}) on "
        f"{sum(len(data.split(s)) for s in SPLITS):,} images")
    logits = {split: file_logits(runner, data.split(split).x) for split in SPLITS}

    def acc(split: str) -> float:
        return float((logits[split].argmax(1) == data.split(split).y).float().mean())

    params, note = _file_params(runner)
    record = TeacherRecord(
        key=key, arch={}, description=runner.file.describe(runner.format), params=params, macs=0,
        val_accuracy=acc("val"), test_accuracy=acc("test"),
        train_seconds=round(time.perf_counter() - start, 2), epochs=0,
        dataset=data.name, data_identity=data.identity, input_shape=data.input_shape,
        num_classes=data.num_classes, recipe={}, seed=plan.seed,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), kind="file",
        file={**runner.file.identity(), "path": str(runner.file.path), "format": runner.format},
        note=note)
    refuse_near_chance(record, runner.file)
    record = save(folder, None, logits, record)
    log(f"teacher file measured and cached at {folder}: val acc {record.val_accuracy:.4f}, "
        f"test acc {record.test_accuracy:.4f}")
    return Teacher(None, None, logits, record, folder, reused=False)
