"""A network's size and cost from its architecture alone: parameters and multiply-accumulates.

Plain arithmetic, no torch, so the study file can be checked against its input at load
(`spec`) and a student sized before it is built (`search`). `training/models.py` builds the
networks these numbers describe; for the residual families both follow one plan of
convolutions (`conv_plan`), so the counts before training and the built model agree by
construction (tests/training/test_models.py checks them against the modules themselves).
"""

from __future__ import annotations

from typing import NamedTuple

from kdsearch.architecture import Arch, CNNArch, MLPArch, MobileNetArch, ResNetArch
from kdsearch.errors import KdsearchError


class ArchitectureError(KdsearchError):
    """An architecture cannot be built for the given input (e.g. its feature map collapses)."""


def same_padding(kernel: int) -> int:
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
            pad = same_padding(layer.kernel)
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


def count_macs(arch: Arch, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """Multiply-accumulates for one image through conv and dense layers.

    Pooling, ReLU, batch norm (folded into the conv before it at inference), residual adds
    and zero-padded shortcuts are counted as free: they are O(activations), not O(weights).
    A grouped conv costs 1/groups of a dense one, so a depthwise kxk conv over C channels on
    an HxW output costs C*k*k*H*W.
    """
    if isinstance(arch, ResNetArch | MobileNetArch):
        convs = conv_plan(arch, input_shape)
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
        convs = conv_plan(arch, input_shape)
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


def stage_blocks(arch: ResNetArch | MobileNetArch) -> list[tuple[int, int, int]]:
    """(in channels, out channels, stride) of every block, in order; the stem gives base_width."""
    plan, in_c = [], arch.base_width
    for stage, (n, width) in enumerate(zip(arch.blocks, arch.widths(), strict=True)):
        for b in range(n):
            plan.append((in_c, width, 2 if stage > 0 and b == 0 else 1))
            in_c = width
    return plan


class Conv(NamedTuple):
    """One bias-free conv (each followed by batch norm) and the size of its output map."""

    in_c: int
    out_c: int
    kernel: int
    groups: int
    h: int
    w: int


def conv_plan(arch: ResNetArch | MobileNetArch, input_shape: tuple[int, int, int]) -> list[Conv]:
    """Every conv the builder makes for `arch`, in order: what params and MACs are counted from."""
    c, h, w = input_shape
    k = arch.kernel
    convs = [Conv(c, arch.base_width, k, 1, h, w)]  # the stem
    for in_c, out_c, stride in stage_blocks(arch):
        in_h, in_w = h, w
        if stride == 2:
            h, w = (h + 1) // 2, (w + 1) // 2
        if isinstance(arch, ResNetArch):
            convs += [Conv(in_c, out_c, k, 1, h, w), Conv(out_c, out_c, k, 1, h, w)]
            if arch.shortcut == "B" and (stride != 1 or in_c != out_c):
                convs.append(Conv(in_c, out_c, 1, 1, h, w))
        else:
            hidden = in_c * arch.expansion
            if arch.expansion != 1:
                convs.append(Conv(in_c, hidden, 1, 1, in_h, in_w))  # before the stride
            convs += [Conv(hidden, hidden, k, hidden, h, w), Conv(hidden, out_c, 1, 1, h, w)]
    if isinstance(arch, MobileNetArch) and arch.head:
        convs.append(Conv(convs[-1].out_c, arch.head, 1, 1, h, w))
    return convs
