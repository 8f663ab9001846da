"""Build networks from architectures; count a built model's parameters.

Every model takes raw uint8 images (N, C, H, W) and normalises them itself, so an exported
model needs nothing but its own state dict to be evaluated. Every model is an `nn.Sequential`
whose first layer is that `Normalize` (the engine normalises small data sets once and trains
the rest, `model[1:]`).

Families: `mlp` and `cnn` (plain stacks, no batch norm), `resnet` (He et al. 2016 basic
blocks) and `mobilenet` (Sandler et al. 2018 inverted residuals). Parameters and MACs of a
residual family are counted (kdsearch/sizes.py, no torch) from the same plan of
convolutions (`sizes.conv_plan`) that the builder follows, so the counts before training and
the built model agree by construction (and the tests check it against the modules themselves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.architecture import Arch, MLPArch, MobileNetArch, ResNetArch
from kdsearch.sizes import ArchitectureError, arch_params, conv_shapes, count_macs, same_padding, stage_blocks

# The size arithmetic lives beside the architectures, without torch (kdsearch/sizes.py);
# importers of this module keep finding it here.
__all__ = ["ArchitectureError", "Normalize", "arch_params", "build_model", "conv_shapes",
           "count_macs", "count_params"]


class Normalize(nn.Module):
    """uint8 pixels -> per-channel standardised floats; buffers, not parameters."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


def build_model(
    arch: Arch,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    """A `nn.Sequential` for `arch` on images of `input_shape` (C, H, W)."""
    channels = input_shape[0]
    mean = mean if mean is not None else (0.5,) * channels
    std = std if std is not None else (0.5,) * channels
    layers: list[nn.Module] = [Normalize(mean, std)]
    if isinstance(arch, ResNetArch):
        return nn.Sequential(*layers, *_resnet_layers(arch, channels, num_classes))
    if isinstance(arch, MobileNetArch):
        return nn.Sequential(*layers, *_mobilenet_layers(arch, channels, num_classes))
    if isinstance(arch, MLPArch):
        width = channels * input_shape[1] * input_shape[2]
        if arch.input_dropout:
            layers.append(nn.Dropout(arch.input_dropout))
        return nn.Sequential(*layers, nn.Flatten(),
                             *_dense_head(width, arch.hidden, arch.dropout, num_classes))

    shapes = conv_shapes(arch, input_shape)
    in_c = channels
    for layer in arch.convs:
        pad = same_padding(layer.kernel) if layer.padding == "same" else 0
        layers += [nn.Conv2d(in_c, layer.channels, layer.kernel, padding=pad), nn.ReLU(inplace=True)]
        if layer.pool:
            layers.append(nn.MaxPool2d(2))
            if arch.conv_dropout:
                layers.append(nn.Dropout(arch.conv_dropout))
        in_c = layer.channels
    c, _, _, h, w = shapes[-1]
    return nn.Sequential(*layers, nn.Flatten(),
                         *_dense_head(c * h * w, arch.dense, arch.dropout, num_classes))


def _dense_head(width: int, hidden: list[int], dropout: float, num_classes: int) -> list[nn.Module]:
    """Linear-ReLU(-Dropout) per hidden width, then the classifier: an MLP, or a CNN's head."""
    layers: list[nn.Module] = []
    for out in hidden:
        layers += [nn.Linear(width, out), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = out
    return [*layers, nn.Linear(width, num_classes)]


def count_params(model: nn.Module) -> int:
    """Trainable parameters (normalisation buffers and batch-norm statistics are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- Residual families -------------------------------------------------------------------------
# Stage 1 runs at the input's resolution; the first block of every later stage has stride 2.
# Every conv is bias-free and followed by batch norm; its padding is kernel // 2 ('same' at
# stride 1, ceil(H / 2) at stride 2).


def _conv_bn(in_c: int, out_c: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_c, out_c, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_c)]


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: subsample by `stride`, then append `extra` all-zero channels.

    Parameter-free, so ResNet-20 has its published 269,722 parameters.
    """

    def __init__(self, extra: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """Two kxk conv-BN pairs plus the (shortcut of the) input, then ReLU (He et al. 2016)."""

    def __init__(self, in_c: int, out_c: int, stride: int, kernel: int, shortcut: str):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_c, out_c, kernel, stride)
        self.conv2, self.bn2 = _conv_bn(out_c, out_c, kernel)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_c != out_c:
            self.shortcut = (ZeroPadShortcut(out_c - in_c, stride) if shortcut == "A"
                             else nn.Sequential(*_conv_bn(in_c, out_c, 1, stride)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class InvertedResidual(nn.Module):
    """1x1 expand, depthwise kxk, 1x1 project (Sandler et al. 2018, MobileNetV2).

    The projection has no activation (the "linear bottleneck": ReLU on the narrow output would
    destroy information); the input is added back when the shapes match.
    """

    def __init__(self, in_c: int, out_c: int, stride: int, kernel: int, expansion: int,
                 act: type[nn.Module]):
        super().__init__()
        hidden = in_c * expansion
        layers: list[nn.Module] = []
        if expansion != 1:  # an expansion of 1 has nothing to expand (V2's first block)
            layers += [*_conv_bn(in_c, hidden, 1), act(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, kernel, stride, groups=hidden), act(inplace=True),
                   *_conv_bn(hidden, out_c, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_c == out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def _resnet_layers(arch: ResNetArch, channels: int, num_classes: int) -> list[nn.Module]:
    blocks = [BasicBlock(i, o, s, arch.kernel, arch.shortcut) for i, o, s in stage_blocks(arch)]
    return [*_conv_bn(channels, arch.base_width, arch.kernel), nn.ReLU(inplace=True), *blocks,
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(arch.widths()[-1], num_classes)]


def _mobilenet_layers(arch: MobileNetArch, channels: int, num_classes: int) -> list[nn.Module]:
    act = nn.ReLU6 if arch.activation == "relu6" else nn.ReLU
    layers = [*_conv_bn(channels, arch.base_width, arch.kernel), act(inplace=True)]
    layers += [InvertedResidual(i, o, s, arch.kernel, arch.expansion, act) for i, o, s in stage_blocks(arch)]
    width = arch.widths()[-1]
    if arch.head:
        layers += [*_conv_bn(width, arch.head, 1), act(inplace=True)]
        width = arch.head
    return [*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
