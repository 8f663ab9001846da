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

A teacher from a file (`[teacher] file = ..`) is cached the same way without `model.pt`: its
key hashes the file's content and input settings with the data, and its folder holds the
logits kdsearch computed by running the file once. The fixed views of `[student.train] views`
are cached apart, in `views-<key>` (the views' teacher logits, keyed by the teacher's key and
the views), so changing the views never retrains a teacher.
"""

from __future__ import annotations

import copy
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from kdsearch.architecture import CNNArch, MLPArch, parse_arch
from kdsearch.errors import CacheError, NonFiniteLossError
from kdsearch.record import TeacherRecord
from kdsearch.spec import StudySpec
from kdsearch.training.data import Dataset
from kdsearch.training.engine import (
    ResumeError,
    check_resumable,
    eval_batch,
    predict_logits,
    train,
)
from kdsearch.training.models import build_model, count_macs, count_params
from kdsearch.training.teacher_file import (
    FileTeacher,
    TeacherFile,
    file_digest,
    file_logits,
    load_teacher_file,
)
from kdsearch.training.views import (
    VIEW_BATCH,
    ViewSet,
    ViewTable,
    make_views,
    view_logits,
    views_seed,
)

CACHE_FORMAT = 1
SPLITS = ("train", "val", "test")


VIEW_SPLITS = ("train", "val")  # views for training, and for compress's train + validation


@dataclass
class Teacher:
    model: nn.Module | None  # None for a teacher file: trials never run a teacher, views need none
    arch: MLPArch | CNNArch | None  # None for a teacher file
    logits: dict[str, torch.Tensor]  # split name -> (N, K) float32, aligned with the data
    record: TeacherRecord
    path: Path
    reused: bool
    views: dict[str, ViewSet] = field(default_factory=dict)  # split -> its fixed views, if any


def teacher_file_of(spec: StudySpec) -> TeacherFile:
    """The study's `[teacher] file` as a `TeacherFile`, its path resolved against the study file."""
    f = spec.teacher_file
    assert f is not None
    inp = f.input
    return TeacherFile(path=spec.teacher_path(f.weights if f.torchvision else f.file),
                       format=f.format, torchvision=f.torchvision, scale=inp.scale,
                       mean=tuple(inp.mean) if inp.mean else None,
                       std=tuple(inp.std) if inp.std else None, layout=inp.layout)


def load_file_teacher(spec: StudySpec, data: Dataset, device: torch.device) -> FileTeacher:
    """Load the study's teacher file and run it once on this data's shape: before any trial, a
    file that does not load, rejects the input or has the wrong classes is one line (exit 2)."""
    return load_teacher_file(teacher_file_of(spec), data.num_classes, data.input_shape, device)


def teacher_key(spec: StudySpec, data: Dataset) -> str:
    if spec.teacher_file is not None:
        # The file's content hash and input settings, not its path: a re-export under the
        # same name gets new logits. An ONNX file may keep its weights in files beside it.
        tf = teacher_file_of(spec)
        payload = {"format": CACHE_FORMAT, "data": data.identity, "file": tf.identity(),
                   "external": _external_data(tf.path)}
    else:
        assert spec.teacher is not None
        payload = {
            "format": CACHE_FORMAT,
            "data": data.identity,
            "arch": spec.teacher.model_dump(mode="json"),
            "recipe": spec.teacher_train.model_dump(mode="json"),
            "seed": spec.seed,
        }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


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


def views_settings(spec: StudySpec) -> dict:
    """What shapes the views: K, flips, shift and seed. Part of the views' cache key."""
    r = spec.student.train
    return {"views": r.views, "hflip": r.hflip, "translate": r.translate, "seed": spec.seed}


