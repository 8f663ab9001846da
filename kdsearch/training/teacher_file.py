"""A teacher the user already has, from a file: TorchScript, `torch.export`, ONNX or torchvision.

Users come with a trained teacher, often not one of kdsearch's making (a Keras model exported
to ONNX, say), so kdsearch runs the file as it is and only needs to know what the file expects
as input: how uint8 pixels are scaled (`scale`), normalised (`mean`, `std`) and laid out
(`layout`). A loaded file becomes a `FileTeacher`: uint8 (N, C, H, W) batch in, float32 logits
out, whatever the format underneath.

Every problem a user can cause is found at load time, before any trial, and reported as one
`TeacherFileError` line naming the file: missing, does not load, rejects the input shape,
wrong number of classes, non-finite outputs. Loading runs one batch of zero images for that.

A teacher file never runs Python code: only a regular file is read (a FIFO or a device would
hang the hash), and every loader goes through `safe_files` (`safe_pt2` for .pt2), which inspects the archive first and
refuses anything that would be unpickled, evaluated or executed: TorchScript goes through
`torch.jit.load`, `torch.export` archives through `torch.export.load` with nothing pickled left
in them, ONNX through ONNX Runtime, and torchvision weights through
`torch.load(weights_only=True)`, which reads tensors only.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from kdsearch.errors import TeacherFileError, one_line
from kdsearch.training import safe_files
from kdsearch.training.teacher_formats import (
    describe,
    describe_onnx,
    load_export,
    load_onnx,
    load_torchscript,
    load_torchvision,
)

Format = Literal["torchscript", "export", "onnx", "torchvision"]
Layout = Literal["NCHW", "NHWC"]
FORMATS: tuple[str, ...] = get_args(Format)
LAYOUTS: tuple[str, ...] = get_args(Layout)

PROBE_BATCH = 2  # zero images run at load: a batch of 1 would hide a model that drops the batch dim
EVAL_BATCH = 512  # images per forward pass in `file_logits`: large enough to amortise ONNX's per-call cost


@dataclass(frozen=True)
class TeacherFile:
    """Where a teacher file is and what it expects as input.

    `path` is the model file; for `torchvision` it is the state-dict weights for that
    architecture. Relative paths are resolved (against the study file) before this is built,
    so the same object always names the same file.

    Input: uint8 pixels are divided by `scale`, then normalised per channel with `mean` and
    `std` (in the scaled units), then fed in `layout`. The defaults feed [0, 1] floats in
    NCHW, what `torchvision.transforms.ToTensor` produces; Keras exports usually want NHWC.
    """

    path: Path
    format: Format | None = None  # None: told by the suffix, or by the archive's content
    torchvision: str | None = None  # a torchvision.models name; `path` then holds its weights
    scale: float = 255.0  # 255: inputs in [0, 1]; 1: raw 0..255
    mean: tuple[float, ...] | None = None  # per channel, after scaling; None: 0
    std: tuple[float, ...] | None = None  # per channel, after scaling; None: 1
    layout: Layout = "NCHW"
    # the output is the mean over each image and its left-right mirror (a two-view ensemble)
    flip_average: bool = False

    def __post_init__(self) -> None:
        # Lists from TOML become tuples, so the object stays hashable and compares by value.
        object.__setattr__(self, "path", Path(self.path))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        where = str(self.path)
        if not self.path.is_absolute():
            raise TeacherFileError(f"{where}: teacher file path must be absolute (resolve it against the study file)")
        if self.format is not None and self.format not in FORMATS:
            raise TeacherFileError(f"{where}: format: expected one of {', '.join(FORMATS)}, found {self.format!r}")
        if self.torchvision is not None and self.format not in (None, "torchvision"):
            raise TeacherFileError(f"{where}: format {self.format!r} with torchvision = {self.torchvision!r}: "
                                   f"a torchvision teacher reads a state dict, leave format out")
        if self.format == "torchvision" and self.torchvision is None:
            raise TeacherFileError(f"{where}: format 'torchvision' needs torchvision = MODEL_NAME")
        if self.layout not in LAYOUTS:
            raise TeacherFileError(f"{where}: layout: expected one of {', '.join(LAYOUTS)}, found {self.layout!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise TeacherFileError(f"{where}: scale: expected a positive number, found {self.scale!r}")
        if self.std is not None and not all(math.isfinite(s) and s > 0 for s in self.std):
            raise TeacherFileError(f"{where}: std: expected positive numbers, found {list(self.std)}")
        if self.mean is not None and not all(math.isfinite(m) for m in self.mean):
            raise TeacherFileError(f"{where}: mean: expected finite numbers, found {list(self.mean)}")

    def identity(self) -> dict[str, Any]:
        """What shapes the logits, for a cache key: the file's content and the input settings.

        The content hash, not the path or the modification time: a re-exported file under the
        same name gets new logits, a copy under another name reuses them. `flip_average` is
        named only when set, so the keys of teachers cached before it existed stay valid.
        """
        extra = {"flip_average": True} if self.flip_average else {}
        return {
            "sha256": file_digest(self.path),
            "format": self.format,
            "torchvision": self.torchvision,
            "scale": self.scale,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "layout": self.layout,
            **extra,
        }

    def describe(self, fmt: str) -> str:
        """'onnx t.onnx', 'torchvision resnet18 w.pt, flip-averaged': how the teacher's record
        and the reports name it; `fmt` is the format as loaded (a suffix can be silent)."""
        kind = f"torchvision {self.torchvision}" if self.torchvision is not None else fmt
        return f"{kind} {self.path.name}{', flip-averaged' if self.flip_average else ''}"


def file_digest(path: Path) -> str:
    """sha256 of the file's content, read in 1 MiB chunks so a large teacher is never held whole."""
    h = hashlib.sha256()
    with safe_files.open_regular(Path(path), "teacher file", TeacherFileError) as f:
        try:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        except OSError as e:
            raise TeacherFileError(one_line(f"{path}: cannot read teacher file: {e.strerror or e}")) from None
    return h.hexdigest()


