"""The teacher is trained once and cached with its logits, keyed by everything that shaped it.

Key = hash(data identity, teacher architecture, training recipe, seed, cache format). A
folder per key holds `model.pt` (state dict), `logits.pt` (train/val/test logits aligned
with the data splits) and `meta.json` (numbers, plus sha256 of both files so that a
truncated or corrupt file is detected and rebuilt rather than silently used). Files are
written to a temporary folder and renamed into place, so a killed run never leaves a
half-written entry; a lock file keeps two local workers from training the same teacher.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdsearch.architecture import CNNArch, MLPArch, parse_arch
from kdsearch.errors import CacheError
from kdsearch.record import TeacherRecord
from kdsearch.spec import StudySpec
from kdsearch.training.data import Dataset
from kdsearch.training.engine import predict_logits, train
from kdsearch.training.models import build_model, count_macs, count_params

CACHE_FORMAT = 1
SPLITS = ("train", "val", "test")


@dataclass
class Teacher:
    model: nn.Module
    arch: MLPArch | CNNArch
    logits: dict[str, torch.Tensor]  # split name -> (N, K) float32, aligned with the data
    record: TeacherRecord
    path: Path
    reused: bool


def teacher_key(spec: StudySpec, data: Dataset) -> str:
    payload = {
        "format": CACHE_FORMAT,
        "data": data.identity,
        "arch": spec.teacher.model_dump(mode="json"),
        "recipe": spec.teacher_train.model_dump(mode="json"),
        "seed": spec.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Corrupt(Exception):
    pass


def _load(folder: Path, data: Dataset, device: torch.device) -> Teacher:
    try:
        record = TeacherRecord.from_json(json.loads((folder / "meta.json").read_text()))
        for name in ("model.pt", "logits.pt"):
            if _sha256(folder / name) != record.sha256[name]:
                raise _Corrupt(f"{name} does not match its checksum")
        arch = parse_arch(record.arch)
        model = build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True, map_location="cpu"))
        logits = torch.load(folder / "logits.pt", weights_only=True, map_location="cpu")
        for split in SPLITS:
            if tuple(logits[split].shape) != (len(data.split(split)), data.num_classes):
                raise _Corrupt(f"{split} logits have shape {tuple(logits[split].shape)}")
    except _Corrupt:
        raise
    except Exception as e:  # unreadable JSON, missing key or file, unpicklable tensor file
        raise _Corrupt(f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}") from e
    return Teacher(model.to(device), arch, logits, record, folder, reused=True)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_teacher(spec: StudySpec, data: Dataset, device: torch.device, key: str,
                  log: Callable[[str], None]) -> tuple[nn.Module, TeacherRecord]:
    """Train the study's teacher, keeping the epoch with the best validation accuracy."""
    from tqdm import tqdm

    torch.manual_seed(spec.seed)
    model = build_model(spec.teacher, data.input_shape, data.num_classes, data.mean, data.std)
    params = count_params(model)
    log(f"training teacher {spec.teacher.describe()} ({params:,} params) for "
        f"{spec.teacher_train.epochs} epochs on {len(data.train):,} images")
    bar = tqdm(total=spec.teacher_train.epochs, desc="teacher", unit="epoch", file=sys.stderr,
               dynamic_ncols=True)

    def progress(epoch: int, loss: float, val_acc: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", val_acc=f"{val_acc:.4f}")
        bar.update(1)

    try:
        result = train(model, data, spec.teacher_train, device, seed=spec.seed, keep_best=True,
                       progress=progress)
    finally:
        bar.close()
    from kdsearch.training.engine import accuracy

    record = TeacherRecord(
        key=key,
        arch=spec.teacher.model_dump(mode="json"),
        description=spec.teacher.describe(),
        params=params,
        macs=count_macs(spec.teacher, data.input_shape, data.num_classes),
        val_accuracy=result.val_accuracy,
        test_accuracy=accuracy(model, data.test, device),
        train_seconds=round(result.seconds, 2),
        epochs=result.epochs_run,
        curve=tuple(result.curve),
        dataset=data.name,
        data_identity=data.identity,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        recipe=spec.teacher_train.model_dump(mode="json"),
        seed=spec.seed,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return model, record


def _save(folder: Path, model: nn.Module, logits: dict[str, torch.Tensor],
          record: TeacherRecord) -> TeacherRecord:
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
    torch.save(logits, tmp / "logits.pt")
    record = dataclasses.replace(
        record, sha256={n: _sha256(tmp / n) for n in ("model.pt", "logits.pt")})
    (tmp / "meta.json").write_text(json.dumps(record.to_json(), indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return record


def get_teacher(spec: StudySpec, data: Dataset, cache_dir: Path, device: torch.device,
                log: Callable[[str], None] = print, train_if_missing: bool = True) -> Teacher | None:
    """The cached teacher for `spec` on `data`, training and caching it first if needed."""
    key = teacher_key(spec, data)
    folder = Path(cache_dir).expanduser() / "teachers" / key
    try:
        with _lock(folder.with_name(f"{key}.lock")):
            if folder.is_dir():
                try:
                    teacher = _load(folder, data, device)
                    log(f"reusing cached teacher {key} ({teacher.record.params:,} params, "
                        f"val acc {teacher.record.val_accuracy:.4f}): training nothing")
                    return teacher
                except _Corrupt as e:
                    log(f"warning: cached teacher {key} is corrupt ({e}); rebuilding it")
                    shutil.rmtree(folder, ignore_errors=True)
            if not train_if_missing:
                return None
            model, record = train_teacher(spec, data, device, key, log)
            logits = {split: predict_logits(model, data.split(split), device) for split in SPLITS}
            record = _save(folder, model, logits, record)
            log(f"teacher cached at {folder}: val acc {record.val_accuracy:.4f}, "
                f"test acc {record.test_accuracy:.4f}, {record.train_seconds:.0f} s")
            return Teacher(model, spec.teacher, logits, record, folder, reused=False)
    except OSError as e:
        raise CacheError(f"teacher cache at {folder.parent}: {e.strerror or e}") from None


# --- sharing a teacher between machines through Optuna's artifact store ----------------------


def publish_teacher(teacher: Teacher, artifact_dir: Path, study) -> str:
    """Upload the teacher's cache folder as one tar to the artifact store; its artifact id."""
    import tarfile
    import tempfile

    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    try:
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            tar_path = Path(tmp) / f"teacher-{teacher.record.key}.tar"
            with tarfile.open(tar_path, "w") as tar:
                for name in ("model.pt", "logits.pt", "meta.json"):
                    tar.add(teacher.path / name, arcname=name)
            return upload_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)),
                                   file_path=str(tar_path), study_or_trial=study,
                                   mimetype="application/x-tar")
    except OSError as e:
        raise CacheError(f"artifact store {artifact_dir}: cannot publish the teacher: "
                         f"{e.strerror or e}") from None


def fetch_teacher(artifact_id: str, artifact_dir: Path, cache_dir: Path, key: str,
                  data: Dataset, device: torch.device) -> Teacher:
    """Download a published teacher into the local cache and load it (checksums verified)."""
    import tarfile
    import tempfile

    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    folder = Path(cache_dir).expanduser() / "teachers" / key
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tar_path = Path(tmp) / "teacher.tar"
            download_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)),
                              file_path=str(tar_path), artifact_id=artifact_id)
            staging = folder.with_name(f"{key}.fetch{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            with tarfile.open(tar_path) as tar:
                tar.extractall(staging, filter="data")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        teacher = _load(folder, data, device)
    except _Corrupt as e:
        raise CacheError(
            f"teacher {key} in artifact store {artifact_dir} is corrupt: {e}") from None
    except Exception as e:  # missing artifact, unreadable tar, full disk
        raise CacheError(f"cannot fetch teacher {key} from artifact store {artifact_dir}: "
                         f"{getattr(e, 'strerror', None) or e}") from None
    teacher.reused = True
    return teacher
