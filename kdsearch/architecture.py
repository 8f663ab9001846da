"""Plain, JSON-serialisable network descriptions.

An architecture says *what* a network is, independent of the data it will see; `sizes.py`
counts its parameters and MACs, and `training/models.py` turns it into a `torch.nn.Module`, once
the input shape and class count are known. Keeping them as frozen, strict pydantic models lets
the same object live in a study file, a trial's user attributes and an exported model folder.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, field_validator

# Caps on what a network may ask for: past them a layer cannot be allocated, or takes hours per
# epoch on the images kdsearch trains on. `spec` checks study files against the same numbers.
MAX_CHANNELS = 4096  # per conv layer
MAX_KERNEL = 15  # conv kernel side
MAX_WIDTH = 16_384  # per dense layer: one 16,384 x 16,384 layer is already 268M parameters
MAX_DENSE_LAYERS = 32
MAX_CONV_LAYERS = 128  # 16 blocks of 8 convs, the most a student space may ask for

Width = Annotated[int, Strict(), Field(ge=1, le=MAX_WIDTH)]  # strict: `true` is not a width


class _Frozen(BaseModel):
    # strict: a string or a boolean where a number belongs is refused, never converted
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


class ConvLayer(_Frozen):
    channels: int = Field(ge=1, le=MAX_CHANNELS, strict=True)
    kernel: int = Field(default=3, ge=1, le=MAX_KERNEL, strict=True)
    padding: Literal["same", "valid"] = "same"
    pool: bool = False  # 2x2 max-pool after this layer (and its ReLU)


class MLPArch(_Frozen):
    family: Literal["mlp"] = "mlp"
    hidden: list[Width] = Field(default_factory=list, max_length=MAX_DENSE_LAYERS)  # in order
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # after every hidden layer
    input_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # on the pixels (Srivastava et al.: 0.2)

    def describe(self) -> str:
        return "mlp " + ("-".join(map(str, self.hidden)) or "linear")

    @property
    def n_layers(self) -> int:
        """Hidden layers: the depth that sweeps plot accuracy against."""
        return len(self.hidden)


class CNNArch(_Frozen):
    family: Literal["cnn"] = "cnn"
    convs: list[ConvLayer] = Field(min_length=1, max_length=MAX_CONV_LAYERS)
    dense: list[Width] = Field(default_factory=list, max_length=MAX_DENSE_LAYERS)  # after flatten
    conv_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # after every pooling layer
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # after every hidden dense layer

    def describe(self) -> str:
        convs = "-".join(
            f"{c.channels}k{c.kernel}{'v' if c.padding == 'valid' else ''}{'p' if c.pool else ''}"
            for c in self.convs
        )
        dense = "-".join(map(str, self.dense))
        return f"cnn {convs}" + (f" dense {dense}" if dense else "")

    @property
    def n_layers(self) -> int:
        """Conv layers: the depth that sweeps plot accuracy against."""
        return len(self.convs)


# Residual families. Stage 1 keeps the input's resolution; every later stage halves it in its
# first block (stride 2) and multiplies the width by `width_growth`, as in He et al.'s CIFAR
# ResNets. The shared knobs read the same in both families.
StageBlocks = Annotated[int, Field(ge=1, le=18)]  # 18: ResNet-110's 3 x 18


class _Staged(_Frozen):
    blocks: list[StageBlocks] = Field(min_length=1, max_length=6)  # blocks per stage, in order
    base_width: int = Field(default=16, ge=1, le=1024)  # channels of the stem and stage 1
    width_growth: float = Field(default=2.0, ge=1.0, le=4.0)  # width ratio of one stage to the last
    kernel: int = Field(default=3, ge=1, le=7)  # of the stem and of every spatial conv

    @field_validator("kernel")
    @classmethod
    def _odd(cls, kernel: int) -> int:
        # 'same' padding (kernel // 2) keeps an odd kernel's map size; an even one would shrink it.
        if kernel % 2 == 0:
            raise ValueError(f"expected an odd kernel, got {kernel}")
        return kernel

    @property
    def n_layers(self) -> int:
        """Residual blocks: the depth that sweeps plot accuracy against."""
        return sum(self.blocks)

    def widths(self) -> list[int]:
        """Channels of each stage: base_width * width_growth ** stage, rounded."""
        return [max(1, round(self.base_width * self.width_growth**i)) for i in range(len(self.blocks))]

    def _shape(self) -> str:
        return f"{'-'.join(map(str, self.blocks))} w{self.base_width}x{self.width_growth:g} k{self.kernel}"


class ResNetArch(_Staged):
    """He et al. (2016) basic-block ResNet with batch norm; ResNet-20 is blocks=[3, 3, 3]."""

    family: Literal["resnet"] = "resnet"
    # Where a block changes shape, "A" subsamples its input and pads the new channels with zeros
    # (parameter-free, He et al.'s CIFAR choice); "B" projects it with a 1x1 conv and batch norm.
    shortcut: Literal["A", "B"] = "A"

    def describe(self) -> str:
        return f"resnet {self._shape()} {self.shortcut}"


class MobileNetArch(_Staged):
    """MobileNetV2 (Sandler et al. 2018) inverted residual blocks on a CIFAR-sized stem."""

    family: Literal["mobilenet"] = "mobilenet"
    expansion: int = Field(default=6, ge=1, le=8)  # hidden width of a block / its input width
    head: int = Field(default=0, ge=0, le=4096)  # channels of a final 1x1 conv (0: none; V2: 1280)
    activation: Literal["relu6", "relu"] = "relu6"

    def describe(self) -> str:
        head = f" h{self.head}" if self.head else ""
        act = "" if self.activation == "relu6" else " relu"
        return f"mobilenet {self._shape()} t{self.expansion}{head}{act}"


Arch = Annotated[MLPArch | CNNArch | ResNetArch | MobileNetArch, Field(discriminator="family")]
_ARCH = TypeAdapter(Arch)


def parse_arch(raw: dict[str, Any]) -> Arch:
    """Any family's architecture back from its JSON form (a trial's attribute, architecture.json)."""
    return _ARCH.validate_python(raw)


def cnn_arch(depth: int, convs_per_block: int, width: int, growth: int, kernels: list[int],
             dense: int, input_hw: int, conv_dropout: float = 0.0, dropout: float = 0.0) -> CNNArch:
    """Blocks of `convs_per_block` convs, 'same' then a final 'valid' one, then a 2x2 pool.

    With depth 2, 2 convs per block, width 8, kernel 3 and dense 128 this is the seed's
    student (8-8-16-16, dense 128, 79,442 params on CIFAR-10). A 'valid' conv or a pool that
    would shrink the feature map below 2 pixels is left out, so every sample can be built.
    It lives here, not in the search space, so that `spec` can size a space's students.
    """
    convs, size, k = [], input_hw, iter(kernels)
    for block in range(depth):
        channels = width * growth**block
        for j in range(convs_per_block):
            kernel = next(k)
            last = j == convs_per_block - 1
            valid = last and convs_per_block >= 2 and size - (kernel - 1) >= 2
            size -= (kernel - 1) if valid else 0
            pool = last and size >= 2
            size = size // 2 if pool else size
            convs.append(ConvLayer(channels=channels, kernel=kernel,
                                   padding="valid" if valid else "same", pool=pool))
    return CNNArch(convs=convs, dense=[dense] if dense else [], conv_dropout=conv_dropout,
                   dropout=dropout)