# --- format -------------------------------------------------------------------------------


def resolve_format(tf: TeacherFile) -> Format:
    """The declared format, else the one the suffix or the archive's content tells.

    `.pt` and `.pth` name TorchScript archives and `torch.save` state dicts alike, so a zip is
    opened and its member names read (never unpickled): TorchScript archives hold `code/`,
    `torch.export` archives hold `archive_format`, state dicts hold neither.
    """
    if tf.torchvision is not None:
        return "torchvision"
    if tf.format is not None:
        return tf.format
    suffix = tf.path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "export"
    ask = 'set format = "torchscript", "export" or "onnx"'
    safe_files.require_regular(tf.path, "teacher file", TeacherFileError)
    try:
        with zipfile.ZipFile(tf.path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        raise TeacherFileError(f"{tf.path}: cannot tell the teacher file's format from its suffix "
                               f"'{suffix}' or its content: {ask}") from None
    if any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names):
        return "export"
    if any(n.endswith("data.pkl") for n in names):
        raise TeacherFileError(f"{tf.path}: looks like a state dict (torch.save), not a model: for a torchvision "
                               f"architecture set torchvision = NAME with weights = this file; otherwise save "
                               f"the model with torch.jit.save, torch.export.save or as ONNX")
    raise TeacherFileError(f"{tf.path}: cannot tell the teacher file's format from its content: {ask}")


# --- the runner ---------------------------------------------------------------------------


class _RunFailed(TeacherFileError):
    """The file's runtime raised on a batch: at load time, most likely a rejected input shape."""


