"""How fast does a student train? Three loops over the same images, timed in one run.

    python benchmarks/bench_trial.py --quick --data-dir ../shared/data/cifar10-jpeg

Workloads (the seed's two students, each with its teacher, and the new families' two):
  cifar10  CNN 8-8-16-16 + dense 128 (79,442 params), teacher CNN 32-32-64-64 + dense 512
           (1,250,858 params); 32x32 RGB images.
  mnist    MLP 32-32 (26,506 params), teacher MLP 128-128 (118,282 params); 28x28 grey.
  resnet   ResNet-8 (1-1-1 w16, shortcut B, 78,042 params: batch norm, residual additions),
           teacher ResNet-20 (269,722 params); the CIFAR-10 images.
  mobilenet  MobileNetV2 blocks 1-1-1 w16 x2, expansion 4, kernel 3 (depthwise convolutions,
           batch norm, ReLU6), teacher ResNet-20; the CIFAR-10 images.
--workloads picks some (default: all four).

Loops, each distilling (T=4, alpha=0.5, Adam, batch 128) and scoring the same validation
images after every epoch:
  naive    seed-style: a torchvision-style Dataset that turns each uint8 image into a PIL image,
           then ToTensor + Normalize (what torchvision's CIFAR10/MNIST classes do), a shuffling
           DataLoader, and the teacher run on every batch (eval mode, no-grad).
  minimal  a hand-written loop that normalises the uint8 images to float once, then with the
           precomputed teacher logits: randperm, slice, forward, loss, backward, step. The
           practical limit of a plain loop: it runs on as many threads as the engine picks
           (one for a small MLP, see kdsearch.training.engine.train_threads), while the naive loop
           keeps torch's default of every core, as seed code does.
  engine   `kdsearch.training.engine.train`, as a trial calls it (its setup is timed with it).

Each round trains a fresh student for 2 epochs with each loop in turn (interleaved, so
that load from other processes hits all three alike); a loop's time is its median round. The
teacher's logits are computed once, untimed: the teacher cache pays that once per study.
Real images are used when found (CIFAR-10 as an ImageFolder at --data-dir; MNIST in
torchvision's layout at --mnist-dir, or beside the CIFAR-10 folder), else random tensors of the
same shape, which cost the same to train on.

The last line is `engine_vs_naive=<x> engine_vs_minimal=<y>`: the images/s ratios of each
workload (median rounds), combined over the workloads run by their geometric mean; the
per-workload ratios are printed just above it.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the kdsearch CLI does, before torch

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdsearch.architecture import CNNArch, ConvLayer, MLPArch, MobileNetArch, ResNetArch  # noqa: E402
from kdsearch.search.space import cnn_arch  # noqa: E402
from kdsearch.spec import TrainRecipe  # noqa: E402
from kdsearch.training.data import IMAGE_SUFFIXES, Dataset, Split  # noqa: E402
from kdsearch.training.distill import kd_loss  # noqa: E402
from kdsearch.training.engine import (  # noqa: E402
    KD,
    TrainSettings,
    torch_threads,
    train,
    train_threads,
)
from kdsearch.training.models import build_model, count_params  # noqa: E402

BATCH, LR, T, ALPHA = 128, 1e-3, 4.0, 0.5
CIFAR_TEACHER = CNNArch(
    convs=[
        ConvLayer(channels=32),
        ConvLayer(channels=32, padding="valid", pool=True),
        ConvLayer(channels=64),
        ConvLayer(channels=64, padding="valid", pool=True),
    ],
    dense=[512],
    conv_dropout=0.25,
    dropout=0.5,
)
CIFAR_STUDENT = cnn_arch(2, 2, 8, 2, [3, 3, 3, 3], 128, 32)
MNIST_TEACHER = MLPArch(hidden=[128, 128], dropout=0.2)
MNIST_STUDENT = MLPArch(hidden=[32, 32])
RESNET_TEACHER = ResNetArch(blocks=[3, 3, 3], base_width=16, shortcut="A")  # ResNet-20
RESNET_STUDENT = ResNetArch(blocks=[1, 1, 1], base_width=16, shortcut="B")  # ResNet-8
MOBILENET_STUDENT = MobileNetArch(blocks=[1, 1, 1], base_width=16, expansion=4)
WORKLOADS = ("cifar10", "mnist", "resnet", "mobilenet")


# --- data: the same uint8 images for every loop ------------------------------------------------


def _read_folder_sample(root: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images spread over the class folders of an ImageFolder split, decoded to uint8."""
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [
        (f, c)
        for c, cls in enumerate(classes)
        for f in sorted((root / cls).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    pick = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
    arrays, labels = [], []
    for i in pick:
        with Image.open(files[i][0]) as im:
            arrays.append(np.asarray(im.convert("RGB")))
        labels.append(files[i][1])
    x = torch.as_tensor(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)


def cifar_images(data_dir: Path | None, n: int, n_val: int) -> tuple[Split, Split, str]:
    root = None
    if data_dir is not None:
        for cand in (data_dir, data_dir / "cifar10-jpeg"):
            if (cand / "train").is_dir():
                root = cand
    if root is None:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n + n_val, 3, 32, 32), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (n + n_val,), generator=g)
        return Split(x[:n], y[:n]), Split(x[n:], y[n:]), "random tensors (no CIFAR-10 found)"
    x, y = _read_folder_sample(root / "train", n + n_val, seed=0)
    return Split(x[:n], y[:n]), Split(x[n:], y[n:]), f"CIFAR-10 JPEGs from {root}"


