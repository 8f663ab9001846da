"""Data sets as uint8 tensors held in memory, split once into train / validation / test.

Trials are scored on the validation split, carved from the training set with a fixed seed;
the test split is only ever read for final reports. Images stay uint8 (N, C, H, W) until a
batch is sliced, which keeps CIFAR-10 at 150 MB instead of 600 MB.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsearch.errors import DataError
from kdsearch.spec import DataSpec, SyntheticSpec
from kdsearch.training import safe_files

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
    try:
        return (path / "train").is_dir() and (path / "test").is_dir()
    except OSError:  # an unreadable folder is no ImageFolder; the caller says what it is
        return False


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


# Where torchvision looks under its root for each named data set's files, as a user without
# internet must lay them out. MNIST-style sets: the four gunzipped files of the official site.
# CIFAR: the folder that the official python tarball unpacks to; torchvision unpickles those
# batches, but only after each file matches its published MD5, so no other file is unpickled.
_IDX = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
TORCHVISION_LAYOUT = {
    "mnist": "MNIST/raw/ holding " + _IDX + " (gunzipped)",
    "fashion_mnist": "FashionMNIST/raw/ holding " + _IDX + " (gunzipped)",
    "cifar10": ("cifar-10-batches-py/ as cifar-10-python.tar.gz unpacks it (data_batch_1..5, "
                "test_batch, batches.meta; only the official files pass torchvision's MD5 check)"),
    "cifar100": ("cifar-100-python/ as cifar-100-python.tar.gz unpacks it (train, test, meta; "
                 "only the official files pass torchvision's MD5 check)"),
}


def missing_data_message(name: str, root: Path, download: bool, error: BaseException) -> str:
    """One line: why the named data set did not load and the two layouts that would."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    first = first.replace(" You can use download=True to download it", "")[:120]
    if download:
        why = (f"the download failed ({first}); on a machine without internet set "
               "KDSEARCH_OFFLINE=1 and put the files there yourself")
    else:
        why = f"KDSEARCH_OFFLINE is set, so nothing is downloaded, and the files are not there ({first})"
    return (f"cannot load {name} from {root}: {why}. Either {root}/{TORCHVISION_LAYOUT[name]}, "
            f"or an ImageFolder {root}/train/<class>/*, {root}/test/<class>/*; "
            f"pass --data-dir DIR or set KDSEARCH_DATA_DIR to use another folder")


def _torchvision(name: str, root: Path, download: bool):
    import torchvision

    cls_name, _, _ = NAMED[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as e:  # torchvision raises these for missing / failed download
        raise DataError(missing_data_message(name, root, download, e)) from None

    def tensors(ds):
        x = torch.as_tensor(np.asarray(ds.data))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    return (*tensors(train), *tensors(test))


def _entries(folder: Path) -> list[Path]:
    """`folder`'s entries, sorted; a folder that cannot be listed is one line naming it.

    Sorted by name: the order `sorted(folder.iterdir())` gives, without comparing Path objects
    (half a second for CIFAR-10's 60,000 files).
    """
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot read this folder ({e.strerror or type(e).__name__})") from None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError as e:  # e.g. a parent without search permission
        raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


Listing = list[tuple[str, str, list[Path]]]  # (split, class, every entry of its folder, sorted)


def _image_folder_files(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]], Listing]:
    """The classes, the (file, label) lists of train/ and test/, and the listing they came from.

    The layout is checked before the decoding cache is consulted: an empty class folder
    changes no file in the fingerprint, so a cache hit would otherwise add a class silently.
    The listing is returned so that the fingerprint does not list 60,000 files a second time.
    """
    for sub in ("train", "test"):
        if not _is_dir(root / sub):
            raise DataError(f"{root}: no {sub}/ folder; an ImageFolder holds train/<class>/* and "
                            f"test/<class>/*")
    found = {sub: [p.name for p in _entries(root / sub) if _is_dir(p)] for sub in ("train", "test")}
    classes = found["train"]
    if classes != found["test"]:
        only_train = sorted(set(classes) - set(found["test"]))
        only_test = sorted(set(found["test"]) - set(classes))
        raise DataError(f"{root}: train/ and test/ must hold the same class folders; only in "
                        f"train/: {', '.join(only_train) or 'none'}; only in test/: "
                        f"{', '.join(only_test) or 'none'}")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'}: {len(classes)} class folder(s); a classifier needs at "
                        f"least 2 (train/<class>/*, test/<class>/*)")
    files: dict[str, list[tuple[Path, int]]] = {}
    listing: Listing = []
    for sub in ("train", "test"):
        files[sub] = []
        for label, cls in enumerate(classes):
            entries = _entries(root / sub / cls)
            listing.append((sub, cls, entries))
            images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise DataError(f"{root / sub / cls}: an empty class folder (no image files); "
                                f"add images or remove the folder from train/ and test/")
            files[sub] += [(p, label) for p in images]
    return classes, files, listing


def _why_unreadable(path: Path, e: Exception) -> str:
    from PIL import UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "an empty file (0 bytes)"
    except OSError:
        pass
    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can read"
    first = str(e).splitlines()[0][:120] if str(e) else ""
    return f"cannot be decoded ({type(e).__name__}: {first})"


