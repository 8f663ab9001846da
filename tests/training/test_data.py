import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdsearch.errors import DataError
from kdsearch.spec import DataSpec, SyntheticSpec
from kdsearch.training.data import load_data
from tests.helpers import kdsearch, mlp_study_text


def test_synthetic_is_deterministic_and_split_is_disjoint():
    spec = DataSpec(dataset="synthetic", val_size=50, synthetic=SyntheticSpec(n_train=200, n_test=40))
    a, b = load_data(spec), load_data(spec)
    assert a.identity == b.identity
    assert torch.equal(a.train.x, b.train.x)
    assert (len(a.train), len(a.val), len(a.test)) == (150, 50, 40)
    assert a.train.x.dtype == torch.uint8 and a.input_shape == (1, 8, 8)
    # val is carved from the training images: no image appears in both
    train_rows = {bytes(r) for r in a.train.x.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in a.val.x.flatten(1).numpy())


def test_split_seed_changes_identity():
    base = DataSpec(dataset="synthetic", val_size=50, synthetic=SyntheticSpec(n_train=200))
    other = base.model_copy(update={"split_seed": 1})
    assert load_data(base).identity != load_data(other).identity


def test_val_size_too_large():
    with pytest.raises(DataError, match="leaves no training images"):
        load_data(DataSpec(dataset="synthetic", val_size=5000))


