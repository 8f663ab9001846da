"""A trained teacher written as files that any study can distill from (`[teacher] file`).

A teacher trained by kdsearch lives in the cache, keyed by its data, recipe and seed; a fresh
machine would train it again (an hour or more on a CPU for CIFAR-10's ResNet-20). Exported once
(`kdsearch teacher STUDY --export DIR`), it ships with the repository instead: `NAME.pt2` and
`NAME.onnx` (the network with its normalisation inside: raw pixel values 0..255 in, as float,
NCHW; hence `[teacher.input] scale = 1.0`) and `NAME.md`, its card. Both files pass kdsearch's
own teacher-file checks (safe_pt2: no pickle, no code), which the export runs before it says
it is done.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from kdsearch.compress.folder import export_onnx, export_pt2
from kdsearch.errors import KdsearchError
from kdsearch.training.teacher import Teacher
from kdsearch.training.teacher_file import TeacherFile, load_teacher_file

STUDY_SNIPPET = """[teacher]
file = "{file}"   # relative to the study file

[teacher.input]
scale = 1.0        # the file normalises inside: raw pixel values 0..255, as float
layout = "NCHW"
"""


def export_teacher(teacher: Teacher, out: Path, name: str, command: str) -> list[Path]:
    """Write NAME.pt2, NAME.onnx and NAME.md into `out`, check that both model files load as
    kdsearch teacher files and score as the cache says, and return their paths."""
    if teacher.model is None:
        raise KdsearchError("this study's teacher is already a file: nothing to export")
    out = Path(out).resolve()  # the files are checked through the loader, which wants absolute paths
    targets = [out / f"{name}{suffix}" for suffix in (".pt2", ".onnx", ".md")]
    taken = [str(p) for p in targets if p.exists() or p.is_symlink()]
    if taken:
        raise KdsearchError(f"refusing to overwrite {', '.join(taken)}: remove it first")
    record = teacher.record
    shape = tuple(record.input_shape)
    model = teacher.model.cpu().eval()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        pt2, onnx = Path(tmp) / targets[0].name, Path(tmp) / targets[1].name
        for path, export in ((pt2, export_pt2), (onnx, export_onnx)):
            why = export(model, shape, path, dtype=torch.float32)
            if why is not None:
                raise KdsearchError(f"could not write {path.name}: {why}")
        check = _check(model, [pt2, onnx], shape, record.num_classes)
        (Path(tmp) / targets[2].name).write_text(_card(teacher, name, command, check))
        for path, target in zip((pt2, onnx, Path(tmp) / targets[2].name), targets, strict=True):
            shutil.move(path, target)
    return targets


def _check(model: torch.nn.Module, files: list[Path], shape: tuple[int, ...],
           num_classes: int) -> dict[str, float]:
    """Each file loaded as a teacher file (the safe loaders) against the network itself, on
    random pixels: the largest difference of logits."""
    x = torch.randint(0, 256, (16, *shape), dtype=torch.uint8)
    with torch.inference_mode():
        want = model(x.float())
    out = {}
    for path in files:
        teacher = load_teacher_file(TeacherFile(path=path, scale=1.0), num_classes, shape,
                                    torch.device("cpu"))
        kind = path.suffix.lstrip(".")
        out[kind] = float((teacher(x) - want).abs().max())
        if out[kind] > 1e-3:
            raise KdsearchError(f"{path.name} does not reproduce the teacher (logits differ by "
                                f"{out[kind]:.3g})")
    return out


def _card(teacher: Teacher, name: str, command: str, check: dict[str, float]) -> str:
    r = teacher.record
    recipe = json.dumps(r.recipe, indent=1)
    curve = ", ".join(f"{v:.4f}" for v in r.curve)
    return f"""# {name}: {r.description}

A teacher trained by kdsearch and exported as files (`kdsearch teacher ... --export`).

| | |
|---|---|
| data | {r.dataset} (`{r.data_identity[:16]}`), input {list(r.input_shape)}, {r.num_classes} classes |
| params / MACs | {r.params:,} / {r.macs:,} |
| validation accuracy | {r.val_accuracy:.4f} (best epoch kept) |
| **test accuracy** | **{r.test_accuracy:.4f}** |
| epochs / seconds | {r.epochs} / {r.train_seconds:,.0f} |
| seed | {r.seed} |
| trained | {r.created} |
| cache key | `{r.key}` |
| files checked | {", ".join(f"{k}: logits within {v:.1e} of the network" for k, v in check.items())} |

Command: `{command}`

Recipe:

```json
{recipe}
```

Validation accuracy per epoch: {curve}

Distil from it with (see `[teacher.input]` in docs/GUIDE.md):

```toml
{STUDY_SNIPPET.format(file=name + ".pt2")}```
"""
