"""Which batch size should evaluation use on the CPU? Images/s of `engine.accuracy` per size.

    python benchmarks/bench_eval_batch.py            # 1 and 2 threads, 3 rounds
    python benchmarks/bench_eval_batch.py 1 5        # threads, rounds

Every trial scores its student on the validation split after each epoch and on the test split
once; on a reduced budget that is most of a trial (a 163k-param MobileNet on 1,000 training
images: 57 s of test evaluation against 28 s of training). The students are the families'
(the seed's plain CNN, ResNets, MobileNets, an MLP) and cifar_resnet's ResNet-20 teacher
(its logits on the fixed views are computed in the same batches), in channels_last weights as the engine
leaves a CNN after training, on random images of their input shape. Sizes take turns within
each round; the best of the rounds is printed, and per student the ratio of the best size's
speed to that of 512 (the size evaluation used before). See docs/PERFORMANCE.md section 1.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import kdsearch.training.engine as engine  # noqa: E402
from kdsearch.architecture import MLPArch, MobileNetArch, ResNetArch  # noqa: E402
from kdsearch.search.space import cnn_arch  # noqa: E402
from kdsearch.training.data import Split  # noqa: E402
from kdsearch.training.models import arch_params, build_model  # noqa: E402

STUDENTS = {
    "plain CNN (seed)": ((3, 32, 32), cnn_arch(2, 2, 8, 2, [3] * 4, 128, 32)),
    "ResNet-8": ((3, 32, 32), ResNetArch(blocks=[1, 1, 1], base_width=16, shortcut="A")),
    "ResNet 3-3-3 w16x1.5": ((3, 32, 32), ResNetArch(blocks=[3, 3, 3], base_width=16,
                                                      width_growth=1.5, shortcut="B")),
    "MobileNet 1-1-1 w16 t4": ((3, 32, 32), MobileNetArch(blocks=[1, 1, 1], base_width=16,
                                                           expansion=4)),
    "MobileNet 2-2-2-2 w24x1.5 t4": ((3, 32, 32), MobileNetArch(blocks=[2, 2, 2, 2],
                                                                 base_width=24, width_growth=1.5,
                                                                 expansion=4)),
    "ResNet-20 (cifar_resnet's teacher)": ((3, 32, 32), ResNetArch(blocks=[3, 3, 3],
                                                                    base_width=16)),
    "MLP 32-32": ((1, 28, 28), MLPArch(hidden=[32, 32])),
}
SIZES = (32, 64, 128, 256, 512)
N = 2048


def main() -> None:
    threads = [int(sys.argv[1])] if len(sys.argv) > 1 else [1, 2]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    cpu = torch.device("cpu")
    print(f"engine.accuracy on {N:,} random images; best of {rounds} rounds; images/s")
    print(f"{'student':34} {'params':>8} thr " + " ".join(f"{s:>7}" for s in SIZES)
          + "  best/512")
    for name, (shape, arch) in STUDENTS.items():
        torch.manual_seed(0)
        model = build_model(arch, shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
        if not isinstance(arch, MLPArch):
            model.to(memory_format=torch.channels_last)
        split = Split(torch.randint(0, 256, (N, *shape), dtype=torch.uint8),
                      torch.randint(0, 10, (N,)))
        for t in threads:
            torch.set_num_threads(t)
            best = dict.fromkeys(SIZES, 0.0)
            for _ in range(rounds):
                for size in SIZES:
                    engine.eval_batch = lambda model, device, size=size: size
                    start = time.perf_counter()
                    engine.accuracy(model, split, cpu)
                    best[size] = max(best[size], N / (time.perf_counter() - start))
            top = max(best, key=best.get)
            print(f"{name:34} {arch_params(arch, shape, 10):>8,} {t:>3} "
                  + " ".join(f"{best[s]:>7.0f}" for s in SIZES)
                  + f"  {best[top] / best[512]:.2f} at {top}", flush=True)


if __name__ == "__main__":
    main()