def _write_idx(path, array, magic_type=0x08):
    dims = array.shape
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, magic_type, len(dims)))
        for d in dims:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_named_dataset_from_a_local_torchvision_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (60, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(60) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    data = load_data(DataSpec(dataset="mnist", val_size=10), tmp_path, offline=True)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_data(DataSpec(dataset="mnist"), tmp_path / "empty", offline=True)
    message = str(info.value)
    assert "\n" not in message
    assert "--data-dir" in message and str(tmp_path / "empty") in message
    assert "KDSEARCH_OFFLINE is set" in message and "download=True" not in message
    assert f"{tmp_path / 'empty'}/MNIST/raw/ holding train-images-idx3-ubyte" in message


@pytest.mark.parametrize("name, folder, a_file", [
    ("cifar10", "cifar-10-batches-py/", "data_batch_1"),
    ("cifar100", "cifar-100-python/", "meta"),
    ("fashion_mnist", "FashionMNIST/raw/", "t10k-labels-idx1-ubyte"),
])
def test_missing_data_names_each_data_sets_own_layout(tmp_path, name, folder, a_file):
    """The folder named is where torchvision looks (checked: its root/base_folder)."""
    import torchvision

    from kdsearch.training.data import NAMED

    with pytest.raises(DataError) as info:
        load_data(DataSpec(dataset=name), tmp_path, offline=True)
    message = str(info.value)
    assert f"{tmp_path}/{folder}" in message and a_file in message
    cls = getattr(torchvision.datasets, NAMED[name][0])
    where = getattr(cls, "base_folder", None) or f"{cls.__name__}/raw"
    assert folder.rstrip("/") == where


def test_a_failed_download_suggests_kdsearch_offline(tmp_path):
    from kdsearch.training.data import missing_data_message

    message = missing_data_message("cifar10", tmp_path, True, OSError("Name resolution failed"))
    assert "download failed (Name resolution failed)" in message
    assert "KDSEARCH_OFFLINE=1" in message and f"{tmp_path}/cifar-10-batches-py/" in message


def _image_folder(root, n_per_class=6, classes=("cat", "dog", "emu")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(n_per_class):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_image_folder_is_read_and_cached(tmp_path):
    _image_folder(tmp_path / "imgs")
    spec = DataSpec(dataset="imagefolder", path=str(tmp_path / "imgs"), val_size=3)
    first = load_data(spec, cache_dir=tmp_path / "cache")
    assert first.input_shape == (3, 12, 12) and first.num_classes == 3
    assert (len(first.train), len(first.val), len(first.test)) == (15, 3, 18)
    assert list((tmp_path / "cache" / "datasets").glob("folder-*.pt"))
    again = load_data(spec, cache_dir=tmp_path / "cache")
    assert again.identity == first.identity
    # PNG is lossless: the tensors hold exactly the files' pixels
    img = np.array(Image.open(tmp_path / "imgs" / "test" / "cat" / "0.png"))
    assert torch.equal(first.test.x[0], torch.as_tensor(img).permute(2, 0, 1))


def test_named_dataset_accepts_a_matching_image_folder_only(tmp_path):
    _image_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="cifar10 has 10 classes"):
        load_data(DataSpec(dataset="cifar10", val_size=3), tmp_path / "imgs")


# --- a hostile ImageFolder: each refused in one line naming the file or folder ----------------


def _folder_spec(root, **kw):
    return DataSpec(dataset="imagefolder", path=str(root), val_size=3, **kw)


def _refusal(root, cache_dir=None) -> str:
    with pytest.raises(DataError) as info:
        load_data(_folder_spec(root), cache_dir=cache_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


def _jpeg_bytes(size=(12, 12)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((*size[::-1], 3), dtype=np.uint8) + 90).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("content, why", [
    (b"this is not an image", "not an image PIL can read"),
    (b"", "an empty file (0 bytes)"),
    (_jpeg_bytes()[:300], "cannot be decoded (OSError: Truncated"),
    ("png-half", "cannot be decoded (OSError: image file is truncated"),
], ids=["not-an-image", "zero-bytes", "truncated-jpeg", "truncated-png"])
def test_an_undecodable_image_is_refused_naming_it_and_the_count(tmp_path, content, why):
    _image_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "train" / "dog" / "bad.jpg"
    if content == "png-half":
        good = (tmp_path / "imgs" / "train" / "dog" / "0.png").read_bytes()
        bad = bad.with_suffix(".png")
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    (tmp_path / "imgs" / "test" / "emu" / "also.jpeg").write_bytes(b"GIF? no")
    message = _refusal(tmp_path / "imgs", cache_dir=tmp_path / "cache")
    assert message.startswith(f"{bad}: ") and why in message
    assert "2 of the 38 image files" in message and "remove or replace them" in message
    assert not (tmp_path / "cache" / "datasets").exists()  # nothing half-decoded is cached


def test_files_without_an_image_suffix_are_ignored(tmp_path):
    _image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "imgs" / "train" / "cat" / "labels.txt").write_text("cat\n")
    assert len(load_data(_folder_spec(tmp_path / "imgs")).test) == 18


def test_an_image_of_another_size_is_refused_naming_it_and_both_sizes(tmp_path):
    _image_folder(tmp_path / "imgs")
    odd = tmp_path / "imgs" / "test" / "emu" / "9.png"  # in test/: checked against train/ too
    Image.fromarray(np.zeros((10, 16, 3), dtype=np.uint8)).save(odd)
    message = _refusal(tmp_path / "imgs")
    assert message.startswith(f"{odd}: 16x10 pixels, but 36 of the 37 images")
    assert "are 12x12" in message and "does not resize" in message


def test_grayscale_images_among_colour_ones_become_rgb(tmp_path):
    _image_folder(tmp_path / "imgs")
    gray = np.arange(144, dtype=np.uint8).reshape(12, 12)
    Image.fromarray(gray, mode="L").save(tmp_path / "imgs" / "test" / "cat" / "0.png")
    Image.fromarray(np.full((12, 12, 4), 7, dtype=np.uint8), mode="RGBA").save(
        tmp_path / "imgs" / "test" / "cat" / "1.png")
    data = load_data(_folder_spec(tmp_path / "imgs"))
    assert data.input_shape == (3, 12, 12)
    for channel in data.test.x[0]:
        assert torch.equal(channel, torch.as_tensor(gray))
    assert torch.equal(data.test.x[1], torch.full((3, 12, 12), 7, dtype=torch.uint8))


def test_an_all_grayscale_folder_keeps_one_channel(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    assert load_data(_folder_spec(tmp_path)).input_shape == (1, 8, 8)


def test_an_empty_class_folder_is_refused_naming_it_even_after_caching(tmp_path):
    _image_folder(tmp_path / "imgs")
    load_data(_folder_spec(tmp_path / "imgs"), cache_dir=tmp_path / "cache")  # cached now
    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "fox").mkdir()
    (tmp_path / "imgs" / "test" / "fox" / "notes.txt").write_text("no images here")
    message = _refusal(tmp_path / "imgs", cache_dir=tmp_path / "cache")
    assert message.startswith(f"{tmp_path / 'imgs' / 'train' / 'fox'}: an empty class folder")


def test_class_folders_that_differ_are_refused_naming_the_difference(tmp_path):
    _image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "fox").mkdir()
    (tmp_path / "imgs" / "test" / "dog").rename(tmp_path / "imgs" / "test" / "wolf")
    message = _refusal(tmp_path / "imgs")
    assert message.endswith("only in train/: dog, fox; only in test/: wolf")


