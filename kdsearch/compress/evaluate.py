"""`kdsearch evaluate`: hold a compress folder to its card, without the study.

Every file the card lists must be there, and every copy of the model in it (model.pt,
model.pt2, model.onnx, an older folder's model.torchscript.pt) must score the card's test
accuracy within `TOLERANCE`; a model file the card does not list is a leftover of another model.
Each failure is one line naming the file and a non-zero exit: a folder that passes is one whose
numbers can be trusted. The copies are loaded through `safe_files` and `safe_pt2`, so a swapped file cannot run
code here either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from kdsearch.compress.folder import (
    COPIES,
    MODEL_SUFFIXES,
    TOLERANCE,
    TOLERANCE_TEXT,
    load_model,
    test_identity,
)
from kdsearch.errors import KdsearchError, one_line
from kdsearch.options import Options
from kdsearch.spec import DataSpec
from kdsearch.training import safe_files, safe_pt2
from kdsearch.training.data import Dataset, Split, load_data
from kdsearch.training.engine import EVAL_BATCH, accuracy, resolve_device
from kdsearch.training.latency import onnx_session

CARD = "MODEL_CARD.md"


class FolderError(KdsearchError):
    """A compress folder whose files do not match its card: missing, foreign or disagreeing."""


def _why(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


def listed_files(folder: Path, meta: dict) -> tuple[list[str], float | None]:
    """The files the card lists as written, and the test accuracy it states."""
    card = folder / CARD
    if not card.exists() and not card.is_symlink():
        raise FolderError(f"{card}: missing; a folder compress finished always has one "
                          "(run compress again)")
    text = safe_files.read_regular(card, "model card", FolderError).decode("utf-8", "replace")
    files: list[str] = []
    if "\n## Files\n" in text:
        for line in text.split("\n## Files\n", 1)[1].splitlines():
            m = re.fullmatch(r"- `([^`/]+)`", line.strip())
            if m:
                files.append(m.group(1))
    for name in meta.get("files", []):
        if isinstance(name, str) and "/" not in name and name not in files:
            files.append(name)
    stated = re.search(r"^\| test accuracy \| ([0-9.]+) \|", text, re.MULTILINE)
    return files, float(stated.group(1)) if stated else None


@torch.inference_mode()
def _accuracy_of(forward: Callable[[torch.Tensor], torch.Tensor], split: Split, name: str,
                 classes: int) -> float:
    """Test accuracy of any callable from uint8 images to logits, on the CPU, in batches.

    `engine.accuracy` calls `.eval()`, which an exported program's module refuses (its mode
    was fixed at export), and ONNX Runtime has no module at all.
    """
    correct = 0
    for i in range(0, len(split), EVAL_BATCH):
        x = split.x[i : i + EVAL_BATCH].cpu()
        try:
            out = torch.as_tensor(forward(x))
        except Exception as e:
            raise FolderError(one_line(f"{name}: fails on a batch of shape {tuple(x.shape)}, so it "
                                       f"is not this folder's model ({_why(e)})")) from None
        if tuple(out.shape) != (len(x), classes):
            raise FolderError(f"{name}: returns shape {tuple(out.shape)} for {len(x)} images, "
                              f"expected ({len(x)}, {classes}): not this folder's model")
        correct += int((out.argmax(1) == split.y[i : i + EVAL_BATCH].cpu()).sum())
    return correct / max(len(split), 1)


def _forward(folder: Path, name: str, meta: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """A standalone copy, loaded the way a user without kdsearch would, but checked first."""
    path = folder / name
    if name == "model.pt2":
        program = safe_pt2.load_pt2(path, "model file", FolderError)
        try:
            with safe_pt2.quiet_torch_logs():
                return program.module()
        except Exception as e:
            raise FolderError(one_line(f"{path}: does not load ({_why(e)})")) from None
    if name == "model.onnx":
        safe_files.require_regular(path, "model file", FolderError)
        try:
            session = onnx_session(path)
        except Exception as e:
            raise FolderError(one_line(f"{path}: does not load as ONNX ({_why(e)})")) from None
        inputs = session.get_inputs()
        want = list(meta["input_shape"])
        if (len(inputs) != 1 or inputs[0].type != "tensor(uint8)"
                or [d if isinstance(d, int) else None for d in inputs[0].shape[1:]] != want):
            got = ", ".join(f"{i.type} {i.shape}" for i in inputs)
            raise FolderError(one_line(f"{path}: takes {got}, this folder's model takes uint8 "
                                       f"[N, {', '.join(map(str, want))}]: not this folder's model"))
        feed = inputs[0].name
        return lambda x: torch.from_numpy(session.run(None, {feed: x.numpy()})[0])
    module = safe_files.load_torchscript(path, "model file", FolderError)
    return module.eval()


def evaluate(folder: Path, opts: Options = Options()) -> dict:
    """Test accuracy of a compress folder and of each copy in it, checked against its card.

    Returns the accuracies (`exported` maps each standalone copy to its own); raises
    `FolderError` naming the first file that is missing, foreign, or off the card by more than
    `TOLERANCE` (or one test image).
    """
    folder = Path(folder)
    model, meta = load_model(folder)
    listed, stated = listed_files(folder, meta)
    for name in ["model.pt", "architecture.json", *listed]:
        path = folder / name
        if not path.exists() and not path.is_symlink():
            raise FolderError(f"{path}: listed in {CARD} but missing")
        safe_files.require_regular(path, "model folder file", FolderError)
    for path in sorted(folder.iterdir()):
        if path.name not in listed and path.name != "model.pt" and (
                path.suffix.lower() in MODEL_SUFFIXES or path.name.startswith("model.")):
            raise FolderError(f"{path}: not listed in {CARD}: a file of another model? "
                              "remove it, or run compress again")
    card_acc = float(meta["test_accuracy"])
    if stated is not None and abs(stated - card_acc) > 5e-5:
        raise FolderError(f"{folder / CARD}: states test accuracy {stated:.4f}, "
                          f"architecture.json {card_acc:.4f}: one of them was edited")

    data: Dataset = load_data(DataSpec.model_validate(meta["data"]), opts.data_dir,
                              opts.cache_dir, data_home=opts.data_home, offline=opts.offline)
    same = test_identity(data.test) == meta.get("test_identity")
    device = resolve_device(opts.device)
    acc = accuracy(model.to(device), data.test, device)
    tolerance = max(TOLERANCE, 1 / max(len(data.test), 1) + 1e-9)

    def check(name: str, got: float, want: float, against: str) -> None:
        if abs(got - want) > tolerance:
            raise FolderError(f"{folder / name}: test accuracy {got:.4f}, {against} "
                              f"{want:.4f}: off by more than {TOLERANCE_TEXT}")

    if same:
        check("model.pt", acc, card_acc, "the card says")
    exported = {}
    for name in (n for n in COPIES if n in listed):
        forward = _forward(folder, name, meta)
        exported[name] = _accuracy_of(forward, data.test, str(folder / name), meta["num_classes"])
        # Against the card on its own test set, else against model.pt on this one.
        check(name, exported[name], card_acc if same else acc,
              "the card says" if same else "model.pt scores")
    return {"test_accuracy": acc, "card_test_accuracy": card_acc, "n_test": len(data.test),
            "same_test_set": same, "description": meta["description"], "params": meta["params"],
            "exported": exported, "checked": ["model.pt", *exported], "tolerance": tolerance}
