"""The folder `kdsearch compress` writes: its files, written all at once, and read back safely.

    model.pt             state dict (torch.load(..., weights_only=True))
    architecture.json    architecture, input shape, classes, normalisation, data spec, files
    model.pt2            torch.export program (torch.export.load; no kdsearch needed)
    model.onnx           where the ONNX exporter works here (runs under ONNX Runtime)
    MODEL_CARD.md        accuracy, size, speed, the teacher's numbers, the exact command

The folder is written in a temporary folder beside the target and renamed into place, so a
killed `compress` leaves either the old folder or the new one, never half of one. `model.pt2`
is exported on zero images and saved without sample inputs: it carries the program and its
weights, nothing pickled and no data.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdsearch.architecture import parse_arch
from kdsearch.errors import KdsearchError, one_line
from kdsearch.training import safe_files, safe_pt2
from kdsearch.training.data import Split
from kdsearch.training.models import build_model

FORMAT = 1  # of architecture.json
COPIES = ("model.pt2", "model.onnx", "model.torchscript.pt")  # standalone copies of model.pt
# Suffixes of files that hold a model: one in the folder that the card does not list is a
# leftover of another model, and `evaluate` refuses the folder rather than vouch for it.
MODEL_SUFFIXES = (".pt", ".pt2", ".pth", ".onnx", ".ptl", ".torchscript", ".safetensors", ".bin")
# How far a copy's test accuracy may stray from the card's before `evaluate` fails: copies of one
# model differ only by float rounding, which can flip a near-tie, never half a point of a test set.
TOLERANCE = 0.005
TOLERANCE_TEXT = "0.5 points (or one test image, whichever is more)"


def test_identity(split: Split) -> str:
    """A hash of the test images and labels: `evaluate` checks it sees the same test set."""
    h = hashlib.sha256(str(tuple(split.x.shape)).encode())
    h.update(split.x.contiguous().numpy().tobytes())
    h.update(split.y.contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def export_pt2(model: nn.Module, input_shape: tuple[int, ...], path: Path,
               dtype: torch.dtype = torch.uint8) -> str | None:
    """A `torch.export` program with a dynamic batch size, traced on two zero images and saved
    without them (`safe_pt2.save_pt2`); None, or why it could not be written. A teacher file is
    traced on float pixels (`dtype`): kdsearch feeds teacher files float tensors."""
    example = torch.zeros((2, *input_shape), dtype=dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                model.cpu().eval(), (example,),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},))
            safe_pt2.save_pt2(program, path)
        return None
    except Exception as e:  # noqa: BLE001 - an optional artefact; say why and go on
        path.unlink(missing_ok=True)
        return _why(e)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path,
                dtype: torch.dtype = torch.uint8) -> str | None:
    """One self-contained ONNX file with a dynamic batch size; None, or why not."""
    example = torch.zeros((1, *input_shape), dtype=dtype)
    try:
        # Students are small: no external data. No exporter chatter on stdout.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.cpu().eval(), (example,), str(path), input_names=["images"],
                              output_names=["logits"], verbose=False, external_data=False,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        return None
    except Exception as e:  # noqa: BLE001 - ONNX needs the optional onnx/onnxscript packages
        path.unlink(missing_ok=True)
        return f"{_why(e)} (pip install onnx onnxscript to get model.onnx)"


def is_model_folder(path: Path) -> bool:
    return (path / "architecture.json").is_file()


def check_out(out: Path) -> None:
    """Refuse an --out that compress could not replace, before any training is spent on it:
    an existing file, a folder with other content, a parent that cannot be written."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise KdsearchError(f"--out {out}: an existing file, not a folder; name a new folder "
                            "(or an earlier compress folder, which is replaced)")
    if out.is_dir():
        try:
            empty = next(out.iterdir(), None) is None
        except OSError as e:
            raise KdsearchError(f"--out {out}: cannot read ({e.strerror or e})") from None
        if not empty and not is_model_folder(out):
            raise KdsearchError(f"--out {out}: a folder with other files (no architecture.json); "
                                "compress replaces only an empty folder or an earlier compress folder")
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KdsearchError(f"--out {out}: cannot create {parent} ({e.strerror or e})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KdsearchError(f"--out {out}: cannot write in {parent}")


def write_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Have `write` fill a temporary folder beside `out`, then rename it into place."""
    out = Path(out)
    check_out(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if out.is_dir():  # an earlier compress folder (check_out allowed it) or an empty one
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_meta(folder: Path) -> dict:
    """architecture.json, checked for its format."""
    folder = Path(folder)
    where = folder / "architecture.json"
    if not where.exists() and not where.is_symlink():
        raise KdsearchError(f"{folder}: not a kdsearch model folder (no architecture.json)")
    try:
        meta = json.loads(safe_files.read_regular(where, "model folder file"))
    except (ValueError, UnicodeDecodeError) as e:
        raise KdsearchError(one_line(f"{where}: not JSON ({e})")) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise KdsearchError(f"{where}: format {found!r}, expected {FORMAT}")
    return meta


def load_model(folder: Path) -> tuple[nn.Module, dict]:
    """The model in a compress folder (model.pt, weights only) and its architecture.json."""
    folder = Path(folder)
    meta = read_meta(folder)
    try:
        arch = parse_arch(meta["architecture"])
        model = build_model(arch, tuple(meta["input_shape"]), meta["num_classes"],
                            tuple(meta["mean"]), tuple(meta["std"]))
    except KdsearchError:
        raise
    except Exception as e:
        raise KdsearchError(one_line(f"{folder}/architecture.json: no model can be built from "
                                     f"it ({_why(e)})")) from None
    state = safe_files.load_state_dict(folder / "model.pt", "model file")
    try:
        model.load_state_dict(state)
    except Exception as e:  # truncated or mismatched weights
        raise KdsearchError(one_line(f"{folder}/model.pt: does not fit architecture.json "
                                     f"({_why(e)})")) from None
    return model.eval(), meta