def views_key(teacher_key_: str, spec: StudySpec) -> str:
    payload = {"format": CACHE_FORMAT, "teacher": teacher_key_, "views": views_settings(spec)}
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
    is one). Its signal handlers only set a flag; the training asks at its safe points:
    `at_epoch()`, after each epoch's checkpoint, raises after a first signal, `at_batch()` only
    after a second (stop now). Either way every finished epoch is in the checkpoint."""

    def training(self, what: str, now: str = "") -> AbstractContextManager[None]: ...

    def at_batch(self, done: int, per_epoch: int) -> None: ...

    def at_epoch(self) -> None: ...

    def check(self) -> None: ...  # raises after any signal: for waits outside training


def _files(record: TeacherRecord) -> tuple[str, ...]:
    """The cache files of a teacher: a file teacher has logits only."""
    return ("logits.pt",) if record.kind == "file" else ("model.pt", "logits.pt")


def _load(folder: Path, data: Dataset, device: torch.device) -> Teacher:
    try:
        record = TeacherRecord.from_json(json.loads((folder / "meta.json").read_text()))
        for name in _files(record):
            if _sha256(folder / name) != record.sha256[name]:
                raise _Corrupt(f"{name} does not match its checksum")
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
                raise _Corrupt(f"{split} logits have shape {tuple(logits[split].shape)}")
    except _Corrupt:
        raise
    except Exception as e:  # unreadable JSON, missing key or file, unpicklable tensor file
        raise _Corrupt(_why(e)) from e
    return Teacher(model, arch, logits, record, folder, reused=True)


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
        if stop is not None:
            stop.at_batch(done, per_epoch)

    def progress(epoch: int, loss: float, val_acc: float) -> None:
        last[0] = f", last epoch loss {loss:.4f} val_acc {val_acc:.4f}"
        bar.set_postfix_str(f"epoch {epoch}/{epochs}{last[0]}")

    saved = [state["epoch"] if state else 0]  # the epoch `partial` now holds

    def save(snapshot: dict) -> None:
        assert partial is not None
        _save_partial(partial, snapshot)
        saved[0] = snapshot["epoch"]

    # A stop is taken only after the epoch's checkpoint: `train` calls `on_epoch` after it.
    check = (lambda epoch, val_acc: stop.at_epoch()) if stop is not None else None
    try:
        with (stop.training("the teacher", "the finished epochs are checkpointed")
              if stop is not None else nullcontext()):
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


def _save(folder: Path, model: nn.Module | None, logits: dict[str, torch.Tensor],
          record: TeacherRecord) -> TeacherRecord:
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if model is not None:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
    torch.save(logits, tmp / "logits.pt")
    record = dataclasses.replace(
        record, sha256={n: _sha256(tmp / n) for n in _files(record)})
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
                    log(f"reusing cached teacher {key} ({teacher.record.description}, "
                        f"val acc {teacher.record.val_accuracy:.4f}): training nothing")
                    return teacher
                except _Corrupt as e:
                    log(f"warning: cached teacher {key} is corrupt ({e}); rebuilding it")
                    shutil.rmtree(folder, ignore_errors=True)
            if not train_if_missing:
                return None
            if spec.teacher_file is not None:
                return _file_teacher(spec, data, device, key, folder, log)
            assert spec.teacher is not None
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


def _file_params(teacher: FileTeacher) -> tuple[int, str]:
    """(parameters, a note on how they were counted); 0 when the format does not say."""
    if teacher.format == "onnx":
        try:
            import onnx

            graph = onnx.load(str(teacher.file.path), load_external_data=False).graph
        except Exception as e:  # no onnx package, or a graph it cannot read: say so, go on
            return 0, f"params unknown ({_why(e)}); MACs not counted for a teacher file"
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


def _file_teacher(spec: StudySpec, data: Dataset, device: torch.device, key: str, folder: Path,
                  log: Callable[[str], None]) -> Teacher:
    """Run the study's teacher file once over every split; cache its logits and accuracies.

    The accuracies are kdsearch's own measurement on this data, as for a teacher it trains.
    """
    start = time.perf_counter()
    runner = load_file_teacher(spec, data, device)
    log(f"running teacher file {runner.file.path} ({runner.format}) on "
        f"{sum(len(data.split(s)) for s in SPLITS):,} images")
    logits = {split: file_logits(runner, data.split(split).x) for split in SPLITS}

    def acc(split: str) -> float:
        return float((logits[split].argmax(1) == data.split(split).y).float().mean())

    params, note = _file_params(runner)
    kind = runner.format if runner.format != "torchvision" else f"torchvision {runner.file.torchvision}"
    record = TeacherRecord(
        key=key, arch={}, description=f"{kind} {runner.file.path.name}", params=params, macs=0,
        val_accuracy=acc("val"), test_accuracy=acc("test"),
        train_seconds=round(time.perf_counter() - start, 2), epochs=0,
        dataset=data.name, data_identity=data.identity, input_shape=data.input_shape,
        num_classes=data.num_classes, recipe={}, seed=spec.seed,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), kind="file",
        file={**runner.file.identity(), "path": str(runner.file.path), "format": runner.format},
        note=note)
    record = _save(folder, None, logits, record)
    log(f"teacher file measured and cached at {folder}: val acc {record.val_accuracy:.4f}, "
        f"test acc {record.test_accuracy:.4f}")
    return Teacher(None, None, logits, record, folder, reused=False)


# --- fixed views: the teacher's logits once per view ----------------------------------------


def attach_views(teacher: Teacher, spec: StudySpec, data: Dataset, cache_dir: Path,
                 device: torch.device, log: Callable[[str], None] = print) -> Teacher:
    """Give `teacher` the study's fixed views of the train and validation splits with its
    logits on each, from the cache or computed now (the teacher runs once per view).

    A no-op without `[student.train] views`. Cached in `views-<key>`, keyed by the teacher's
    key and the views (K, hflip, translate, seed); written atomically, checksummed like a
    teacher, so any worker with the teacher can rebuild them.
    """
    recipe = spec.student.train
    if not recipe.views:
        return teacher
    vkey = views_key(teacher.record.key, spec)
    folder = Path(cache_dir).expanduser() / "teachers" / f"views-{vkey}"
    try:
        with _lock(folder.with_name(f"views-{vkey}.lock")):
            if folder.is_dir():
                try:
                    teacher.views = _load_views(folder, data, recipe.views)
                    return teacher
                except _Corrupt as e:
                    log(f"warning: cached views {vkey} are corrupt ({e}); rebuilding them")
                    shutil.rmtree(folder, ignore_errors=True)
            from tqdm import tqdm

            forward = _view_forward(teacher, spec, data, device)
            # A kdsearch teacher in the engine's evaluation batches; a teacher file in large
            # ones (ONNX Runtime's per-call cost).
            batch = (VIEW_BATCH if teacher.model is None
                     else eval_batch(teacher.model, device))
            start = time.perf_counter()
            views = {}
            total = recipe.views * sum(len(data.split(split)) for split in VIEW_SPLITS)
            with tqdm(total=total, desc=f"teacher on {recipe.views} views", unit="img",
                      file=sys.stderr, dynamic_ncols=True, unit_scale=True) as bar:
                for split in VIEW_SPLITS:
                    table = make_views(len(data.split(split)), recipe.views, recipe.hflip,
                                       recipe.translate, views_seed(spec.seed, split))
                    views[split] = ViewSet(table, view_logits(forward, data.split(split).x, table,
                                                              batch, progress=bar.update))
            _save_views(folder, views, {"key": vkey, "teacher": teacher.record.key,
                                        **views_settings(spec)})
            log(f"teacher logits on {recipe.views} views of {sum(map(len, views.values())):,} "
                f"images cached at {folder} ({time.perf_counter() - start:.0f} s)")
            teacher.views = views
            return teacher
    except OSError as e:
        raise CacheError(f"teacher cache at {folder.parent}: {e.strerror or e}") from None


def _view_forward(teacher: Teacher, spec: StudySpec, data: Dataset,
                  device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 batch -> logits: the trained model in eval mode, or the teacher file loaded."""
    if teacher.model is None:
        return load_file_teacher(spec, data, device)
    # Weights in channels_last, as the engine trains CNNs: the convolutions pick the faster
    # layout (benchmarks/bench_view_logits.py). A copy: the teacher's own model is left as is.
    model = copy.deepcopy(teacher.model).eval().to(memory_format=torch.channels_last)
    return lambda xb: model(xb.to(device))