class FileTeacher:
    """A loaded teacher file: uint8 (N, C, H, W) in, float32 (N, classes) logits on the CPU out.

    Built by `load_teacher_file`, which has already run it once and checked what it returns.
    A graph exported with a fixed batch size (as `torch.export` and many ONNX exporters do by
    default) is fed batches of exactly that size, the last one padded with zeros.
    """

    def __init__(self, tf: TeacherFile, fmt: Format, forward: Callable[[torch.Tensor], Any],
                 num_classes: int, input_shape: tuple[int, int, int], device: torch.device,
                 fixed_batch: int | None):
        self.file = tf
        self.format: Format = fmt
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.device = device
        self.fixed_batch = fixed_batch
        # True when the file returns softmax probabilities (a Keras model ending in softmax):
        # their log is then returned, which differs from the logits only by a per-row constant,
        # so softmax(log p / T) equals softmax(z / T) for every temperature T.
        self.probabilities = False
        self._forward = forward
        c = input_shape[0]
        mean = tf.mean if tf.mean is not None else (0.0,)
        std = tf.std if tf.std is not None else (1.0,)
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, c):
                raise TeacherFileError(f"{tf.path}: {name}: expected {c} values (one per channel) or 1, "
                                       f"found {len(values)}")
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW pixels -> the float tensor the file expects: scaled, normalised, laid out."""
        x = (x.to(self.device).float() / self.file.scale - self._mean) / self._std
        return x.permute(0, 2, 3, 1).contiguous() if self.file.layout == "NHWC" else x

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        """The file's first output on prepared inputs, as float32 on the CPU."""
        out = self._forward(x)
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise TeacherFileError(f"{self.file.path}: returns {type(out).__name__}, expected a tensor of logits")
        return out.float().cpu()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (log-probabilities for a file that outputs probabilities) of uint8 NCHW images;
        with `flip_average`, their mean over each image and its mirror."""
        if not self.file.flip_average:
            return self._once(x)
        return (self._once(x) + self._once(torch.flip(x, dims=(3,)))) / 2

    def _once(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xs = self.prepare(x)
        try:
            if self.fixed_batch is None:
                out = self._raw(xs)
            else:
                b = self.fixed_batch
                pad = (-n) % b
                if pad:
                    xs = torch.cat([xs, xs.new_zeros((pad, *xs.shape[1:]))])
                out = torch.cat([self._raw(xs[i : i + b]) for i in range(0, n + pad, b)])[:n]
        except TeacherFileError:
            raise
        except Exception as e:  # whatever the runtime raises on this batch
            why = describe_onnx if self.format == "onnx" else describe
            raise _RunFailed(one_line(f"{self.file.path}: fails on a batch of shape {tuple(xs.shape)} "
                                            f"({self.file.layout}): {why(e)}")) from None
        if out.shape != (n, self.num_classes):
            if out.ndim == 2 and out.shape[0] == n:
                raise TeacherFileError(f"{self.file.path}: wrong number of classes: expected {self.num_classes}, "
                                       f"found {out.shape[1]}")
            raise TeacherFileError(f"{self.file.path}: returns shape {tuple(out.shape)} for {n} images, "
                                   f"expected ({n}, {self.num_classes}) logits")
        if self.probabilities:
            out = out.clamp_min(1e-30).log()  # a softmax that underflowed to 0 stays finite
        return out


def load_teacher_file(tf: TeacherFile, num_classes: int, input_shape: tuple[int, int, int],
                      device: torch.device | None = None) -> FileTeacher:
    """Load a teacher file and check it on one batch of zero images, before any trial.

    Args:
        tf: the file and its input settings.
        num_classes: classes of the data; the file must return exactly this many logits.
        input_shape: (C, H, W) of the data's images.
        device: where a torch teacher runs; an ONNX teacher uses the CUDA provider when this is
            a CUDA device and ONNX Runtime has it, else the CPU.

    Raises:
        TeacherFileError: one line naming the file, if it is missing, does not load, rejects
            the input shape, returns the wrong number of classes or non-finite numbers.
    """
    device = device or torch.device("cpu")
    if not os.path.lexists(tf.path):
        raise TeacherFileError(f"{tf.path}: teacher file not found")
    safe_files.require_regular(tf.path, "teacher file", TeacherFileError)
    fmt = resolve_format(tf)
    loader = {"torchscript": load_torchscript, "export": load_export, "onnx": load_onnx,
              "torchvision": load_torchvision}[fmt]
    forward, fixed_batch = loader(tf, num_classes, input_shape, device)
    teacher = FileTeacher(tf, fmt, forward, num_classes, input_shape, device, fixed_batch)
    _probe(teacher)
    return teacher


def _probe(teacher: FileTeacher) -> None:
    """Run zero images once: input shape, class count and finiteness fail here, not in a trial."""
    tf = teacher.file
    n = teacher.fixed_batch or PROBE_BATCH
    x = torch.zeros((n, *teacher.input_shape), dtype=torch.uint8)
    try:
        out = teacher(x)
    except _RunFailed as e:
        # Suggest the other layout only if the file runs on it: a wrong image size is no layout issue.
        other = "NHWC" if tf.layout == "NCHW" else "NCHW"
        swapped = FileTeacher(replace(tf, layout=other), teacher.format, teacher._forward, teacher.num_classes,
                              teacher.input_shape, teacher.device, teacher.fixed_batch)
        try:
            swapped(x)
        except _RunFailed:
            raise TeacherFileError(str(e)) from None
        except TeacherFileError:
            pass  # it runs on the other layout, whatever else is wrong
        raise TeacherFileError(f"{e}; an {other} model? set layout = \"{other}\"") from None
    if not torch.isfinite(out).all():
        raise TeacherFileError(f"{tf.path}: returns non-finite outputs (NaN or inf) on zero images")
    teacher.probabilities = bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones(n), atol=1e-4))


@torch.inference_mode()
def file_logits(teacher: FileTeacher, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """The teacher's logits for a whole split of uint8 images, float32 (N, classes) on the CPU.

    Raises:
        TeacherFileError: if the file fails on a batch or returns NaN or inf for some image.
    """
    outs = []
    for i in range(0, x.shape[0], batch_size):
        out = teacher(x[i : i + batch_size])
        if not torch.isfinite(out).all():
            bad = i + int((~torch.isfinite(out)).any(1).nonzero()[0])
            raise TeacherFileError(f"{teacher.file.path}: returns non-finite outputs (NaN or inf) for image {bad}")
        outs.append(out)
    return torch.cat(outs) if outs else torch.empty((0, teacher.num_classes))