def mnist_images(
    mnist_dir: Path | None, data_dir: Path | None, n: int, n_val: int
) -> tuple[Split, Split, str]:
    candidates = [mnist_dir] if mnist_dir else []
    if data_dir is not None:
        candidates += [data_dir, data_dir.parent]
    for root in candidates:
        if root is not None and (root / "MNIST" / "raw").is_dir():
            import torchvision

            ds = torchvision.datasets.MNIST(str(root), train=True, download=False)
            x, y = ds.data[: n + n_val].unsqueeze(1).contiguous(), ds.targets[: n + n_val]
            return Split(x[:n], y[:n]), Split(x[n:], y[n:]), f"MNIST from {root}"
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n + n_val, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n + n_val,), generator=g)
    return Split(x[:n], y[:n]), Split(x[n:], y[n:]), "random tensors (no MNIST found)"


def mean_std(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = x.double() / 255
    return (
        tuple(float(v) for v in pixels.mean(dim=(0, 2, 3))),
        tuple(float(v) for v in pixels.std(dim=(0, 2, 3))),
    )


# --- the three loops ---------------------------------------------------------------------------


class ArrayDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 / MNIST do per item: uint8 array -> PIL image -> transform."""

    def __init__(self, split: Split, mean, std):
        import torchvision.transforms as tr

        self.images = split.x.permute(0, 2, 3, 1).numpy()  # HWC, as torchvision keeps them
        self.labels = split.y.tolist()
        self.transform = tr.Compose([tr.ToTensor(), tr.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = self.images[i]
        img = Image.fromarray(img[:, :, 0], mode="L") if img.shape[2] == 1 else Image.fromarray(img)
        return self.transform(img), self.labels[i]


def naive(student, teacher, train_set, val_set, epochs: int) -> None:
    """Seed-style: DataLoader batches, the teacher's forward pass on every batch."""
    loader = torch.utils.data.DataLoader(train_set, batch_size=BATCH, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=BATCH)
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    teacher.eval()
    for _ in range(epochs):
        student.train()
        for xb, yb in loader:
            with torch.no_grad():
                t_logits = teacher(xb)
            loss = kd_loss(student(xb), t_logits, yb, T, ALPHA)
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.eval()
        with torch.no_grad():
            sum(int((student(xb).argmax(1) == yb).sum()) for xb, yb in val_loader)


NORMALISE_SECONDS: list[float] = []  # the minimal loop's one-off normalisation, per round


def minimal(model, x, y, soft, val_x, val_y, epochs: int) -> None:
    """In-memory tensors normalised once, precomputed logits, the engine's thread count."""
    with torch_threads(train_threads(model, BATCH, torch.device("cpu"))):
        _minimal(model, x, y, soft, val_x, val_y, epochs)


def _minimal(model, x, y, soft, val_x, val_y, epochs: int) -> None:
    norm, student = model[0], model[1:]
    t = time.perf_counter()
    with torch.no_grad():
        xf, val_xf = norm(x), norm(val_x)
    NORMALISE_SECONDS.append(time.perf_counter() - t)
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    n = len(y)
    for _ in range(epochs):
        student.train()
        order = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            loss = kd_loss(student(xf[idx]), soft[idx], y[idx], T, ALPHA)
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.eval()
        with torch.inference_mode():
            int((student(val_xf).argmax(1) == val_y).sum())


def run_workload(
    name, teacher_arch, student_arch, train_split, val_split, epochs, rounds, log
) -> dict[str, float]:
    """Median seconds per round (one fresh student, `epochs` epochs) for each loop."""
    shape = tuple(train_split.x.shape[1:])
    mean, std = mean_std(train_split.x)
    data = Dataset(name, train_split, val_split, val_split, 10, mean, std, identity=name)
    torch.manual_seed(0)
    teacher = build_model(teacher_arch, shape, 10, mean, std).eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        soft = torch.cat(
            [teacher(train_split.x[i : i + 1024]) for i in range(0, len(train_split), 1024)]
        )
    precompute = time.perf_counter() - t0
    train_set = ArrayDataset(train_split, mean, std)
    val_set = ArrayDataset(val_split, mean, std)
    recipe = TrainRecipe(epochs=epochs, batch_size=BATCH, lr=LR)

    def fresh():
        torch.manual_seed(1)
        return build_model(student_arch, shape, 10, mean, std)

    loops = {
        "naive": lambda: naive(fresh()[1:], teacher[1:], train_set, val_set, epochs),
        "minimal": lambda: minimal(
            fresh(), train_split.x, train_split.y, soft, val_split.x, val_split.y, epochs
        ),
        "engine": lambda: train(
            fresh(),
            data,
            TrainSettings(recipe, torch.device("cpu"), seed=1, teacher_logits=soft,
                          kd=KD(T, ALPHA)),
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in loops}
    NORMALISE_SECONDS.clear()
    for _ in range(rounds):
        for k, run in loops.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    images = len(train_split) * epochs
    log(
        f"{name}: student {count_params(fresh()):,} params, teacher {count_params(teacher):,} "
        f"params; {len(train_split):,} images x {epochs} epochs x {rounds} rounds; teacher "
        f"logits precomputed once in {precompute:.2f} s (untimed); threads: naive "
        f"{torch.get_num_threads()}, minimal and engine "
        f"{train_threads(fresh(), BATCH, torch.device('cpu'))}"
    )
    for k in loops:
        log(
            f"  {k:8} {images / med[k]:>9,.0f} images/s   median round {med[k]:.3f} s   "
            f"rounds {', '.join(f'{t:.2f}' for t in times[k])}"
        )
    norm_s = statistics.median(NORMALISE_SECONDS)
    log(
        f"  (minimal's one-off normalisation: {norm_s:.3f} s of its round; without it, "
        f"engine_vs_minimal would be {(med['minimal'] - norm_s) / med['engine']:.3f})"
    )
    log(
        f"  engine_vs_naive={med['naive'] / med['engine']:.2f} "
        f"engine_vs_minimal={med['minimal'] / med['engine']:.3f}"
    )
    return {**med, "images": images}


def augment_cost(train_split, val_split, epochs, log) -> None:
    """Engine with flips + 2-pixel jitter (teacher live under no-grad) vs cached logits."""
    shape = tuple(train_split.x.shape[1:])
    mean, std = mean_std(train_split.x)
    data = Dataset("cifar", train_split, val_split, val_split, 10, mean, std, identity="c")
    teacher = build_model(CIFAR_TEACHER, shape, 10, mean, std).eval()
    with torch.inference_mode():
        soft = teacher(train_split.x)
    out = {}
    for label, recipe, kw in (
        ("cached logits", TrainRecipe(epochs=epochs, batch_size=BATCH), {"teacher_logits": soft}),
        (
            "augmented, live teacher",
            TrainRecipe(epochs=epochs, batch_size=BATCH, hflip=True, jitter=2),
            {"teacher": teacher},
        ),
        (
            "augmented, no distillation",
            TrainRecipe(epochs=epochs, batch_size=BATCH, hflip=True, jitter=2),
            {},
        ),
    ):
        torch.manual_seed(1)
        model = build_model(CIFAR_STUDENT, shape, 10, mean, std)
        t = time.perf_counter()
        train(model, data, TrainSettings(recipe, torch.device("cpu"),
                                         kd=KD(T, ALPHA if kw else 0.0), **kw))
        out[label] = time.perf_counter() - t
        log(f"  augment: {label:28} {len(train_split) * epochs / out[label]:>8,.0f} images/s")


def scaling(c_train, c_val, m_train, m_val, log) -> None:
    """Engine images/s as the student grows (1 epoch, cached logits): cost follows MACs."""
    from kdsearch.training.models import count_macs

    for name, (tr, va), archs in (
        (
            "cifar10",
            (c_train, c_val),
            [cnn_arch(2, 2, w, 2, [3] * 4, 128, 32) for w in (4, 8, 16, 32)],
        ),
        ("mnist", (m_train, m_val), [MLPArch(hidden=[w, w]) for w in (32, 128, 512)]),
    ):
        shape = tuple(tr.x.shape[1:])
        mean, std = mean_std(tr.x)
        data = Dataset(name, tr, va, va, 10, mean, std, identity=name)
        soft = torch.randn(len(tr), 10)
        for arch in archs:
            model = build_model(arch, shape, 10, mean, std)
            t = time.perf_counter()
            train(model, data, TrainSettings(TrainRecipe(epochs=1, batch_size=BATCH),
                                             torch.device("cpu"), teacher_logits=soft,
                                             kd=KD(T, ALPHA)))
            sec = time.perf_counter() - t
            log(
                f"  scaling {name}: {arch.describe():34} {count_params(model):>9,} params "
                f"{count_macs(arch, shape, 10):>11,} MACs  {len(tr) / sec:>9,.0f} images/s"
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, help="CIFAR-10 ImageFolder (train/, test/)")
    ap.add_argument("--mnist-dir", type=Path, help="torchvision root holding MNIST/raw")
    ap.add_argument("--quick", action="store_true", help="fewer images and rounds (~1-2 minutes)")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    ap.add_argument("--augment", action="store_true", help="also time augmented training")
    ap.add_argument("--scaling", action="store_true", help="also time larger and smaller students")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)")
    args = ap.parse_args(argv)
    chosen = args.workloads.split(",")
    if not chosen or any(w not in WORKLOADS for w in chosen):
        ap.error(f"--workloads: expected names from {', '.join(WORKLOADS)}, found {args.workloads!r}")

    from kdsearch.options import available_cores

    torch.set_num_threads(args.threads or available_cores())

    def log(msg: str) -> None:
        print(msg, flush=True)

    cifar_n, mnist_n, rounds, epochs = (2560, 12800, 3, 2) if args.quick else (10240, 55000, 3, 2)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}")
    c_train, c_val, c_src = cifar_images(args.data_dir, cifar_n, 512)
    m_train, m_val, m_src = mnist_images(args.mnist_dir, args.data_dir, mnist_n, 1000)
    log(f"cifar10 images: {c_src}\nmnist images: {m_src}")
    runs = {
        "cifar10": (CIFAR_TEACHER, CIFAR_STUDENT, c_train, c_val),
        "mnist": (MNIST_TEACHER, MNIST_STUDENT, m_train, m_val),
        "resnet": (RESNET_TEACHER, RESNET_STUDENT, c_train, c_val),
        "mobilenet": (RESNET_TEACHER, MOBILENET_STUDENT, c_train, c_val),
    }
    names = [w for w in WORKLOADS if w in chosen]
    results = [run_workload(n, *runs[n], epochs, rounds, log) for n in names]
    if args.augment:
        augment_cost(c_train, c_val, epochs, log)
    if args.scaling:
        scaling(c_train, c_val, m_train, m_val, log)
    # One figure per workload, then their geometric mean (how speed-ups over several
    # workloads are usually summarised: each workload weighs the same).
    vs_naive = math.prod(r["naive"] / r["engine"] for r in results) ** (1 / len(results))
    vs_minimal = math.prod(r["minimal"] / r["engine"] for r in results) ** (1 / len(results))
    log(
        "per workload: "
        + ", ".join(
            f"{n} engine_vs_naive={r['naive'] / r['engine']:.2f} "
            f"engine_vs_minimal={r['minimal'] / r['engine']:.3f}"
            for n, r in zip(names, results, strict=True)
        )
    )
    log(f"the line below: geometric means over {len(names)} workload(s)")
    print(f"engine_vs_naive={vs_naive:.2f} engine_vs_minimal={vs_minimal:.3f}")


if __name__ == "__main__":
    main()
