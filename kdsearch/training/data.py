"""Data sets as uint8 tensors held in memory, split once into train / validation / test.

Trials are scored on the validation split, carved from the training set with a fixed seed;
the test split is only ever read for final reports. Images stay uint8 (N, C, H, W) until a
batch is sliced, which keeps CIFAR-10 at 150 MB instead of 600 MB.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsearch.errors import DataError
from kdsearch.spec import DataSpec, SyntheticSpec

NAMED = {  # name -> (torchvision class name, classes, input shape)
    "mnist": ("MNIST", 10, (1, 28, 28)),
    "fashion_mnist": ("FashionMNIST", 10, (1, 28, 28)),
    "cifar10": ("CIFAR10", 10, (3, 32, 32)),
    "cifar100": ("CIFAR100", 100, (3, 32, 32)),
}
DATA_HOME = Path("~/.cache/kdsearch/data")  # the CLI passes KDSEARCH_DATA_DIR or XDG's instead
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the training split, in [0, 1] units
    std: tuple[float, ...]
    identity: str  # hash of the pixels, labels and split: part of the teacher cache key

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def is_image_folder(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


# --- sources: each returns (train_x, train_y, test_x, test_y) as uint8 / int64 tensors ------


def _synthetic(spec: SyntheticSpec, seed: int):
    """Noisy copies of one smooth random template per class."""
    g = torch.Generator().manual_seed(1_000_003 + seed)
    shape = (spec.channels, spec.height, spec.width)
    coarse = torch.rand((spec.num_classes, spec.channels, 4, 4), generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear")
    templates = (templates - templates.mean()) / templates.std()

    def draw(n: int):
        y = torch.randint(0, spec.num_classes, (n,), generator=g)
        x = templates[y] + spec.noise * torch.randn((n, *shape), generator=g)
        x = (x * 40 + 128).clamp(0, 255).to(torch.uint8)
        return x, y

    return (*draw(spec.n_train), *draw(spec.n_test))


def _torchvision(name: str, root: Path, download: bool):
    import torchvision

    cls_name, _, _ = NAMED[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as e:  # torchvision raises these for missing / failed download
        raise DataError(
            f"cannot load {name} from {root} ({str(e).splitlines()[0][:120]}): on a machine "
            f"without internet put the torchvision files for {cls_name} under {root} "
            f"(e.g. {root}/{cls_name}/raw/ for MNIST) or an ImageFolder (train/<class>/*, "
            f"test/<class>/*) there, and pass --data-dir {root} or set KDSEARCH_DATA_DIR"
        ) from None

    def tensors(ds):
        x = torch.as_tensor(np.asarray(ds.data))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    return (*tensors(train), *tensors(test))


def _read_image_folder(folder: Path, classes: list[str]):
    from PIL import Image

    files = [
        (path, label)
        for label, cls in enumerate(classes)
        for path in sorted((folder / cls).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"{folder}: no images found in its class folders")
    from tqdm import tqdm

    arrays = []
    for path, _ in tqdm(files, desc=f"reading {folder.name}/", unit="img", leave=False,
                        mininterval=1.0, disable=len(files) < 2000):
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"{folder}: images differ in size or mode ({sorted(shapes)[:3]} ...)")
    x = torch.as_tensor(np.stack(arrays))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return x.contiguous(), y


def _folder_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for sub in ("train", "test"):
        for cls in sorted(p.name for p in (root / sub).iterdir() if p.is_dir()):
            for f in sorted((root / sub / cls).iterdir()):
                st = f.stat()
                h.update(f"{sub}/{cls}/{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _image_folder(root: Path, cache_dir: Path | None):
    """ImageFolder train/ and test/; decoded once, then kept as a tensor file in the cache."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if not classes or classes != test_classes:
        raise DataError(f"{root}: train/ and test/ must hold the same class folders")
    cached = None
    if cache_dir is not None:
        cached = cache_dir / "datasets" / f"folder-{_folder_fingerprint(root)}.pt"
        if cached.is_file():
            try:
                blob = torch.load(cached, weights_only=True)
                return blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], classes
            except Exception:  # a truncated cache file: decode the folder again
                pass
    train_x, train_y = _read_image_folder(root / "train", classes)
    test_x, test_y = _read_image_folder(root / "test", classes)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        torch.save({"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}, tmp)
        os.replace(tmp, cached)
    return train_x, train_y, test_x, test_y, classes


def _identity(*tensors: torch.Tensor, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().data)  # the buffer itself: no 150 MB bytes copy
    return h.hexdigest()[:20]


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 images, in [0, 1] units.

    From a histogram of the 256 pixel values per channel: exact, and without the float64 copy
    of the whole split that `x.double().std()` makes (2.2 GB for CIFAR-10's training set).
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = float((counts * values).sum() / n)
        var = float((counts * (values - mean) ** 2).sum() / max(float(n) - 1, 1))
        means.append(mean)
        stds.append(max(var**0.5, 1e-3))
    return tuple(means), tuple(stds)


def load_data(
    spec: DataSpec, data_dir: Path | None = None, cache_dir: Path | None = None, *,
    data_home: Path = DATA_HOME, offline: bool = False,
) -> Dataset:
    """Load `spec`'s data set into memory and carve the validation split.

    The files are looked for in `data_dir` (--data-dir), else an imagefolder study's own
    `path`, else `data_home`; named data sets are downloaded there when missing, unless
    `offline`.
    """
    download = not offline
    name = spec.dataset
    if name == "synthetic":
        tx, ty, sx, sy = _synthetic(spec.synthetic, spec.split_seed)
        num_classes = spec.synthetic.num_classes
    else:
        root = Path(spec.path) if (name == "imagefolder" and spec.path and data_dir is None) else (
            data_dir or data_home)
        root = root.expanduser()
        if name == "imagefolder" or is_image_folder(root):
            if not root.is_dir():
                raise DataError(f"data directory {root} does not exist")
            if not is_image_folder(root):
                raise DataError(f"{root}: expected an ImageFolder with train/ and test/ class folders")
            tx, ty, sx, sy, classes = _image_folder(root, cache_dir)
            num_classes = len(classes)
            if name in NAMED:
                expected_classes, expected_shape = NAMED[name][1], NAMED[name][2]
                if num_classes != expected_classes or tuple(tx.shape[1:]) != expected_shape:
                    raise DataError(
                        f"{root}: an ImageFolder of {num_classes} classes of shape "
                        f"{tuple(tx.shape[1:])}, but {name} has {expected_classes} classes of "
                        f"shape {expected_shape}"
                    )
        else:
            tx, ty, sx, sy = _torchvision(name, root, download)
            num_classes = NAMED[name][1]

    n_train = int(ty.shape[0])
    if spec.val_size >= n_train:
        raise DataError(f"val_size {spec.val_size} leaves no training images (the training "
                        f"set has {n_train})")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(spec.split_seed))
    val_idx, train_idx = order[: spec.val_size], order[spec.val_size:]
    if spec.train_limit is not None:
        train_idx = train_idx[: spec.train_limit]
    train = Split(tx[train_idx].contiguous(), ty[train_idx].contiguous())
    val = Split(tx[val_idx].contiguous(), ty[val_idx].contiguous())
    test = Split(sx.contiguous(), sy.to(torch.int64).contiguous())

    mean, std = channel_stats(train.x)
    identity = _identity(train.x, train.y, val.x, val.y, test.x, test.y, extra=name)
    return Dataset(name, train, val, test, num_classes, mean, std, identity)
