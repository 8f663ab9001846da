"""The student spaces of the study file: `[student]` for each family, searched per trial.

`mlp` and `cnn` are plain stacks; `resnet` and `mobilenet` share the staged shape; with
`family = { choices = [...] }` the family is searched too, each with its own sub-table.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from kdsearch.architecture import MAX_CHANNELS, MAX_KERNEL, MAX_WIDTH, MobileNetArch, ResNetArch
from kdsearch.spec.limits import (
    MAX_BASE_WIDTH,
    MAX_CNN_DEPTH,
    MAX_CONVS_PER_BLOCK,
    MAX_EXPANSION,
    MAX_MLP_DEPTH,
    MAX_STAGE_BLOCKS,
    MAX_STAGED_KERNEL,
    MAX_STAGES,
    STAGED_FAMILIES,
)
from kdsearch.spec.params import (
    Alpha,
    Dropout,
    FloatChoices,
    FloatParam,
    FloatRange,
    Frozen,
    IntChoices,
    IntParam,
    IntRange,
    StrParam,
    Temperature,
    float_values,
    floats,
    high,
    ints,
    refuse,
    strs,
)


class MLPSpace(Frozen):
    family: Literal["mlp"]
    depth: Annotated[IntParam, ints("hidden layers", 1, MAX_MLP_DEPTH)] = IntRange(low=1, high=3)
    width: Annotated[IntParam, ints("units per layer", 1, MAX_WIDTH)] = IntChoices(
        choices=[16, 32, 64, 128, 256])
    width_per_layer: bool = False  # sample each layer's width separately
    dropout: Dropout = 0.0
    temperature: Temperature = FloatRange(low=1.0, high=20.0, log=True)
    alpha: Alpha = FloatRange(low=0.0, high=1.0)


def _last_channels_fit(width: int, growth: float, layers: int, unit: str,
                       keys: tuple[str, str, str]) -> None:
    """Refuse a space whose widest corner has more than MAX_CHANNELS in its last block/stage."""
    channels = round(width * growth ** (layers - 1))
    if channels > MAX_CHANNELS:
        raise refuse(f"at most {MAX_CHANNELS:,} channels in the last {unit} ({keys[0]} x "
                      f"{keys[1]}^({keys[2]} - 1))",
                      f"{width} x {growth:g}^{layers - 1} = {channels:,}", keys[0])


class CNNSpace(Frozen):
    family: Literal["cnn"]
    # conv blocks, each ending in a 2x2 max-pool
    depth: Annotated[IntParam, ints("conv blocks", 1, MAX_CNN_DEPTH)] = IntRange(low=1, high=3)
    # the last of >=2 is 'valid', as in the seed
    convs_per_block: Annotated[IntParam, ints("convs per block", 1, MAX_CONVS_PER_BLOCK)] = (
        IntRange(low=1, high=2))
    # channels of block 1
    width: Annotated[IntParam, ints("channels", 1, MAX_CHANNELS)] = IntChoices(choices=[4, 8, 16, 32])
    channel_growth: int = Field(default=2, ge=1, le=4, strict=True)  # channels x this per block
    kernel: Annotated[IntParam, ints("kernel sizes", 1, MAX_KERNEL, odd=True)] = IntChoices(
        choices=[3, 5])
    kernel_per_layer: bool = False  # sample each conv layer's kernel separately
    # hidden dense width, 0 = none
    dense: Annotated[IntParam, ints("dense widths (0 = none)", 0, MAX_WIDTH)] = IntChoices(
        choices=[0, 32, 64, 128, 256])
    conv_dropout: Dropout = 0.0
    dropout: Dropout = 0.0
    temperature: Temperature = FloatRange(low=1.0, high=20.0, log=True)
    alpha: Alpha = FloatRange(low=0.0, high=1.0)

    @model_validator(mode="after")
    def _channels_fit(self) -> CNNSpace:
        _last_channels_fit(high(self.width), self.channel_growth, high(self.depth), "block",
                           ("width", "channel_growth", "depth"))
        return self


class _StagedShape(Frozen):
    """What resnet and mobilenet students share: stages of equally many blocks, the first at the
    input's resolution, each later one halving the map and widening by `width_growth`."""

    stages: Annotated[IntParam, ints("stages", 1, MAX_STAGES)] = IntRange(low=3, high=4)
    # blocks in every stage (ResNet-8: 1, ResNet-20: 3)
    blocks: Annotated[IntParam, ints("blocks per stage", 1, MAX_STAGE_BLOCKS)] = IntRange(
        low=1, high=3)
    # channels of the stem and of stage 1
    base_width: Annotated[IntParam, ints("channels", 1, MAX_BASE_WIDTH)] = IntChoices(
        choices=[6, 8, 12, 16, 24])
    width_growth: Annotated[FloatParam, floats("a width growth from 1 to 4",
                                                lambda g: 1 <= g <= 4)] = FloatChoices(
        choices=[1.5, 2.0])
    kernel: Annotated[IntParam, ints("kernel sizes", 1, MAX_STAGED_KERNEL, odd=True)] = (
        IntChoices(choices=[3, 5]))

    @model_validator(mode="after")
    def _channels_fit(self) -> _StagedShape:
        _last_channels_fit(high(self.base_width), float_values(self.width_growth)[-1],
                           high(self.stages), "stage", ("base_width", "width_growth", "stages"))
        return self


