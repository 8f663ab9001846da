"""Does channels_last pay for the teacher's logits on the fixed views, as it does in training?

    python benchmarks/bench_view_logits.py [threads] [rounds]

The ResNet-20 teacher of studies/cifar_resnet.toml (269,722 params, untrained: speed does not
depend on the weights) in eval mode runs `view_logits` on 2,048 random 32x32x3 images x 2 views,
in kdsearch's default memory layout and with its weights in channels_last (what the engine does
for training), in interleaved rounds. Printed: best and median images/s of each, and the ratio
of the medians. The logits must agree (same numbers up to float rounding), which is checked.
"""

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kdsearch.architecture import ResNetArch  # noqa: E402
from kdsearch.training.models import build_model  # noqa: E402
from kdsearch.training.views import make_views, view_logits  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.set_num_threads(threads)
torch.manual_seed(0)

x = torch.randint(0, 256, (2048, 3, 32, 32), dtype=torch.uint8)
table = make_views(len(x), 2, hflip=True, translate=4, seed=0)
arch = ResNetArch(blocks=[3, 3, 3], base_width=16, shortcut="A")  # ResNet-20
models = {"default": build_model(arch, (3, 32, 32), 10).eval()}
models["channels_last"] = build_model(arch, (3, 32, 32), 10).eval()
models["channels_last"].load_state_dict(models["default"].state_dict())
models["channels_last"].to(memory_format=torch.channels_last)
params = sum(p.numel() for p in models["default"].parameters())

speeds: dict[str, list[float]] = {name: [] for name in models}
outputs = {}
for _ in range(rounds):
    for name, model in models.items():
        start = time.perf_counter()
        outputs[name] = view_logits(model, x, table)
        speeds[name].append(table.k * len(x) / (time.perf_counter() - start))
assert torch.allclose(outputs["default"], outputs["channels_last"], atol=1e-4), "layouts disagree"
print(f"ResNet-20 teacher ({params:,} params), {threads} thread(s), {rounds} rounds, "
      f"{table.k} views x {len(x):,} images")
for name, s in speeds.items():
    print(f"{name:14} best {max(s):7.0f} img/s  median {statistics.median(s):7.0f} img/s")
ratio = statistics.median(speeds["channels_last"]) / statistics.median(speeds["default"])
print(f"channels_last/default={ratio:.2f}")
