
import pydantic
import pytest
import torch
from torch import nn

from kdsearch import sizes
from kdsearch.architecture import CNNArch, ConvLayer, MLPArch, MobileNetArch, ResNetArch, parse_arch
from kdsearch.search.space import cnn_arch
from kdsearch.sizes import ArchitectureError, arch_params, count_macs
from kdsearch.training import models
from kdsearch.training.models import Normalize, build_model, count_params

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)

SEED_CNN_TEACHER = CNNArch(
    convs=[ConvLayer(channels=32), ConvLayer(channels=32, padding="valid", pool=True),
           ConvLayer(channels=64), ConvLayer(channels=64, padding="valid", pool=True)],
    dense=[512], conv_dropout=0.25, dropout=0.5)
SEED_CNN_STUDENT = CNNArch(
    convs=[ConvLayer(channels=8), ConvLayer(channels=8, padding="valid", pool=True),
           ConvLayer(channels=16), ConvLayer(channels=16, padding="valid", pool=True)],
    dense=[128])


@pytest.mark.parametrize("arch, shape, expected", [
    (MLPArch(hidden=[128, 128], dropout=0.2), MNIST, 118_282),
    (MLPArch(hidden=[32, 32]), MNIST, 26_506),
    (SEED_CNN_TEACHER, CIFAR, 1_250_858),
    (SEED_CNN_STUDENT, CIFAR, 79_442),
])
def test_seed_networks_have_the_seed_parameter_counts(arch, shape, expected):
    model = build_model(arch, shape, 10)
    assert count_params(model) == expected
    assert arch_params(arch, shape, 10) == expected
    assert model(torch.zeros((2, *shape), dtype=torch.uint8)).shape == (2, 10)


def test_the_arithmetic_lives_in_sizes_and_models_still_offers_it():
    """`kdsearch.sizes` counts without torch; importers of training.models keep finding it."""
    for name in ("ArchitectureError", "arch_params", "count_macs", "conv_shapes"):
        assert getattr(models, name) is getattr(sizes, name)
    assert "torch" not in sizes.__dict__


def test_search_space_builder_expresses_the_seed_student():
    arch = cnn_arch(depth=2, convs_per_block=2, width=8, growth=2, kernels=[3] * 4, dense=128,
                    input_hw=32)
    assert arch == SEED_CNN_STUDENT
    assert arch_params(arch, CIFAR, 10) == 79_442


def test_macs_by_hand():
    # conv 3x3 same, 2->4 channels on 5x5: 5*5*4*2*9 = 1800; pool -> 2x2x4 = 16 -> dense 10: 160
    arch = CNNArch(convs=[ConvLayer(channels=4, kernel=3, pool=True)])
    assert count_macs(arch, (2, 5, 5), 10) == 1800 + 160
    assert count_macs(MLPArch(hidden=[32, 32]), MNIST, 10) == 784 * 32 + 32 * 32 + 32 * 10
    # the seed student: convs on 32x32, 30x30, 15x15, 13x13; dense 576->128->10
    expected = (32 * 32 * 8 * 3 * 9 + 30 * 30 * 8 * 8 * 9 + 15 * 15 * 16 * 8 * 9
                + 13 * 13 * 16 * 16 * 9 + 576 * 128 + 128 * 10)
    assert count_macs(SEED_CNN_STUDENT, CIFAR, 10) == expected


def test_collapsing_architecture_is_refused():
    arch = CNNArch(convs=[ConvLayer(channels=4, kernel=7, padding="valid")] * 3)
    with pytest.raises(ArchitectureError, match="leaves no pixels"):
        arch_params(arch, (1, 8, 8), 10)


def test_every_cnn_block_choice_builds_on_small_inputs():
    for depth in (1, 2, 3, 4):
        for per_block in (1, 2, 3):
            for k in (3, 5, 7):
                arch = cnn_arch(depth, per_block, 4, 2, [k] * depth * per_block, 0, input_hw=8)
                assert arch_params(arch, (1, 8, 8), 3) > 0


def test_model_normalises_uint8_inside():
    model = build_model(MLPArch(hidden=[]), (1, 2, 2), 2, mean=(0.5,), std=(0.25,))
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(model[0](x), torch.full((1, 1, 2, 2), 2.0))
    assert count_params(model) == 4 * 2 + 2  # buffers are not parameters


# --- Residual families ---------------------------------------------------------------------------

RESNET20 = ResNetArch(blocks=[3, 3, 3], base_width=16, width_growth=2.0, kernel=3, shortcut="A")
RESNET8_A = ResNetArch(blocks=[1, 1, 1])
RESNET8_B = ResNetArch(blocks=[1, 1, 1], shortcut="B")
MOBILENET = MobileNetArch(blocks=[1, 2, 2], base_width=16, expansion=6)
TINY_RESNET = ResNetArch(blocks=[1, 1], base_width=4, shortcut="B")
TINY_MOBILENET = MobileNetArch(blocks=[1, 2], base_width=4, expansion=3, head=16)


