"""Build networks from architectures, and measure them (parameters, multiply-accumulates).

Every model takes raw uint8 images (N, C, H, W) and normalises them itself, so an exported
model needs nothing but its own state dict to be evaluated.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsearch.architecture import CNNArch, MLPArch
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
    arch: MLPArch | CNNArch,
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
    """Trainable parameters (normalisation buffers are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(arch: MLPArch | CNNArch, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """Multiply-accumulates for one image through conv and dense layers (pooling and ReLU free)."""
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


def arch_params(arch: MLPArch | CNNArch, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """Parameter count without allocating the model (a student's size is known before training)."""
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
