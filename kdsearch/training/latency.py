"""Latency, measured in one place: the search's adaptive median, and the model card's figures.

Per-image latency at batch 1, measured warm until its median is known well enough.

The `latency_ms` objective compares students by this number, so it must not be one lucky (or
unlucky) call: the model is warmed up, then timed call by call until the 95% confidence
interval of the median is within `REL_TOL` of it, or the time budget is spent, after at least
`MIN_REPEATS` calls. The interval comes from order statistics (ranks n/2 -/+ 1.96 sqrt(n)/2),
which assume nothing about the shape of the timing distribution (it has a long right tail).

A model's latency depends on its shapes, not its weights, so an untrained student is timed
and the number stands for the trained one: an over-limit student is refused before training.
The number also depends on the machine and on how many threads the worker had, so the method
is recorded beside it (`LatencyResult.method`).

`compress` writes a fixed-recipe figure per runtime on its model card (`card_latency`: one image
at a time, median of 50 warm runs, and batched), the same recipe for PyTorch and ONNX Runtime
so the two rows compare.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

WARMUP_SECONDS = 0.05  # first calls allocate and pick kernels; at least WARMUP_CALLS of them
WARMUP_CALLS = 5
MIN_REPEATS = 30  # fewer calls give a median interval too coarse to trust
MAX_REPEATS = 5_000
REL_TOL = 0.02  # stop once the median's 95% interval is within +-2% of it
BUDGET_SECONDS = 1.0  # per model: a trial's measurement never costs more than this (+ warm-up)


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    method: dict = field(default_factory=dict)  # how it was measured: stored on the trial


def median_interval(times: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median of `times`."""
    xs = sorted(times)
    n = len(xs)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half))
    return xs[lo], xs[hi]


@torch.inference_mode()
def measure_latency(model: nn.Module, input_shape: tuple[int, ...], device: torch.device,
                    budget_s: float = BUDGET_SECONDS, min_repeats: int = MIN_REPEATS,
                    rel_tol: float = REL_TOL) -> LatencyResult:
    """Median milliseconds per uint8 image at batch 1 on `device` (the model is moved there)."""
    was_training = model.training
    model.to(device).eval()
    gen = torch.Generator().manual_seed(0)  # never touches the global RNG a trial is seeded by
    image = torch.randint(0, 256, (1, *input_shape), dtype=torch.uint8, generator=gen).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # Warm-up: allocator, kernel choice, caches.
    start = time.perf_counter()
    calls = 0
    while calls < WARMUP_CALLS or time.perf_counter() - start < WARMUP_SECONDS:
        model(image)
        calls += 1
    sync()

    # Time call by call until the median is pinned down, the budget is spent, or the cap.
    times: list[float] = []
    stopped = "repeat cap"
    begin = time.perf_counter()
    while len(times) < MAX_REPEATS:
        t0 = time.perf_counter()
        model(image)
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and len(times) % 10 == 0:
            lo, hi = median_interval(times)
            if (hi - lo) / 2 <= rel_tol * statistics.median(times):
                stopped = f"median's 95% interval within {rel_tol:.0%}"
                break
            if time.perf_counter() - begin >= budget_s:
                stopped = f"time budget {budget_s:g} s"
                break
    model.train(was_training)
    median = statistics.median(times)
    lo, hi = median_interval(times)
    method = {
        "statistic": "median per image, batch 1, uint8 input, warm",
        "device": str(device), "threads": torch.get_num_threads(), "repeats": len(times),
        "warmup_calls": calls, "ci95_ms": [round(lo * 1e3, 6), round(hi * 1e3, 6)],
        "stopped": stopped, "torch": torch.__version__,
    }
    return LatencyResult(median * 1e3, method)


# --- the model card's figures -------------------------------------------------------------

CARD_REPEATS = 50  # one-image calls timed for the card's median
CARD_BATCH = 256  # images per call for the card's batched figure


def card_latency(run: Callable[[Any], Any], one: Any, many: Any, repeats: int = CARD_REPEATS,
                 batch: int = CARD_BATCH) -> dict[str, float]:
    """Milliseconds per image of `run` on one image (median) and on a batch (mean of 3 calls)."""
    for _ in range(5):  # warm-up: allocator, kernels
        run(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - start)
    run(many)
    start = time.perf_counter()
    for _ in range(3):
        run(many)
    batched = (time.perf_counter() - start) / (3 * batch)
    return {"batch1_ms": statistics.median(times) * 1e3,
            f"batch{batch}_ms_per_image": batched * 1e3, "threads": torch.get_num_threads()}


@torch.inference_mode()
def cpu_latency(model: nn.Module, input_shape: tuple[int, int, int], repeats: int = CARD_REPEATS,
                batch: int = CARD_BATCH) -> dict[str, float]:
    """`card_latency` of a PyTorch model on the CPU, on random uint8 images."""
    model = model.cpu().eval()
    gen = torch.Generator().manual_seed(0)
    one = torch.randint(0, 256, (1, *input_shape), dtype=torch.uint8, generator=gen)
    many = torch.randint(0, 256, (batch, *input_shape), dtype=torch.uint8, generator=gen)
    return card_latency(model, one, many, repeats, batch)


def ort_providers(device, available) -> list:
    """ONNX Runtime's providers for a kdsearch device: CUDA on the GPU that `--device cuda:N`
    picked for torch (ORT would otherwise take GPU 0), with the CPU behind it."""
    device = torch.device(device)
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        index = device.index
        if index is None:  # plain "cuda": the GPU select_device made current
            index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    return providers


def onnx_session(path: Path, device="cpu"):
    """An ONNX Runtime session with the threads torch was given, on `device`, quiet.

    Every session kdsearch opens comes from here, so ORT's own C++ log lines (warnings written
    straight to stderr) never reach the terminal: errors reach the user as kdsearch's one line.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # also quiets what ORT logs before the options apply
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: graph-optimiser notes are not the user's
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=ort_providers(device, ort.get_available_providers()))


def onnx_latency(path: Path, input_shape: tuple[int, int, int], repeats: int = CARD_REPEATS,
                 batch: int = CARD_BATCH) -> dict[str, float]:
    """`cpu_latency`'s measurement under ONNX Runtime: what a deployment without PyTorch sees."""
    import numpy as np

    session = onnx_session(path)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, *input_shape), dtype=np.uint8)
    many = rng.integers(0, 256, (batch, *input_shape), dtype=np.uint8)
    return card_latency(lambda x: session.run(None, {name: x}), one, many, repeats, batch)