def hooked_macs(model: nn.Module, shape: tuple[int, int, int]) -> int:
    """MACs of one image, read off the modules as they run: independent of `count_macs`."""
    total = 0

    def conv(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m: nn.Linear, _inp, _out):
        nonlocal total
        total += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear)
    model.eval()
    with torch.no_grad():
        model(torch.zeros((1, *shape), dtype=torch.uint8))
    return total


def test_resnet20_option_a_has_the_published_parameter_count():
    model = build_model(RESNET20, CIFAR, 10)
    assert count_params(model) == 269_722  # He et al. 2016, Table 6: 0.27M
    assert arch_params(RESNET20, CIFAR, 10) == 269_722
    assert model(torch.zeros((2, *CIFAR), dtype=torch.uint8)).shape == (2, 10)


def test_resnet20_macs_by_hand_and_by_hooks():
    # stem 3->16 at 32x32; stage 1: six 16->16 convs at 32x32; stages 2 and 3: one widening conv
    # (16->32 at 16x16, 32->64 at 8x8) and five full-width ones each; then 64 -> 10.
    by_hand = (32 * 32 * 16 * 3 * 9 + 6 * 32 * 32 * 16 * 16 * 9
               + 16 * 16 * 32 * 16 * 9 + 5 * 16 * 16 * 32 * 32 * 9
               + 8 * 8 * 64 * 32 * 9 + 5 * 8 * 8 * 64 * 64 * 9 + 64 * 10)
    assert by_hand == 40_551_040  # "41M" in the literature; option B's projections make it 40.8M
    assert count_macs(RESNET20, CIFAR, 10) == by_hand
    assert hooked_macs(build_model(RESNET20, CIFAR, 10), CIFAR) == by_hand
    assert count_macs(ResNetArch(blocks=[3, 3, 3], shortcut="B"), CIFAR, 10) == 40_813_184


@pytest.mark.parametrize("arch, params, macs", [
    (RESNET8_A, 75_290, 12_239_488),
    (RESNET8_B, 78_042, 12_501_632),  # the "plain ResNet-8" of issue 11 (78,042 params)
])
def test_resnet8_counts(arch, params, macs):
    assert count_params(build_model(arch, CIFAR, 10)) == params == arch_params(arch, CIFAR, 10)
    assert count_macs(arch, CIFAR, 10) == macs


@pytest.mark.slow
@pytest.mark.parametrize("arch", [
    RESNET20, RESNET8_B, MOBILENET, TINY_RESNET, TINY_MOBILENET,
    ResNetArch(blocks=[2, 1, 1, 1], base_width=6, width_growth=1.5, kernel=5),
    ResNetArch(blocks=[1, 1, 1, 1, 1, 1], base_width=4),  # down to 1x1 maps
    MobileNetArch(blocks=[2, 1, 1], base_width=8, width_growth=1.5, expansion=1, activation="relu"),
    MobileNetArch(blocks=[1], base_width=8, expansion=4, kernel=5, head=32),
], ids=lambda a: a.describe())
@pytest.mark.parametrize("shape", [CIFAR, MNIST, (2, 9, 5)])
def test_counts_before_building_match_the_built_model(arch, shape):
    model = build_model(arch, shape, 7)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], Normalize)
    assert arch_params(arch, shape, 7) == count_params(model)
    assert count_macs(arch, shape, 7) == hooked_macs(model, shape)
    assert model(torch.zeros((2, *shape), dtype=torch.uint8)).shape == (2, 7)


def test_depthwise_conv_macs_are_per_channel():
    # stem 1->4 (3x3, 5x5 map): 900; depthwise 3x3 over 4 channels: 4*9*25 = 900, not the
    # 4*4*9*25 = 3600 of a dense conv; project 1x1 4->4: 400; linear 4 -> 3: 12.
    arch = MobileNetArch(blocks=[1], base_width=4, expansion=1)
    assert count_macs(arch, (1, 5, 5), 3) == 900 + 900 + 400 + 12
    # with expansion 2 the 1x1 expand (4->8) runs before the depthwise conv (8 channels)
    arch = MobileNetArch(blocks=[1], base_width=4, expansion=2)
    assert count_macs(arch, (1, 5, 5), 3) == 900 + 25 * 8 * 4 + 8 * 9 * 25 + 25 * 4 * 8 + 12


def test_mobilenet_blocks_add_their_input_only_where_shapes_match():
    model = build_model(MOBILENET, CIFAR, 10)
    blocks = [m for m in model if m.__class__.__name__ == "InvertedResidual"]
    assert [b.residual for b in blocks] == [True, False, True, False, True]
    assert model(torch.zeros((2, *CIFAR), dtype=torch.uint8)).shape == (2, 10)
    assert count_params(model) == 101_562


