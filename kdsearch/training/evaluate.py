"""Evaluation in large batches under inference mode: logits and accuracy of a whole split."""

from __future__ import annotations

import torch
from torch import nn

from kdsearch.training.data import Split

# Evaluation batch: 512 keeps the widest CNN students' activations small (peak RSS of a CIFAR-10
# trial of a 32-32-64-64-128-128 student: 1,219 MiB at 512 against 1,881 MiB at 2,048), at the
# same speed and with bit-identical logits (measured on the CIFAR-10 teacher's test logits).
EVAL_BATCH = 512
# A convolutional network on the CPU, though, evaluates faster in batches of 64 than of 512:
# 1.1-3.2x for the residual and MobileNet students and the ResNet-20 teacher, 1.5x for the
# seed's plain CNN on one thread, 0.94x on two (benchmarks/bench_eval_batch.py, docs/PERFORMANCE.md
# section 1): a batch's activations then stay nearer the caches (a MobileNet block's expanded map
# at 512 images is 300 MB). MLPs gain nothing from it; GPUs want large batches.
EVAL_BATCH_CNN_CPU = 64


def is_cnn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def eval_batch(model: nn.Module, device: torch.device) -> int:
    """Images per forward pass when evaluating `model` on `device` (see EVAL_BATCH_CNN_CPU)."""
    return EVAL_BATCH_CNN_CPU if device.type == "cpu" and is_cnn(model) else EVAL_BATCH


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, device: torch.device) -> torch.Tensor:
    """Logits for a whole split, batch by batch, as float32 on the CPU."""
    model.eval()
    step = eval_batch(model, device)
    outs = [model(split.x[i : i + step].to(device)).float().cpu()
            for i in range(0, len(split), step)]
    return torch.cat(outs) if outs else torch.empty(0)


@torch.inference_mode()
def accuracy(model: nn.Module, split: Split, device: torch.device) -> float:
    model.eval()
    correct, step = 0, eval_batch(model, device)
    for i in range(0, len(split), step):
        pred = model(split.x[i : i + step].to(device)).argmax(1)
        correct += int((pred == split.y[i : i + step].to(device)).sum())
    return correct / max(len(split), 1)
