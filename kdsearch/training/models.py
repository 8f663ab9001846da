"""Build networks from architectures, and measure them (parameters, multiply-accumulates).

Every model takes raw uint8 images (N, C, H, W) and normalises them itself, so an exported
model needs nothing but its own state dict to be evaluated. Every model is an `nn.Sequential`
whose first layer is that `Normalize` (the engine normalises small data sets once and trains
the rest, `model[1:]`).

Families: `mlp` and `cnn` (plain stacks, no batch norm), `resnet` (He et al. 2016 basic
blocks) and `mobilenet` (Sandler et al. 2018 inverted residuals). Parameters and MACs of a
residual family are counted from the same plan of convolutions (`_conv_plan`) that the
builder follows, so the counts before training and the built model agree by construction
(and the tests check it against the modules themselves).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.architecture import Arch, CNNArch, MLPArch, MobileNetArch, ResNetArch
from kdsearch.errors import KdsearchError


class ArchitectureError(KdsearchError):
    """An architecture cannot be built for the given input (e.g. its feature map collapses)."""


class Normalize(nn.Module):
    """uint8 pixels -> per-channel standardised floats; buffers, not parameters."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


def _same_padding(kernel: int) -> int:
    return kernel // 2


def conv_shapes(
    arch: CNNArch, input_shape: tuple[int, int, int]
) -> list[tuple[int, int, int, int, int]]:
    """(C, conv H, conv W, H, W) per conv layer: its own output, then after its pool.

    Raises `ArchitectureError` when the feature map collapses to nothing.
    """
    c, h, w = input_shape
    shapes = []
    for i, layer in enumerate(arch.convs):
        if layer.padding == "same":
            pad = _same_padding(layer.kernel)
            h, w = h + 2 * pad - layer.kernel + 1, w + 2 * pad - layer.kernel + 1
        else:
            h, w = h - layer.kernel + 1, w - layer.kernel + 1
        if h < 1 or w < 1:
            raise ArchitectureError(
                f"conv layer {i + 1} ({layer.kernel}x{layer.kernel}, {layer.padding}) leaves no "
                f"pixels of a {input_shape[1]}x{input_shape[2]} input"
            )
        c, conv_h, conv_w = layer.channels, h, w
        if layer.pool:
            if h < 2 or w < 2:
                raise ArchitectureError(f"pooling after conv layer {i + 1} has a {h}x{w} map")
            h, w = h // 2, w // 2
        shapes.append((c, conv_h, conv_w, h, w))
    return shapes


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
        pad = _same_padding(layer.kernel) if layer.padding == "same" else 0
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


