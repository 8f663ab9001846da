"""The teacher cache on disk: keys, folders, atomic writes, checksummed reads, a lock.

Key = hash(data identity, teacher architecture, training recipe, seed, cache format); for a
teacher file, its content hash and input settings instead of the architecture, recipe and seed.
A folder per key holds `model.pt` (state dict; none for a teacher file), `logits.pt`
(train/val/test logits aligned with the data splits) and `meta.json` (the `TeacherRecord`,
with sha256 of both files, so that a truncated or corrupt file is detected and rebuilt rather
than silently used). The fixed views live in `views-<key>`, keyed by the teacher's key and the
views, so changing the views never retrains a teacher. Folders are written to a temporary
folder and renamed into place, so a killed run never leaves a half-written entry; a lock file
keeps two local workers from building the same entry.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from kdsearch.architecture import parse_arch
from kdsearch.errors import why
from kdsearch.record import TeacherRecord
from kdsearch.training.data import Dataset
from kdsearch.training.models import build_model
from kdsearch.training.teacher import SPLITS, VIEW_SPLITS, Teacher, TeacherPlan
from kdsearch.training.teacher_file import file_digest
from kdsearch.training.views import ViewSet, ViewSettings, ViewTable

CACHE_FORMAT = 1


def teachers_dir(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / "teachers"


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def teacher_key(plan: TeacherPlan, data: Dataset) -> str:
    if plan.file is not None:
        # The file's content hash and input settings, not its path: a re-export under the
        # same name gets new logits. An ONNX file may keep its weights in files beside it.
        return _hash({"format": CACHE_FORMAT, "data": data.identity, "file": plan.file.identity(),
                      "external": _external_data(plan.file.path)})
    assert plan.arch is not None and plan.recipe is not None
    return _hash({"format": CACHE_FORMAT, "data": data.identity,
                  "arch": plan.arch.model_dump(mode="json"),
                  "recipe": plan.recipe.model_dump(mode="json"), "seed": plan.seed})


def views_key(teacher_key_: str, views: ViewSettings) -> str:
    return _hash({"format": CACHE_FORMAT, "teacher": teacher_key_, "views": views.identity()})


def _external_data(path: Path) -> dict[str, str]:
    """sha256 of each file an ONNX model keeps its weights in (`*.onnx.data`), by name.

    Re-exporting a network with new weights can leave the .onnx graph byte-identical and
    change only these files; without them in the key, the old logits would be reused.
    """
    if path.suffix.lower() != ".onnx":
        return {}
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # no onnx package, or not ONNX: loading the file will say what is wrong
        return {}
    names = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    return {n: file_digest(path.parent / n) for n in sorted(names)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Corrupt(Exception):
    """A cache entry that cannot be used as it is: the caller warns and rebuilds it."""


def files(record: TeacherRecord) -> tuple[str, ...]:
    """The cache files of a teacher: a file teacher has logits only."""
    return ("logits.pt",) if record.kind == "file" else ("model.pt", "logits.pt")


@contextmanager
def lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _publish(tmp: Path, folder: Path) -> None:
    """Put a finished temporary folder in place of `folder`."""
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _staging(folder: Path) -> Path:
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def load(folder: Path, data: Dataset, device: torch.device) -> Teacher:
    """The teacher cached in `folder`; `Corrupt` if any part of it is unusable."""
    try:
        record = TeacherRecord.from_json(json.loads((folder / "meta.json").read_text()))
        for name in files(record):
            if sha256(folder / name) != record.sha256[name]:
                raise Corrupt(f"{name} does not match its checksum")
        arch, model = None, None
        if record.kind != "file":
            arch = parse_arch(record.arch)
            model = build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)
            model.load_state_dict(torch.load(folder / "model.pt", weights_only=True,
                                             map_location="cpu"))
            model = model.to(device)
        logits = torch.load(folder / "logits.pt", weights_only=True, map_location="cpu")
        for split in SPLITS:
            if tuple(logits[split].shape) != (len(data.split(split)), data.num_classes):
                raise Corrupt(f"{split} logits have shape {tuple(logits[split].shape)}")
    except Corrupt:
        raise
    except Exception as e:  # unreadable JSON, missing key or file, unpicklable tensor file
        raise Corrupt(why(e)) from e
    return Teacher(model, arch, logits, record, folder, reused=True)


def save(folder: Path, model: nn.Module | None, logits: dict[str, torch.Tensor],
         record: TeacherRecord) -> TeacherRecord:
    """Write a teacher's entry atomically; its record with the files' checksums."""
    tmp = _staging(folder)
    if model is not None:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
    torch.save(logits, tmp / "logits.pt")
    record = dataclasses.replace(record, sha256={n: sha256(tmp / n) for n in files(record)})
    (tmp / "meta.json").write_text(json.dumps(record.to_json(), indent=2))
    _publish(tmp, folder)
    return record


def save_views(folder: Path, views: dict[str, ViewSet], meta: dict) -> None:
    tmp = _staging(folder)
    torch.save({split: {"flip": v.table.flip, "dy": v.table.dy, "dx": v.table.dx,
                        "pad": v.table.pad, "logits": v.logits} for split, v in views.items()},
               tmp / "views.pt")
    meta = {**meta, "sha256": sha256(tmp / "views.pt")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    _publish(tmp, folder)


def load_views(folder: Path, data: Dataset, k: int) -> dict[str, ViewSet]:
    """The views cached in `folder`; `Corrupt` if any part of them is unusable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if sha256(folder / "views.pt") != meta["sha256"]:
            raise Corrupt("views.pt does not match its checksum")
        raw = torch.load(folder / "views.pt", weights_only=True, map_location="cpu")
        views = {}
        for split in VIEW_SPLITS:
            r = raw[split]
            views[split] = ViewSet(ViewTable(r["flip"], r["dy"], r["dx"], int(r["pad"])), r["logits"])
            want = (k, len(data.split(split)), data.num_classes)
            if (tuple(views[split].logits.shape) != want
                    or tuple(views[split].table.flip.shape) != (want[1], k)):
                raise Corrupt(f"{split} views have shape {tuple(views[split].logits.shape)}")
    except Corrupt:
        raise
    except Exception as e:
        raise Corrupt(why(e)) from e
    return views
