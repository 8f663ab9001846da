"""Which engine options pay on this machine? Each variant of one training loop, interleaved.

    python benchmarks/bench_engine_options.py cifar plain,cl,wcl,fused,prenorm,prenorm_fused_wcl 1 6
    python benchmarks/bench_engine_options.py mnist plain,sync,prenorm,fused,prenorm_fused 1 15

Arguments: workload (cifar: the seed's 79,442-param CNN on 2,560 random 32x32x3 images;
mnist: the 26,506-param MLP 32-32 on 12,800 random 28x28 images; resnet: ResNet-8, 78,042
params, and mobilenet: MobileNetV2 blocks 1-1-1 w16 t4, 22,074 params, each on 1,280 random
32x32x3 images), comma-separated variants,
torch threads, rounds. A variant name is a set of flags:
  prenorm  inputs normalised once to float (the model without its Normalize layer)
  fused    fused Adam              sync     a host sync per batch (isfinite + float(loss))
  cl       channels_last weights and inputs;  wcl: channels_last weights only
  compile  torch.compile on the model         bf16: CPU autocast to bfloat16
  sgd      SGD with Nesterov momentum instead of Adam
Each round runs one epoch of every variant in turn; best and median images/s are printed.
These measured the choices in kdsearch/training/engine.py; see docs/PERFORMANCE.md.
"""

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kdsearch.architecture import MLPArch, MobileNetArch, ResNetArch  # noqa: E402
from kdsearch.search.space import cnn_arch  # noqa: E402
from kdsearch.training.distill import kd_loss  # noqa: E402
from kdsearch.training.models import build_model  # noqa: E402

which, variants = sys.argv[1], sys.argv[2].split(",")
threads, reps = int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
if which == "cifar":
    shape, arch, N = (3, 32, 32), cnn_arch(2, 2, 8, 2, [3] * 4, 128, 32), 2560
elif which == "resnet":
    shape, arch, N = (3, 32, 32), ResNetArch(blocks=[1, 1, 1], base_width=16, shortcut="B"), 1280
elif which == "mobilenet":
    shape, arch, N = (3, 32, 32), MobileNetArch(blocks=[1, 1, 1], base_width=16, expansion=4), 1280
else:
    shape, arch, N = (1, 28, 28), MLPArch(hidden=[32, 32]), 12800
x = torch.randint(0, 256, (N, *shape), dtype=torch.uint8)
y, t = torch.randint(0, 10, (N,)), torch.randn(N, 10)
BS = 128


def setup(variant):
    torch.manual_seed(0)
    model = build_model(arch, shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
    if "sgd" in variant:  # the new families' recipe: SGD with Nesterov momentum
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                              fused=("fused" in variant) or None)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=("fused" in variant) or None)
    net, xs = model, x
    if "prenorm" in variant:
        with torch.no_grad():
            xs = model[0](x)
        net = model[1:]
    if "cl" in variant:
        net = net.to(memory_format=torch.channels_last)
        if "wcl" not in variant:
            xs = xs.contiguous(memory_format=torch.channels_last)
    if "compile" in variant:
        net = torch.compile(net)
    return net, opt, xs


def epoch(variant, net, opt, xs):
    order = torch.randperm(N)
    for i in range(0, N, BS):
        idx = order[i : i + BS]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in variant):
            loss = kd_loss(net(xs[idx]), t[idx], y[idx], 4.0, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if "sync" in variant:
            if not torch.isfinite(loss):
                raise SystemExit("non-finite loss")
            float(loss.detach())


state = {}
for v in variants:
    state[v] = setup(v)
    t0 = time.perf_counter()
    epoch(v, *state[v])
    print(f"{v} first epoch (warm-up, compile included) {time.perf_counter() - t0:.2f} s")
times = {v: [] for v in variants}
for _ in range(reps):
    for v in variants:
        t0 = time.perf_counter()
        epoch(v, *state[v])
        times[v].append(time.perf_counter() - t0)
for v in variants:
    print(
        f"{which} {v:24} threads={threads}: best {N / min(times[v]):>9,.0f} images/s  "
        f"median {N / statistics.median(times[v]):>9,.0f}"
    )