def count_macs(arch: Arch, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """Multiply-accumulates for one image through conv and dense layers.

    Pooling, ReLU, batch norm (folded into the conv before it at inference), residual adds
    and zero-padded shortcuts are counted as free: they are O(activations), not O(weights).
    A grouped conv costs 1/groups of a dense one, so a depthwise kxk conv over C channels on
    an HxW output costs C*k*k*H*W.
    """
    if isinstance(arch, ResNetArch | MobileNetArch):
        convs = _conv_plan(arch, input_shape)
        return (sum(c.h * c.w * c.out_c * (c.in_c // c.groups) * c.kernel**2 for c in convs)
                + convs[-1].out_c * num_classes)
    macs = 0
    if isinstance(arch, MLPArch):
        width = input_shape[0] * input_shape[1] * input_shape[2]
    else:
        in_c = input_shape[0]
        shapes = conv_shapes(arch, input_shape)
        for layer, (c, conv_h, conv_w, _, _) in zip(arch.convs, shapes, strict=True):
            macs += conv_h * conv_w * c * in_c * layer.kernel * layer.kernel
            in_c = c
        c, _, _, h, w = shapes[-1]
        width = c * h * w
    hidden = arch.hidden if isinstance(arch, MLPArch) else arch.dense
    for out in [*hidden, num_classes]:
        macs += width * out
        width = out
    return macs


def arch_params(arch: Arch, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """Parameter count without allocating the model (a student's size is known before training)."""
    if isinstance(arch, ResNetArch | MobileNetArch):
        # Convs carry no bias (the batch norm after each has one); batch norm: a scale and a shift.
        convs = _conv_plan(arch, input_shape)
        return (sum(c.out_c * (c.in_c // c.groups) * c.kernel**2 + 2 * c.out_c for c in convs)
                + convs[-1].out_c * num_classes + num_classes)
    if isinstance(arch, MLPArch):
        width = input_shape[0] * input_shape[1] * input_shape[2]
        total = 0
    else:
        total, in_c = 0, input_shape[0]
        for layer in arch.convs:
            total += layer.channels * in_c * layer.kernel * layer.kernel + layer.channels
            in_c = layer.channels
        c, _, _, h, w = conv_shapes(arch, input_shape)[-1]
        width = c * h * w
    hidden = arch.hidden if isinstance(arch, MLPArch) else arch.dense
    for out in [*hidden, num_classes]:
        total += width * out + out
        width = out
    return total


# --- Residual families -------------------------------------------------------------------------
# Stage 1 runs at the input's resolution; the first block of every later stage has stride 2.
# Every conv is bias-free and followed by batch norm; its padding is kernel // 2 ('same' at
# stride 1, ceil(H / 2) at stride 2).


def _blocks(arch: ResNetArch | MobileNetArch) -> list[tuple[int, int, int]]:
    """(in channels, out channels, stride) of every block, in order; the stem gives base_width."""
    plan, in_c = [], arch.base_width
    for stage, (n, width) in enumerate(zip(arch.blocks, arch.widths(), strict=True)):
        for b in range(n):
            plan.append((in_c, width, 2 if stage > 0 and b == 0 else 1))
            in_c = width
    return plan


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
    blocks = [BasicBlock(i, o, s, arch.kernel, arch.shortcut) for i, o, s in _blocks(arch)]
    return [*_conv_bn(channels, arch.base_width, arch.kernel), nn.ReLU(inplace=True), *blocks,
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(arch.widths()[-1], num_classes)]


def _mobilenet_layers(arch: MobileNetArch, channels: int, num_classes: int) -> list[nn.Module]:
    act = nn.ReLU6 if arch.activation == "relu6" else nn.ReLU
    layers = [*_conv_bn(channels, arch.base_width, arch.kernel), act(inplace=True)]
    layers += [InvertedResidual(i, o, s, arch.kernel, arch.expansion, act) for i, o, s in _blocks(arch)]
    width = arch.widths()[-1]
    if arch.head:
        layers += [*_conv_bn(width, arch.head, 1), act(inplace=True)]
        width = arch.head
    return [*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]


class _Conv(NamedTuple):
    """One bias-free conv (each followed by batch norm) and the size of its output map."""

    in_c: int
    out_c: int
    kernel: int
    groups: int
    h: int
    w: int


def _conv_plan(arch: ResNetArch | MobileNetArch, input_shape: tuple[int, int, int]) -> list[_Conv]:
    """Every conv the builder makes for `arch`, in order: what params and MACs are counted from."""
    c, h, w = input_shape
    k = arch.kernel
    convs = [_Conv(c, arch.base_width, k, 1, h, w)]  # the stem
    for in_c, out_c, stride in _blocks(arch):
        in_h, in_w = h, w
        if stride == 2:
            h, w = (h + 1) // 2, (w + 1) // 2
        if isinstance(arch, ResNetArch):
            convs += [_Conv(in_c, out_c, k, 1, h, w), _Conv(out_c, out_c, k, 1, h, w)]
            if arch.shortcut == "B" and (stride != 1 or in_c != out_c):
                convs.append(_Conv(in_c, out_c, 1, 1, h, w))
        else:
            hidden = in_c * arch.expansion
            if arch.expansion != 1:
                convs.append(_Conv(in_c, hidden, 1, 1, in_h, in_w))  # before the stride
            convs += [_Conv(hidden, hidden, k, hidden, h, w), _Conv(hidden, out_c, 1, 1, h, w)]
    if isinstance(arch, MobileNetArch) and arch.head:
        convs.append(_Conv(convs[-1].out_c, arch.head, 1, 1, h, w))
    return convs