def _save_views(folder: Path, views: dict[str, ViewSet], meta: dict) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({split: {"flip": v.table.flip, "dy": v.table.dy, "dx": v.table.dx,
                        "pad": v.table.pad, "logits": v.logits} for split, v in views.items()},
               tmp / "views.pt")
    meta = {**meta, "sha256": _sha256(tmp / "views.pt")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load_views(folder: Path, data: Dataset, k: int) -> dict[str, ViewSet]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if _sha256(folder / "views.pt") != meta["sha256"]:
            raise _Corrupt("views.pt does not match its checksum")
        raw = torch.load(folder / "views.pt", weights_only=True, map_location="cpu")
        views = {}
        for split in VIEW_SPLITS:
            r = raw[split]
            views[split] = ViewSet(ViewTable(r["flip"], r["dy"], r["dx"], int(r["pad"])), r["logits"])
            want = (k, len(data.split(split)), data.num_classes)
            if (tuple(views[split].logits.shape) != want
                    or tuple(views[split].table.flip.shape) != (want[1], k)):
                raise _Corrupt(f"{split} views have shape {tuple(views[split].logits.shape)}")
    except _Corrupt:
        raise
    except Exception as e:
        raise _Corrupt(_why(e)) from e
    return views


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
                for name in (*_files(teacher.record), "meta.json"):
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
