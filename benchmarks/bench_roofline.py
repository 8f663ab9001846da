"""How close does a student's training come to what one core can do? (issue 20)

    python benchmarks/bench_roofline.py            # ResNet-8, one thread, batch 128

The machine's limit: a single-thread fp32 matrix product (1024 x 1024, torch.mm), in
multiply-accumulates per second. A trial's rate: the same thread training ResNet-8 (MLPerf
Tiny's, 78,042 params, 12.5M MACs an image) on 32x32 images in kdsearch's layout
(channels_last on the CPU, as the engine picks), a step counted as three forward passes of MACs
(the forward, and the backward's gradients of the inputs and of the weights). Rounds of both
alternate, so that load from other processes hits both alike; each rate is its median round.

The last line is `trial_macs_per_s=<x> gemm_macs_per_s=<y> fraction=<x/y>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdsearch.architecture import MobileNetArch, ResNetArch  # noqa: E402
from kdsearch.training.distill import kd_loss  # noqa: E402
from kdsearch.training.models import build_model, count_macs  # noqa: E402

SHAPE, CLASSES = (3, 32, 32), 10
STUDENTS = {
    "resnet8": ResNetArch(blocks=[1, 1, 1], base_width=16, shortcut="B"),
    "resnet8-half": ResNetArch(blocks=[1, 1, 1], base_width=8, shortcut="B"),
    "mobilenet": MobileNetArch(blocks=[1, 1, 1], base_width=16, expansion=4),
}


def gemm_rate(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return repeats * n**3 / (time.perf_counter() - start)


def train_rate(arch, batch: int, steps: int) -> float:
    model = build_model(arch, SHAPE, CLASSES).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    x = torch.randn(batch, *SHAPE).to(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (batch,))
    teacher = torch.randn(batch, CLASSES)
    macs = count_macs(arch, SHAPE, CLASSES)
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps: oneDNN picks its kernels on the first
            start = time.perf_counter()
        loss = kd_loss(model(x), teacher, y, 4.0, 0.9)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return 3 * macs * batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", choices=sorted(STUDENTS), default="resnet8")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    arch = STUDENTS[args.student]
    gemm, trial = [], []
    for r in range(args.rounds):
        gemm.append(gemm_rate())
        trial.append(train_rate(arch, args.batch, args.steps))
        print(f"round {r + 1}: GEMM {gemm[-1] / 1e9:.2f} GMAC/s, {args.student} training "
              f"{trial[-1] / 1e9:.2f} GMAC/s", flush=True)
    g, t = statistics.median(gemm), statistics.median(trial)
    print(f"{args.student}: {count_macs(arch, SHAPE, CLASSES):,} MACs an image, "
          f"{t / (3 * count_macs(arch, SHAPE, CLASSES)):.0f} images/s on one thread")
    print(f"trial_macs_per_s={t:.3e} gemm_macs_per_s={g:.3e} fraction={t / g:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