def _decode(files: list[tuple[Path, int]], root: Path) -> list[np.ndarray]:
    """Each file as an (H, W) or (H, W, 3) uint8 array; refuses if any file cannot be decoded.

    Refused, not skipped: a skipped file would silently change the data set, its split and
    its identity (the teacher cache key). The loop reads on past the first bad file to count
    them all, so one pass tells the user how much there is to fix.
    """
    from PIL import Image
    from tqdm import tqdm

    arrays, bad = [], []
    for path, _ in tqdm(files, desc=f"reading {root.name}/", unit="img", leave=False,
                        mininterval=1.0, disable=len(files) < 2000):
        # Only a regular file is opened: a FIFO or a device named *.png would block the read.
        with safe_files.open_regular(path, "image file", DataError) as f:
            try:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB")))
            except Exception as e:  # PIL's errors for a non-image, truncated or unreadable file
                bad.append((path, e))
    if bad:
        path, e = bad[0]
        raise DataError(f"{path}: {_why_unreadable(path, e)}; {len(bad)} of the {len(files)} "
                        f"image files under {root} cannot be read: remove or replace them")
    return arrays


def _uniform(arrays: list[np.ndarray], files: list[tuple[Path, int]], root: Path) -> None:
    """Gives every image the same shape in place: grayscale among colour becomes RGB.

    Sizes are not reconciled: resizing would blur or distort silently, so an image of another
    size is refused, naming it and the size of most images.
    """
    if any(a.ndim == 3 for a in arrays):
        for i, a in enumerate(arrays):
            if a.ndim == 2:  # as PIL's L -> RGB: the gray value in each channel
                arrays[i] = np.repeat(a[:, :, None], 3, axis=2)
    sizes = Counter(a.shape[:2] for a in arrays)
    if len(sizes) == 1:
        return
    (h, w), n = sizes.most_common(1)[0]
    odd = next(i for i, a in enumerate(arrays) if a.shape[:2] != (h, w))
    oh, ow = arrays[odd].shape[:2]
    raise DataError(f"{files[odd][0]}: {ow}x{oh} pixels, but {n} of the {len(arrays)} images "
                    f"under {root} are {w}x{h}; kdsearch does not resize: make every image one "
                    f"size ({len(arrays) - n} differ)")


def _to_split(arrays: list[np.ndarray], files: list[tuple[Path, int]]):
    x = torch.as_tensor(np.stack(arrays))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return x.contiguous(), y


def _folder_fingerprint(listing: Listing) -> str:
    """Names, sizes and modification times of every file: a changed file misses the cache."""
    h = hashlib.sha256()
    for sub, cls, entries in listing:
        for f in entries:
            try:
                st = f.stat()
            except OSError as e:  # e.g. a dangling link
                raise DataError(f"{f}: cannot read ({e.strerror or type(e).__name__})") from None
            h.update(f"{sub}/{cls}/{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _image_folder(root: Path, cache_dir: Path | None):
    """ImageFolder train/ and test/; decoded once, then kept as a tensor file in the cache."""
    classes, files, listing = _image_folder_files(root)
    cached = None
    if cache_dir is not None:
        cached = cache_dir / "datasets" / f"folder-{_folder_fingerprint(listing)}.pt"
        if cached.is_file():
            try:
                blob = torch.load(cached, weights_only=True)
                return blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], classes
            except Exception:  # a truncated cache file: decode the folder again
                pass
    # train and test are decoded and checked together: a test image of another size or mode
    # than the training images would otherwise fail only when the first model evaluates it.
    both = files["train"] + files["test"]
    arrays = _decode(both, root)
    _uniform(arrays, both, root)
    n = len(files["train"])
    train_x, train_y = _to_split(arrays[:n], files["train"])
    del arrays[:n]  # each decoded image is held once more only until its split is stacked
    test_x, test_y = _to_split(arrays, files["test"])
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
    data_home: Path = DATA_HOME, offline: bool = False, study_file: Path | str | None = None,
) -> Dataset:
    """Load `spec`'s data set into memory and carve the validation split.

    The files are looked for in `data_dir` (--data-dir), else an imagefolder study's own
    `path`, else `data_home` (KDSEARCH_DATA_DIR); named data sets are downloaded there when
    missing, unless `offline`. `study_file` only names the file in the error when an
    imagefolder study has no folder at all.

    An ImageFolder is refused, in one line naming the offending file or folder, when a file
    with an image suffix cannot be decoded (not an image, truncated, empty), when an image's
    size differs from the others (nothing is resized), when a class folder holds no images,
    or when train/ and test/ hold different class folders. Nothing is skipped: a skipped file
    would silently change the data set. Grayscale images among colour ones become RGB.
    """
    download = not offline
    name = spec.dataset
    if name == "synthetic":
        tx, ty, sx, sy = _synthetic(spec.synthetic, spec.split_seed)
        num_classes = spec.synthetic.num_classes
    elif name == "imagefolder":
        if data_dir is None and not spec.path and is_image_folder(data_home.expanduser()):
            data_dir = data_home
        if data_dir is None and not spec.path:
            where = f"{study_file}: " if study_file else ""
            raise DataError(f"{where}dataset 'imagefolder' needs its folder (train/<class>/*, "
                            f"test/<class>/*): set path = \"DIR\" under [data] in the study "
                            f"file, or pass --data-dir DIR (env KDSEARCH_DATA_DIR)")
        root = (data_dir if data_dir is not None else Path(spec.path or "")).expanduser()
        if not _is_dir(root):
            raise DataError(f"data directory {root} does not exist")
        tx, ty, sx, sy, classes = _image_folder(root, cache_dir)
        num_classes = len(classes)
    else:
        root = (data_dir or data_home).expanduser()
        if is_image_folder(root):
            tx, ty, sx, sy, classes = _image_folder(root, cache_dir)
            num_classes = len(classes)
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