def test_describe_and_round_trip_through_json():
    assert RESNET20.describe() == "resnet 3-3-3 w16x2 k3 A"
    assert MOBILENET.describe() == "mobilenet 1-2-2 w16x2 k3 t6"
    assert (MobileNetArch(blocks=[1], width_growth=1.5, head=64, activation="relu").describe()
            == "mobilenet 1 w16x1.5 k3 t6 h64 relu")
    for arch in (RESNET20, TINY_MOBILENET, SEED_CNN_STUDENT, MLPArch(hidden=[8])):
        assert parse_arch(arch.model_dump(mode="json")) == arch


@pytest.mark.parametrize("bad", [
    {"family": "resnet", "blocks": [3, 3], "kernel": 4},
    {"family": "resnet", "blocks": []},
    {"family": "resnet", "blocks": [0, 1]},
    {"family": "resnet", "blocks": [1], "shortcut": "C"},
    {"family": "resnet", "blocks": [1], "width_growth": 0.5},
    {"family": "mobilenet", "blocks": [1], "expansion": 0},
    {"family": "mobilenet", "blocks": [1], "depth": 3},
])
def test_invalid_residual_architectures_are_refused(bad):
    with pytest.raises(pydantic.ValidationError):
        parse_arch(bad)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [TINY_RESNET, TINY_MOBILENET], ids=lambda a: a.family)
def test_eval_mode_batch_norm_is_deterministic_and_per_image(arch):
    torch.manual_seed(0)
    model = build_model(arch, (3, 8, 8), 5)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from their initial values
            model(x)
        train_a, train_b = model(x), model(x[:2])
    assert not torch.allclose(train_a[:2], train_b, atol=1e-5)  # batch statistics in training
    model.eval()
    with torch.no_grad():
        a, b, again = model(x), model(x[:2]), model(x)
    assert torch.allclose(a[:2], b, atol=1e-5)  # running statistics: an image's logits alone
    assert torch.equal(a, again)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [TINY_RESNET, TINY_MOBILENET], ids=lambda a: a.family)
def test_a_training_step_updates_weights_and_statistics(arch):
    torch.manual_seed(0)
    model = build_model(arch, (3, 8, 8), 5)
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 5, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    after = model.state_dict()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.endswith("running_mean") for k in changed)
    assert any(k.endswith("weight") for k in changed)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [TINY_RESNET, TINY_MOBILENET], ids=lambda a: a.family)
def test_the_engine_trains_and_evaluates_residual_families(arch):
    from kdsearch.spec import DataSpec, SyntheticSpec, TrainRecipe
    from kdsearch.training.data import load_data
    from kdsearch.training.engine import TrainSettings, accuracy, train

    data = load_data(DataSpec(dataset="synthetic", val_size=40, synthetic=SyntheticSpec(
        n_train=200, n_test=40, channels=3, height=8, width=8, num_classes=3)))
    torch.manual_seed(0)
    model = build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)
    recipe = TrainRecipe(epochs=2, batch_size=32, optimizer="sgd", lr=0.05)
    result = train(model, data, TrainSettings(recipe, torch.device("cpu")))
    assert result.epochs_run == 2
    assert not model.training  # validation left it in eval mode: BN uses running statistics
    assert accuracy(model, data.val, torch.device("cpu")) == result.val_accuracy


# --- Exports: every format compress writes, and torch.export -------------------------------------

EXPORT_SHAPE = (3, 8, 8)


def _trained_ish(arch) -> tuple[nn.Module, torch.Tensor]:
    """A model whose batch-norm statistics are not the identity, and a batch to compare on."""
    torch.manual_seed(0)
    model = build_model(arch, EXPORT_SHAPE, 5, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    x = torch.randint(0, 256, (4, *EXPORT_SHAPE), dtype=torch.uint8)
    with torch.no_grad():
        model.train()
        model(x)
    return model.eval(), x


@pytest.mark.slow
@pytest.mark.parametrize("arch", [TINY_RESNET, ResNetArch(blocks=[1, 1], base_width=4), TINY_MOBILENET],
                         ids=["resnet-B", "resnet-A", "mobilenet"])
def test_torch_export_matches_eager(arch):
    model, x = _trained_ish(arch)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [TINY_RESNET, ResNetArch(blocks=[1, 1], base_width=4), TINY_MOBILENET],
                         ids=["resnet-B", "resnet-A", "mobilenet"])
def test_compress_exports_run_and_match(arch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from kdsearch.compress.retrain import _export_onnx, _export_pt2

    model, x = _trained_ish(arch)
    with torch.no_grad():
        expected = model(x)
    assert _export_pt2(model, x[:2], tmp_path / "m.pt2") is None  # batch 4 below, exported at 2
    with torch.no_grad():
        loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
        assert torch.allclose(loaded(x), expected, atol=1e-5)
    assert _export_onnx(model, x[:1], tmp_path / "m.onnx") is None
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})  # batch 4, exported at batch 1
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
