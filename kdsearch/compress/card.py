"""MODEL_CARD.md of a compress folder: what the student scores and costs beside its teacher.

Its "## Files" list is what `kdsearch evaluate` holds the folder to: every file listed must be
there and score the card's test accuracy, within `TOLERANCE_TEXT`.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial

from kdsearch.compress.folder import TOLERANCE_TEXT
from kdsearch.record import TeacherRecord, TrialRecord
from kdsearch.training.latency import CARD_REPEATS


def _latency_line(engine: str, latency: dict) -> str:
    batch_key = next(k for k in latency if k.startswith("batch") and k != "batch1_ms")
    return (f"| {engine} | {latency['threads']} | {latency['batch1_ms'] * 1e3:.0f} µs | "
            f"{latency[batch_key] * 1e3:.2f} µs ({batch_key[5:].split('_')[0]} images) |")


def model_card(meta: dict, teacher: TeacherRecord, trial: FrozenTrial, latency: dict,
               seconds: float, files: list[str], skipped: dict[str, str], command: str,
               ort_latency: dict | None = None) -> str:
    ratio = teacher.params / meta["params"]
    mac_ratio = teacher.macs / meta["macs"] if meta["macs"] else float("inf")

    if ort_latency is None:
        ort_row = ["", "ONNX Runtime: not measured (no model.onnx)."]
    elif "error" in ort_latency:
        ort_row = ["", f"ONNX Runtime: not measured ({ort_latency['error']})."]
    else:
        ort_row = [_latency_line("ONNX Runtime (`model.onnx`)", ort_latency)]
    # A teacher file may not say its size (MACs 0, params 0 when its format hides them).
    t_params = f"{teacher.params:,}" if teacher.params else "unknown"
    t_macs = f"{teacher.macs:,}" if teacher.macs else "unknown"
    sizes = (f"Compression: **{ratio:.1f}x fewer parameters**"
             + (f", {mac_ratio:.1f}x fewer MACs" if teacher.macs else "") + " than the teacher; "
             if teacher.params else "Compression: the teacher's size is unknown; ")
    lines = [
        f"# {meta['description']} ({meta['dataset']}, from study '{meta['study']}' trial "
        f"{meta['trial']})", "",
        "| | student | teacher |", "|---|---:|---:|",
        f"| test accuracy | {meta['test_accuracy']:.4f} | {teacher.test_accuracy:.4f} |",
        f"| parameters | {meta['params']:,} | {t_params} |",
        f"| MACs per image | {meta['macs']:,} | {t_macs} |",
        f"| architecture | `{meta['description']}` | `{teacher.description}` |", "",
        f"{sizes}test accuracy {100 * (meta['test_accuracy'] - teacher.test_accuracy):+.2f} "
        "points." + (f" ({teacher.note}.)" if teacher.note else ""), "",
        "CPU latency per image, measured at export on this machine (one image at a time: "
        f"median of {CARD_REPEATS} warm runs; batched: mean of 3 batches):", "",
        "| runtime | threads | one image | batched, per image |", "|---|---:|---:|---:|",
        _latency_line("PyTorch (`model.pt`)", latency), *ort_row, "",
        "## How it was made", "",
        f"- Search: trial {trial.number} scored val acc {TrialRecord.of(trial).val_accuracy:.4f} "
        f"after {TrialRecord.of(trial).epochs or '?'} epochs on the training split.",
        f"- Retrained from scratch with knowledge distillation (T = {meta['temperature']:.2f}, "
        f"alpha = {meta['alpha']:.2f}; alpha 0 is plain training) on train + validation "
        f"({meta['train_images']:,} images) for {meta['epochs']} epochs "
        f"({meta.get('lr_schedule', 'constant')} learning rate, student seed "
        f"{meta.get('seed', '?')}), "
        f"{seconds:.1f} s.",
        "- Evaluated once on the test set; nothing was selected on it.", "",
        "```", command or "kdsearch compress ...", "```", "",
        "## Files", "",
        *[f"- `{f}`" for f in files],
        *[f"- `{f}` not written: {why}" for f, why in skipped.items()],
        "", "Inputs are raw uint8 images (N, C, H, W) = "
        f"(N, {', '.join(map(str, meta['input_shape']))}); the model normalises them itself. "
        "Check the folder with `kdsearch evaluate DIR`: it scores every file listed above on the "
        f"test set and fails unless each is within {TOLERANCE_TEXT} of the test accuracy above. "
        "Load it without kdsearch with "
        "`torch.export.load('model.pt2').module()` or "
        "`onnxruntime.InferenceSession('model.onnx')` (input `images`, output `logits`).", "",
    ]
    return "\n".join(lines)
