"""Does a student train faster on one CPU thread or on all of them? The calibration behind
`kdsearch.training.engine.ONE_THREAD_MAX_MACS`.

    python benchmarks/bench_threads.py

Times a training step (batch 128, Adam, channels_last weights for CNNs, as the engine does)
of MLPs, CNNs, ResNet-8 (full and half width) and a MobileNetV2-block student on random data,
at one thread and at every core, the two settings interleaved per model; prints ms per step
(best of the repeats) and the speed-up of all cores over one. Small MLPs lose with more
threads (each tiny matrix product pays the threads' hand-off); CNNs and large MLPs gain.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the kdsearch CLI does, before torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdsearch.architecture import MLPArch, MobileNetArch, ResNetArch  # noqa: E402
from kdsearch.search.space import cnn_arch  # noqa: E402
from kdsearch.study.workers import available_cores  # noqa: E402
from kdsearch.training.engine import ONE_THREAD_MAX_MACS, train_threads  # noqa: E402
from kdsearch.training.models import build_model  # noqa: E402

BATCH = 128


def step_ms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    opt = torch.optim.Adam(model.parameters(), fused=True)
    for k in range(steps + 3):
        if k == 3:
            t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / steps * 1e3


def main() -> None:
    cores = available_cores()
    print(f"torch {torch.__version__}, {cores} cores, batch {BATCH}; one-thread rule: MLPs under "
          f"{ONE_THREAD_MAX_MACS / 1e6:.0f}M multiply-accumulates per batch", flush=True)
    mnist, cifar = (1, 28, 28), (3, 32, 32)
    models = [(f"mlp {w}-{w}", MLPArch(hidden=[w, w]), mnist, steps)
              for w, steps in ((32, 300), (128, 300), (400, 150), (800, 80), (1200, 50))]
    models += [(f"cnn {c}-{c}-{2 * c}-{2 * c} + 128", cnn_arch(2, 2, c, 2, [3] * 4, 128, 32), cifar, steps)
               for c, steps in ((4, 40), (8, 30), (16, 20))]
    # The residual and depthwise families (batch norm, residual additions, depthwise convs).
    models += [(f"resnet-8 w{w}", ResNetArch(blocks=[1, 1, 1], base_width=w, shortcut="B"), cifar, 15)
               for w in (8, 16)]
    models += [("mobilenet 1-1-1 w16 t4", MobileNetArch(blocks=[1, 1, 1], base_width=16, expansion=4),
                cifar, 8)]
    for name, arch, shape, steps in models:
        torch.manual_seed(0)
        model = build_model(arch, shape, 10)
        if shape == cifar:
            model.to(memory_format=torch.channels_last)
        x = torch.randint(0, 256, (BATCH, *shape), dtype=torch.uint8)
        y = torch.randint(0, 10, (BATCH,))
        one, every = [], []
        for _ in range(2):
            one.append(step_ms(model, x, y, steps, 1))
            every.append(step_ms(model, x, y, steps, cores))
        torch.set_num_threads(cores)
        macs = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        picked = train_threads(model, BATCH, torch.device("cpu"))
        print(f"{name:24} 1 thread {min(one):7.2f} ms   {cores} threads {min(every):7.2f} ms   "
              f"{cores}-thread speed-up {min(one) / min(every):.2f}   engine picks {picked}"
              + (f"   (dense MACs/batch {macs * BATCH / 1e6:.0f}M)" if shape == mnist else ""),
              flush=True)


if __name__ == "__main__":
    main()
