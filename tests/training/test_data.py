import struct

import numpy as np
import pytest
import torch
from PIL import Image

from kdsearch.errors import DataError
from kdsearch.spec import DataSpec, SyntheticSpec
from kdsearch.training.data import load_data


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
