"""The teacher is trained once and cached with its logits, keyed by everything that shaped it.

Key = hash(data identity, teacher architecture, training recipe, seed, cache format). A
folder per key holds `model.pt` (state dict), `logits.pt` (train/val/test logits aligned
with the data splits) and `meta.json` (numbers, plus sha256 of both files so that a
truncated or corrupt file is detected and rebuilt rather than silently used). Files are
written to a temporary folder and renamed into place, so a killed run never leaves a
half-written entry; a lock file keeps two local workers from training the same teacher.

While the teacher trains, `<key>.partial.pt` beside the folder holds the state after its last
finished epoch (replaced atomically after each one), so an interrupted run continues from
there, bit-identical to one never stopped; it is removed once the teacher is cached.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from kdsearch.architecture import CNNArch, MLPArch, parse_arch
from kdsearch.errors import CacheError, NonFiniteLossError
from kdsearch.record import TeacherRecord
from kdsearch.spec import StudySpec
from kdsearch.training.data import Dataset
from kdsearch.training.engine import ResumeError, check_resumable, predict_logits, train
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


def _why(e: BaseException) -> str:
    """An exception as one short line, for a warning."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"


class StopSignal(Protocol):
    """What a caller that handles Ctrl-C lends the teacher's training (`study.shutdown.Shutdown`
    is one): signals are held while `deferring()`, and `check()`, called after each epoch's
    checkpoint, raises if one arrived. So a stop lands on an epoch boundary, work kept."""

    def deferring(self) -> AbstractContextManager[None]: ...

    def check(self) -> None: ...


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
        raise _Corrupt(_why(e)) from e
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


def _save_partial(path: Path, state: dict) -> None:
    """Write the training state to `path` atomically: a kill leaves the previous one intact."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_partial(path: Path, spec: StudySpec, log: Callable[[str], None]) -> dict | None:
    """The state saved at `path`, or None: absent, or unusable (warned about and removed)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated, garbage, or from another torch
        problem = f"is unreadable ({_why(e)})"
    else:
        try:
            check_resumable(state, spec.teacher_train, spec.seed)
            return state
        except ResumeError as e:
            problem = f"does not fit this teacher ({e})"
    log(f"warning: teacher checkpoint {path} {problem}; training the teacher from the start")
    path.unlink(missing_ok=True)
    return None


def train_teacher(spec: StudySpec, data: Dataset, device: torch.device, key: str,
                  log: Callable[[str], None], partial: Path | None = None,
                  stop: StopSignal | None = None) -> tuple[nn.Module, TeacherRecord]:
    """Train the study's teacher, keeping the epoch with the best validation accuracy.

    With `partial`, each epoch is checkpointed there and a checkpoint found there is resumed.
    """
    from tqdm import tqdm

    torch.manual_seed(spec.seed)
    model = build_model(spec.teacher, data.input_shape, data.num_classes, data.mean, data.std)
    params = count_params(model)
    epochs = spec.teacher_train.epochs
    log(f"training teacher {spec.teacher.describe()} ({params:,} params) for "
        f"{epochs} epochs on {len(data.train):,} images")
    state = _load_partial(partial, spec, log) if partial is not None else None
    if state is not None:
        log(f"resuming teacher from epoch {state['epoch']} of {epochs} ({partial})")
    # Counted in batches, not epochs: an epoch can take minutes (87 s on CIFAR-10 on 2 cores),
    # and a bar at 0/15 for all of the first one looks frozen.
    steps = math.ceil(len(data.train) / spec.teacher_train.batch_size)
    first = state["epoch"] if state else 0
    bar = tqdm(total=epochs * steps, initial=first * steps, desc="teacher", unit="batch",
               file=sys.stderr, dynamic_ncols=True)
    bar.set_postfix_str(f"epoch {min(first + 1, epochs)}/{epochs}")
    last = [""]  # the last finished epoch's numbers

    def batches(epoch: int, done: int, per_epoch: int) -> None:
        bar.n = (epoch - 1) * per_epoch + done
        bar.set_postfix_str(f"epoch {epoch}/{epochs}{last[0]}")  # refreshes the bar

    def progress(epoch: int, loss: float, val_acc: float) -> None:
        last[0] = f", last epoch loss {loss:.4f} val_acc {val_acc:.4f}"
        bar.set_postfix_str(f"epoch {epoch}/{epochs}{last[0]}")

    saved = [state["epoch"] if state else 0]  # the epoch `partial` now holds

    def save(snapshot: dict) -> None:
        assert partial is not None
        _save_partial(partial, snapshot)
        saved[0] = snapshot["epoch"]

    # A stop is taken only after the epoch's checkpoint: `train` calls `on_epoch` after it.
    check = (lambda epoch, val_acc: stop.check()) if stop is not None else None
    try:
        with stop.deferring() if stop is not None else nullcontext():
            result = train(model, data, spec.teacher_train, device, seed=spec.seed,
                           keep_best=True, progress=progress, on_batches=batches, resume=state,
                           on_epoch=check,
                           checkpoint=save if partial is not None else None)
    except BaseException as e:
        bar.close()  # first: a line logged while it is open lands inside the bar
        if isinstance(e, ResumeError) and partial is not None:  # found as the weights went in
            log(f"warning: teacher checkpoint {partial} does not fit this teacher ({e}); "
                "training the teacher from the start")
            partial.unlink(missing_ok=True)
            return train_teacher(spec, data, device, key, log, partial, stop)
        if saved[0] and not isinstance(e, NonFiniteLossError):  # a NaN would only recur
            log(f"teacher stopped: epochs 1-{saved[0]} of {epochs} are checkpointed in "
                f"{partial}; the same command resumes from there")
        raise
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
                log: Callable[[str], None] = print, train_if_missing: bool = True,
                stop: StopSignal | None = None) -> Teacher | None:
    """The cached teacher for `spec` on `data`, training and caching it first if needed.

    Training resumes from the last epoch an interrupted run checkpointed; with `stop`, a
    signal stops it at the next epoch boundary (see `StopSignal`).
    """
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
            partial = folder.with_name(f"{key}.partial.pt")
            model, record = train_teacher(spec, data, device, key, log, partial, stop)
            logits = {split: predict_logits(model, data.split(split), device) for split in SPLITS}
            record = _save(folder, model, logits, record)
            partial.unlink(missing_ok=True)
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
