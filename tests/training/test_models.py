import pytest
import torch

from kdsearch.architecture import CNNArch, ConvLayer, MLPArch
from kdsearch.search.space import cnn_arch
from kdsearch.training.models import ArchitectureError, arch_params, build_model, count_macs, count_params

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