class ResNetShape(_StagedShape):
    """He et al.'s basic blocks; `shortcut` "A" pads with zeros, "B" projects (1x1 conv)."""

    shortcut: Annotated[StrParam, strs("shortcuts", ("A", "B"))] = "A"


class MobileNetShape(_StagedShape):
    """MobileNetV2's inverted residual blocks."""

    expansion: Annotated[IntParam, ints("expansion ratios", 1, MAX_EXPANSION)] = IntChoices(
        choices=[2, 4, 6])
    head: Annotated[IntParam, ints("head channels (0 = none)", 0, MAX_CHANNELS)] = 0
    activation: Literal["relu6", "relu"] = "relu6"


class ResNetSpace(ResNetShape):
    family: Literal["resnet"]
    temperature: Temperature = FloatRange(low=1.0, high=20.0, log=True)
    alpha: Alpha = FloatRange(low=0.0, high=1.0)


class MobileNetSpace(MobileNetShape):
    family: Literal["mobilenet"]
    temperature: Temperature = FloatRange(low=1.0, high=20.0, log=True)
    alpha: Alpha = FloatRange(low=0.0, high=1.0)


class FamilyChoices(Frozen):
    choices: list[Literal["resnet", "mobilenet"]] = Field(min_length=1)


class FamilyChoiceSpace(Frozen):
    """`family = { choices = ["resnet", "mobilenet"] }`: the family is searched as well.

    Each family's space is its sub-table, `[student.resnet]` and `[student.mobilenet]` (the
    keys of `family = "resnet"`, less family, temperature and alpha, which are shared). Its
    parameters are named after it (`resnet.blocks`, `mobilenet.expansion`), so the sampler never
    takes one family's kernel for the other's and each keeps its own choices.
    """

    family: FamilyChoices
    resnet: ResNetShape | None = None
    mobilenet: MobileNetShape | None = None
    temperature: Temperature = FloatRange(low=1.0, high=20.0, log=True)
    alpha: Alpha = FloatRange(low=0.0, high=1.0)

    @model_validator(mode="after")
    def _one_table_per_choice(self) -> FamilyChoiceSpace:
        for family in STAGED_FAMILIES:
            chosen = family in self.family.choices
            if chosen and getattr(self, family) is None:
                raise refuse(f"a [student.{family}] table, since family '{family}' is among "
                              "the choices", "none", family)
            if not chosen and getattr(self, family) is not None:
                raise refuse(f"no [student.{family}] table, since family '{family}' is not "
                              "among the choices", "one", family)
        return self

    def shapes(self) -> dict[str, ResNetShape | MobileNetShape]:
        """family -> its sub-space, in the order of the choices."""
        return {f: getattr(self, f) for f in dict.fromkeys(self.family.choices)}


def _family_tag(raw: Any) -> str | None:
    family = raw.get("family") if isinstance(raw, dict) else getattr(raw, "family", None)
    if isinstance(family, dict | FamilyChoices):
        return "choice"
    return family if family is None or isinstance(family, str) else repr(family)


StudentSpace = Annotated[
    Annotated[MLPSpace, Tag("mlp")] | Annotated[CNNSpace, Tag("cnn")]
    | Annotated[ResNetSpace, Tag("resnet")] | Annotated[MobileNetSpace, Tag("mobilenet")]
    | Annotated[FamilyChoiceSpace, Tag("choice")],
    Discriminator(_family_tag)]
StagedSpace = ResNetSpace | MobileNetSpace | FamilyChoiceSpace


def staged_arch(shape: ResNetShape | MobileNetShape, stages: int, blocks: int, base_width: int,
                width_growth: float, kernel: int, shortcut: str = "A", expansion: int = 6,
                head: int = 0) -> ResNetArch | MobileNetArch:
    """The student of a resnet or mobilenet space at these values (the search suggests them)."""
    common = dict(blocks=[blocks] * stages, base_width=base_width, width_growth=width_growth,
                  kernel=kernel)
    if isinstance(shape, ResNetShape):
        return ResNetArch(**common, shortcut=shortcut)
    return MobileNetArch(**common, expansion=expansion, head=head, activation=shape.activation)