def test_a_single_class_is_refused(tmp_path):
    _image_folder(tmp_path / "imgs", classes=("cat",))
    assert "1 class folder(s); a classifier needs at least 2" in _refusal(tmp_path / "imgs")


@pytest.mark.parametrize("missing", ["train", "test"])
def test_a_missing_split_folder_is_named(tmp_path, missing):
    _image_folder(tmp_path / "imgs")
    for f in (tmp_path / "imgs" / missing).rglob("*.png"):
        f.unlink()
    for d in (tmp_path / "imgs" / missing).iterdir():
        d.rmdir()
    (tmp_path / "imgs" / missing).rmdir()
    message = _refusal(tmp_path / "imgs")
    assert message.startswith(f"{tmp_path / 'imgs'}: no {missing}/ folder")


def test_an_unreadable_folder_is_named(tmp_path, monkeypatch):
    _image_folder(tmp_path / "imgs")
    locked = tmp_path / "imgs" / "train" / "emu"
    iterdir = Path.iterdir

    def refuse(self):  # as chmod 000 would, also when the tests run as root
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    assert _refusal(tmp_path / "imgs") == f"{locked}: cannot read this folder (Permission denied)"


def test_data_dir_serves_an_image_folder_study_without_a_path(tmp_path):
    _image_folder(tmp_path / "imgs")
    spec = DataSpec(dataset="imagefolder", val_size=3)  # the study file may leave path out
    assert load_data(spec, tmp_path / "imgs").num_classes == 3
    with pytest.raises(DataError) as info:
        load_data(spec, study_file="studies/mine.toml")
    message = str(info.value)
    assert message.startswith("studies/mine.toml: dataset 'imagefolder' needs its folder")
    assert 'path = "DIR" under [data]' in message and "--data-dir DIR" in message
    with pytest.raises(DataError, match=r"^dataset 'imagefolder' needs its folder"):
        load_data(spec)  # a caller that cannot name the file still gives both ways


@pytest.mark.slow
def test_a_corrupt_image_ends_the_cli_in_one_line(tmp_path):
    _image_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "train" / "cat" / "0.png"
    bad.write_bytes(b"not a png")
    study = tmp_path / "folder.toml"
    study.write_text(mlp_study_text(epochs=1, n_trials=1).replace(
        'dataset = "synthetic"\nval_size = 100', 'dataset = "imagefolder"\nval_size = 3'))
    proc = kdsearch("run-study", str(study), "--data-dir", str(tmp_path / "imgs"),
                    "--storage", f"sqlite:///{tmp_path / 's.db'}", "--cache-dir",
                    str(tmp_path / "c"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"kdsearch: error: {bad}: not an image PIL can read")
