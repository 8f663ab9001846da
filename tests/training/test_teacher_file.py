"""Teacher files: every format gives the PyTorch model's logits, and every user mistake is one
line naming the file.

One tiny model (conv + linear, 3x8x8 images, 4 classes) is saved in each format once per
module; a format that computes the same function from the same weights must match the model
run in PyTorch on the same uint8 images, after the declared scale, mean, std and layout.
"""

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from kdsearch.errors import KdsearchError, TeacherFileError
from kdsearch.training.teacher_file import (
    TeacherFile,
    file_digest,
    file_logits,
    load_teacher_file,
    resolve_format,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

SHAPE = (3, 8, 8)
CLASSES = 4
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, CLASSES)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class ChannelsLast(nn.Module):
    """What a Keras export looks like from outside: it takes NHWC."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 3, 1, 2))


class Softmaxed(nn.Module):
    """A classifier that ends in softmax, as many Keras models do."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x), dim=1)


class NaNOnBright(nn.Module):
    """Finite on the zero images of the load check, NaN for any image with a saturated pixel."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        bright = x.flatten(1).amax(1, keepdim=True) > 0.999
        return self.inner(x) + torch.where(bright, torch.full_like(bright, float("nan"), dtype=x.dtype), 0.0)


def prepare(x: torch.Tensor, scale=255.0, mean=None, std=None, layout="NCHW") -> torch.Tensor:
    """The reference: the declared input settings, written out independently of the module."""
    y = x.float() / scale
    if mean is not None:
        y = y - torch.tensor(mean).view(1, -1, 1, 1)
    if std is not None:
        y = y / torch.tensor(std).view(1, -1, 1, 1)
    return y.permute(0, 2, 3, 1) if layout == "NHWC" else y


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory, model) -> dict[str, Path]:
    """The tiny model in every format, written once for the module."""
    d = tmp_path_factory.mktemp("teachers")
    x = torch.rand(2, *SHAPE)
    nhwc = ChannelsLast(model).eval()
    batch = torch.export.Dim("batch")
    out = {}

    out["ts"] = d / "tiny.pt"  # TorchScript under the suffix state dicts share
    torch.jit.save(torch.jit.script(model), out["ts"])
    out["ts_nhwc"] = d / "tiny_nhwc.torchscript"
    torch.jit.save(torch.jit.trace(nhwc, x.permute(0, 2, 3, 1)), out["ts_nhwc"])
    out["export"] = d / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), out["export"])
    out["export_b1"] = d / "tiny_b1.pt2"  # the default torch.export: batch size fixed at the example's
    torch.export.save(torch.export.export(model, (x[:1],)), out["export_b1"])
    out["onnx"] = d / "tiny.onnx"
    torch.onnx.export(model, (x,), out["onnx"], dynamic_shapes=({0: batch},), verbose=False)
    out["onnx_nhwc"] = d / "tiny_nhwc.onnx"
    torch.onnx.export(nhwc, (x.permute(0, 2, 3, 1),), out["onnx_nhwc"], dynamic_shapes=({0: batch},), verbose=False)
    out["softmax"] = d / "softmax.pt"
    torch.jit.save(torch.jit.script(Softmaxed(model).eval()), out["softmax"])
    out["nan"] = d / "nan.pt"
    torch.jit.save(torch.jit.script(NaNOnBright(model).eval()), out["nan"])
    out["state_dict"] = d / "tiny_state.pt"
    torch.save(model.state_dict(), out["state_dict"])
    return out


def expect_one_line(match: str, path: Path, fn, *args, **kwargs) -> str:
    with pytest.raises(TeacherFileError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert info.value.exit_code == 2
    return message


# --- every format computes the model -------------------------------------------------------

CASES = [  # (file, format expected, input settings)
    ("ts", "torchscript", {}),
    ("ts_nhwc", "torchscript", {"layout": "NHWC", "scale": 1.0}),
    ("export", "export", {"mean": MEAN, "std": STD}),
    ("export_b1", "export", {"scale": 127.5, "mean": (1.0,), "std": (1.0,)}),
    ("onnx", "onnx", {"mean": MEAN, "std": STD}),
    ("onnx_nhwc", "onnx", {"layout": "NHWC", "mean": MEAN, "std": STD}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fmt", "settings"), CASES, ids=[c[0] for c in CASES])
def test_each_format_returns_the_models_logits(files, model, name, fmt, settings):
    tf = TeacherFile(files[name], **settings)
    teacher = load_teacher_file(tf, CLASSES, SHAPE)
    assert teacher.format == fmt and not teacher.probabilities
    x = images(37)  # not a multiple of the batch: the last batch is short (or padded)
    got = file_logits(teacher, x, batch_size=16)
    with torch.inference_mode():
        want = model(prepare(x, **{k: v for k, v in settings.items() if k != "layout"}))
    assert got.dtype == torch.float32 and got.shape == (37, CLASSES)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_fixed_batch_export_is_fed_padded_batches_of_its_size(files):
    teacher = load_teacher_file(TeacherFile(files["export_b1"]), CLASSES, SHAPE)
    assert teacher.fixed_batch == 1
    teacher_dyn = load_teacher_file(TeacherFile(files["export"]), CLASSES, SHAPE)
    assert teacher_dyn.fixed_batch is None
    x = images(5, seed=1)
    torch.testing.assert_close(teacher(x), teacher_dyn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_torchvision_architecture_from_a_state_dict(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    net = torchvision.models.get_model("resnet18", num_classes=CLASSES).eval()
    weights = tmp_path / "resnet18.pth"
    torch.save({"state_dict": net.state_dict()}, weights)  # wrapped, as training scripts often save
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    teacher = load_teacher_file(TeacherFile(weights, torchvision="resnet18", **imagenet), CLASSES, SHAPE)
    assert teacher.format == "torchvision"
    x = images(6, seed=2)
    with torch.inference_mode():
        want = net(prepare(x, **imagenet))
    torch.testing.assert_close(file_logits(teacher, x), want, atol=1e-4, rtol=1e-4)

    # the same weights for 10 classes: the head does not fit
    msg = expect_one_line("weights do not fit", weights, load_teacher_file,
                          TeacherFile(weights, torchvision="resnet18"), 10, SHAPE)
    assert "fc.weight is (4, 512) in the weights, (10, 512) in the model" in msg
    expect_one_line("'resnet_nine' .* cannot be built", weights, load_teacher_file,
                    TeacherFile(weights, torchvision="resnet_nine"), CLASSES, SHAPE)


def test_softmax_outputs_become_log_probabilities(files, model):
    """log p differs from the logits by a per-row constant: the same distillation targets."""
    teacher = load_teacher_file(TeacherFile(files["softmax"]), CLASSES, SHAPE)
    assert teacher.probabilities
    x = images(8, seed=3)
    with torch.inference_mode():
        want = torch.log_softmax(model(prepare(x)), dim=1)
    torch.testing.assert_close(teacher(x), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["export", "onnx", "softmax"])
def test_flip_average_is_the_mean_over_each_image_and_its_mirror(files, model, name):
    x = images(9, seed=4)
    plain = load_teacher_file(TeacherFile(files[name]), CLASSES, SHAPE)
    flipped = load_teacher_file(TeacherFile(files[name], flip_average=True), CLASSES, SHAPE)
    mirror = torch.flip(x, dims=(3,))
    got = file_logits(flipped, x, batch_size=4)
    torch.testing.assert_close(got, (plain(x) + plain(mirror)) / 2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain(x), atol=1e-3)  # the tiny model is not mirror-symmetric
    torch.testing.assert_close(flipped(mirror), got, atol=1e-5, rtol=1e-5)  # symmetric by design
    # a teacher cached without it keeps its key; with it, the logits are cached apart
    assert "flip_average" not in TeacherFile(files[name]).identity()
    assert TeacherFile(files[name], flip_average=True).identity() != TeacherFile(files[name]).identity()


# --- format from suffix and content --------------------------------------------------------


def test_format_from_suffix_and_content(files, tmp_path):
    assert resolve_format(TeacherFile(files["ts"])) == "torchscript"  # .pt holding TorchScript
    assert resolve_format(TeacherFile(files["export"])) == "export"
    assert resolve_format(TeacherFile(files["onnx"])) == "onnx"
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(files["export"].read_bytes())
    assert resolve_format(TeacherFile(renamed)) == "export"  # told by the archive's members
    assert resolve_format(TeacherFile(renamed, format="onnx")) == "onnx"  # declared wins
    assert resolve_format(TeacherFile(files["state_dict"], torchvision="resnet18")) == "torchvision"

    msg = expect_one_line("looks like a state dict", files["state_dict"], load_teacher_file,
                          TeacherFile(files["state_dict"]), CLASSES, SHAPE)
    assert "torchvision = NAME" in msg
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    msg = expect_one_line("cannot tell", odd, load_teacher_file, TeacherFile(odd), CLASSES, SHAPE)
    assert 'format = "torchscript", "export" or "onnx"' in msg


def test_a_state_dict_is_never_unpickled_as_a_model(files, monkeypatch):
    """No path through the loaders reaches pickle: torch.load only with weights_only=True."""
    real = torch.load

    def guarded(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)
    for name, _, settings in CASES:
        load_teacher_file(TeacherFile(files[name], **settings), CLASSES, SHAPE)
    expect_one_line("does not load as TorchScript", files["state_dict"], load_teacher_file,
                    TeacherFile(files["state_dict"], format="torchscript"), CLASSES, SHAPE)


# --- every mistake is one line naming the file ---------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.onnx"
    expect_one_line("teacher file not found", path, load_teacher_file, TeacherFile(path), CLASSES, SHAPE)


@pytest.mark.parametrize(("suffix", "what"), [(".onnx", "does not load as ONNX"),
                                              (".pt2", "does not load as a torch.export program"),
                                              (".torchscript", "")])
def test_a_file_that_does_not_load(tmp_path, suffix, what):
    path = tmp_path / f"broken{suffix}"
    if suffix == ".torchscript":  # a zip that claims TorchScript but holds garbage
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("broken/code/__torch__/m.py", "not python at all (")
            z.writestr("broken/data.pkl", b"junk")
        what = "does not load as TorchScript"
    elif suffix == ".pt2":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("broken/archive_format", "pt2")
    else:
        path.write_bytes(b"\x08\x07garbage\nwith a newline")
    expect_one_line(what, path, load_teacher_file, TeacherFile(path), CLASSES, SHAPE)


@pytest.mark.parametrize(("name", "layout"), [("onnx_nhwc", "NCHW"), ("onnx", "NHWC"),
                                              ("export", "NHWC"), ("ts_nhwc", "NCHW"), ("ts", "NHWC")])
def test_wrong_layout_names_the_shapes_and_the_fix(files, name, layout):
    other = "NHWC" if layout == "NCHW" else "NCHW"
    msg = expect_one_line(f'an {other} model\\? set layout = "{other}"', files[name], load_teacher_file,
                          TeacherFile(files[name], layout=layout), CLASSES, SHAPE)
    assert layout in msg


def test_wrong_image_size_without_a_layout_hint(files):
    msg = expect_one_line("expects input of shape", files["onnx"], load_teacher_file,
                          TeacherFile(files["onnx"]), CLASSES, (3, 16, 16))
    assert "(N, 3, 8, 8)" in msg and "given (N, 3, 16, 16)" in msg and "set layout" not in msg
    # TorchScript declares no shape: the error is the interpreter's own, its last line
    msg = expect_one_line("fails on a batch of shape \\(2, 3, 16, 16\\)", files["ts"], load_teacher_file,
                          TeacherFile(files["ts"]), CLASSES, (3, 16, 16))
    assert "mat1 and mat2 shapes cannot be multiplied" in msg and "set layout" not in msg


@pytest.mark.parametrize("name", ["ts", "export", "onnx"])
def test_wrong_number_of_classes(files, name):
    expect_one_line("wrong number of classes: expected 10, found 4", files[name], load_teacher_file,
                    TeacherFile(files[name]), 10, SHAPE)


def test_non_finite_outputs(files):
    teacher = load_teacher_file(TeacherFile(files["nan"]), CLASSES, SHAPE)  # zeros pass
    x = images(40, seed=4) // 2  # no pixel reaches 255 ...
    x[33, 1, 2, 3] = 255  # ... except one in image 33
    expect_one_line("non-finite outputs .* for image 33", files["nan"], file_logits, teacher, x, batch_size=16)
    # with mean -1 the zero images of the load check become ones: NaN at load
    expect_one_line("non-finite outputs", files["nan"], load_teacher_file,
                    TeacherFile(files["nan"], mean=(-1.0,)), CLASSES, SHAPE)


def test_input_settings_are_checked(files, tmp_path):
    path = files["onnx"]
    expect_one_line("must be absolute", Path("tiny.onnx"), TeacherFile, Path("tiny.onnx"))
    expect_one_line("layout: expected one of NCHW, NHWC", path, TeacherFile, path, layout="HWC")
    expect_one_line("format: expected one of", path, TeacherFile, path, format="keras")
    expect_one_line("scale: expected a positive number", path, TeacherFile, path, scale=0)
    expect_one_line("std: expected positive numbers", path, TeacherFile, path, std=(1.0, 0.0, 1.0))
    expect_one_line("needs torchvision = MODEL_NAME", path, TeacherFile, path, format="torchvision")
    expect_one_line("mean: expected 3 values", path, load_teacher_file,
                    TeacherFile(path, mean=(0.5, 0.5)), CLASSES, SHAPE)


# --- the cache key's ingredients -----------------------------------------------------------


def test_digest_and_identity(files, tmp_path):
    path = files["onnx"]
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    tf = TeacherFile(path, mean=[0.5, 0.4, 0.3])  # a TOML list
    assert tf.mean == MEAN and hash(tf) == hash(TeacherFile(path, mean=MEAN))
    ident = tf.identity()
    assert ident["sha256"] == file_digest(path) and ident["mean"] == list(MEAN)
    assert TeacherFile(path, layout="NHWC").identity() != TeacherFile(path).identity()
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    assert TeacherFile(copy).identity() == TeacherFile(path).identity()  # content, not name
    expect_one_line("cannot read teacher file", tmp_path / "gone", file_digest, tmp_path / "gone")


def test_errors_belong_to_the_family():
    assert issubclass(TeacherFileError, KdsearchError)
