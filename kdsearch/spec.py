"""The study file, typed: `load_study("cifar_compress")` -> a frozen `StudySpec`.

A study file is checked once, here, so that nothing downstream meets a bad value halfway
through a run. Every failure becomes one line naming the file, the key, what was expected
and what was found.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from importlib import resources
from itertools import product
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kdsearch.architecture import (
    MAX_CHANNELS,
    MAX_CONV_LAYERS,
    MAX_DENSE_LAYERS,
    MAX_KERNEL,
    MAX_WIDTH,
    Arch,
    MLPArch,
    MobileNetArch,
    ResNetArch,
    cnn_arch,
)
from kdsearch.errors import StudyFileError, one_line

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder")
# What the named data sets look like, so a study file is checked against its input before any
# download: name -> ((channels, height, width), classes). `training/data.py` loads them.
NAMED_INPUTS = {
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}
MAX_PARAMS = 100_000_000  # per network: 400 MB of weights, 1.6 GB with gradients and Adam
MAX_PIXELS = 2**28  # synthetic data: pixel values in all, 1 GiB while drawn as floats
MAX_MLP_DEPTH = MAX_DENSE_LAYERS
MAX_CNN_DEPTH = 16  # conv blocks
MAX_CONVS_PER_BLOCK = MAX_CONV_LAYERS // MAX_CNN_DEPTH
# Residual families: what `ResNetArch` / `MobileNetArch` take (architecture.py).
MAX_STAGES = 6
MAX_STAGE_BLOCKS = 18
MAX_BASE_WIDTH = 1024
MAX_STAGED_KERNEL = 7
MAX_EXPANSION = 8
STAGED_FAMILIES = ("resnet", "mobilenet")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _refuse(expected: str, found: str, key: str = "") -> PydanticCustomError:
    """A validation error whose words are ours; `key` names a sub-key of where it is raised."""
    return PydanticCustomError("kdsearch", "expected {expected}, found {found}",
                               {"expected": expected, "found": found, "key": key})


# --- search-space parameters: a fixed value, a range, or a list of choices -------------------


class IntRange(_Frozen):
    low: int
    high: int
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError("low <= high")
        return self


class FloatRange(_Frozen):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError("low <= high")
        if self.log and self.low <= 0:
            raise ValueError("low > 0 for a log range")
        return self


class IntChoices(_Frozen):
    choices: list[int] = Field(min_length=1)


class FloatChoices(_Frozen):
    choices: list[float] = Field(min_length=1)


class StrChoices(_Frozen):
    choices: list[str] = Field(min_length=1)


IntParam = int | IntRange | IntChoices
FloatParam = float | FloatRange | FloatChoices
StrParam = str | StrChoices


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param_values(raw: Any, integer: bool) -> list[tuple[float, str]]:
    """Every end a parameter can reach, with how the file names it; refuses a malformed one.

    Written by hand rather than left to pydantic's union, whose errors for `{ choices = [] }`
    come from the range member ("low: expected a value") and mislead.
    """
    if isinstance(raw, BaseModel):  # built in code rather than read from a file
        raw = raw.model_dump()
    kind, ok = ("a whole number", _is_int) if integer else ("a number", _is_number)
    if ok(raw):
        if not integer and not math.isfinite(raw):
            raise _refuse("a finite number", repr(raw))
        return [(raw, "{}")]
    if isinstance(raw, dict) and "choices" in raw:
        choices = raw["choices"]
        if set(raw) != {"choices"}:
            raise _refuse("only 'choices' in { choices = [..] }",
                          f"key '{sorted(set(raw) - {'choices'})[0]}'")
        if not isinstance(choices, list) or not choices:
            raise _refuse("a non-empty list of choices", _describe_found(choices))
        for c in choices:
            if not ok(c) or (not integer and not math.isfinite(c)):
                noun = "whole numbers" if integer else "finite numbers"
                raise _refuse(f"{noun} as choices", f"{_describe_found(c)} among them")
        return [(c, "{} among the choices") for c in choices]
    if isinstance(raw, dict) and raw:
        allowed = {"low", "high", "step"} if integer else {"low", "high", "log"}
        if set(raw) - allowed:
            raise _refuse(f"a range of {' and '.join(sorted(allowed))}",
                          f"key '{sorted(set(raw) - allowed)[0]}'")
        for end in ("low", "high"):
            if end not in raw:
                raise _refuse("a range { low = .., high = .. }", f"no '{end}'")
            if not ok(raw[end]) or (not integer and not math.isfinite(raw[end])):
                raise _refuse(f"{kind} as the range's {end}", _describe_found(raw[end]))
        if raw["low"] > raw["high"]:
            raise _refuse("low <= high", f"low = {raw['low']}, high = {raw['high']}")
        step = raw.get("step", 1)
        if integer and not (_is_int(step) and step >= 1):
            raise _refuse("a whole step of at least 1", _describe_found(step))
        if integer and (raw["high"] - raw["low"]) % step:
            raise _refuse("a step that divides high - low (else high is never drawn)",
                          f"step = {step} from {raw['low']} to {raw['high']}")
        if not integer and not isinstance(raw.get("log", False), bool):
            raise _refuse("true or false for log", _describe_found(raw["log"]))
        if raw.get("log") and raw["low"] <= 0:
            raise _refuse("low > 0 for a log range", f"low = {raw['low']}")
        return [(raw["low"], "low = {}"), (raw["high"], "high = {}")]
    raise _refuse(f"{kind}, a range {{ low = .., high = .. }} or {{ choices = [..] }}",
                  _describe_found(raw))


def _ints(what: str, low: int, high: int, odd: bool = False) -> BeforeValidator:
    """An integer search parameter whose every value lies in [low, high]: what the builders take."""
    def check(raw: Any) -> Any:
        for value, where in _param_values(raw, integer=True):
            if not low <= value <= high:
                raise _refuse(f"{what} from {low:,} to {high:,}", where.format(f"{value:,}"))
            if odd and value % 2 == 0:
                raise _refuse(f"odd {what} ('same' padding of an even kernel shifts the map)",
                              where.format(value))
        ends = raw.model_dump() if isinstance(raw, IntRange) else raw
        if odd and isinstance(ends, dict) and "low" in ends and ends["low"] < ends["high"] and (
                ends.get("step", 1) % 2):
            raise _refuse(f"odd {what}: a range needs an even step", f"step = {ends.get('step', 1)}")
        return raw
    return BeforeValidator(check)


def _floats(expected: str, fits: Callable[[float], bool]) -> BeforeValidator:
    """A float search parameter whose every value `fits`, `expected` saying how."""
    def check(raw: Any) -> Any:
        for value, where in _param_values(raw, integer=False):
            if not fits(value):
                raise _refuse(expected, where.format(value))
        return raw
    return BeforeValidator(check)


def _strs(what: str, allowed: tuple[str, ...]) -> BeforeValidator:
    """A string search parameter: one of `allowed`, or `{ choices = [..] }` of them."""
    expected = f"{what}: one of {', '.join(map(repr, allowed))}"

    def check(raw: Any) -> Any:
        if isinstance(raw, BaseModel):
            raw = raw.model_dump()
        if isinstance(raw, str):
            if raw not in allowed:
                raise _refuse(expected, repr(raw))
            return raw
        if isinstance(raw, dict) and "choices" in raw:
            if set(raw) != {"choices"}:
                raise _refuse("only 'choices' in { choices = [..] }",
                              f"key '{sorted(set(raw) - {'choices'})[0]}'")
            choices = raw["choices"]
            if not isinstance(choices, list) or not choices:
                raise _refuse("a non-empty list of choices", _describe_found(choices))
            for c in choices:
                if c not in allowed or not isinstance(c, str):
                    raise _refuse(expected, f"{_describe_found(c)} among the choices")
            return raw
        raise _refuse(f"{expected}, or {{ choices = [..] }} of them", _describe_found(raw))
    return BeforeValidator(check)


def _float_values(param: FloatParam) -> list[float]:
    """The ends of a float parameter (every value for choices), in increasing order."""
    if isinstance(param, FloatRange):
        return [param.low, param.high]
    if isinstance(param, FloatChoices):
        return sorted(set(param.choices))
    return [float(param)]


def _str_values(param: StrParam) -> list[str]:
    return sorted(set(param.choices)) if isinstance(param, StrChoices) else [param]


def _values(param: IntParam) -> range | list[int]:
    """Every value an integer parameter can take, in increasing order."""
    if isinstance(param, IntRange):
        return range(param.low, param.high + 1, param.step)
    if isinstance(param, IntChoices):
        return sorted(set(param.choices))
    return [param]


def _high(param: IntParam) -> int:
    return _values(param)[-1]


Dropout = Annotated[FloatParam, _floats("a dropout in [0, 1)", lambda p: 0 <= p < 1)]
Temperature = Annotated[FloatParam, _floats("a temperature > 0", lambda t: t > 0)]
Alpha = Annotated[FloatParam, _floats("an alpha in [0, 1] (the soft targets' weight)",
                                      lambda a: 0 <= a <= 1)]


# --- the study file's tables ------------------------------------------------------------------


class SyntheticSpec(_Frozen):
    """An in-memory data set of noisy class templates: learnable, tiny, needs no files."""

    n_train: int = Field(default=1200, ge=20)
    n_test: int = Field(default=300, ge=10)
    channels: int = Field(default=1, ge=1, le=4)
    height: int = Field(default=8, ge=4, le=64)
    width: int = Field(default=8, ge=4, le=64)
    num_classes: int = Field(default=4, ge=2, le=100)
    noise: float = Field(default=0.8, ge=0.0)  # std of the noise, in units of the template std

    @model_validator(mode="after")
    def _fits_in_memory(self) -> SyntheticSpec:
        pixels = (self.n_train + self.n_test) * self.channels * self.height * self.width
        if pixels > MAX_PIXELS:
            raise _refuse(f"at most {MAX_PIXELS:,} pixel values, (n_train + n_test) x channels x "
                          f"height x width", f"{pixels:,}", "n_train")
        return self


class DataSpec(_Frozen):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder"]
    val_size: int = Field(default=5000, ge=1)  # images carved from the training set, fixed seed
    split_seed: int = 0
    train_limit: int | None = Field(default=None, ge=1)  # use only this many training images
    # imagefolder only: a folder with train/ and test/ class folders. May be left out and given
    # as --data-dir instead, which the file cannot know: load_data refuses when neither is.
    path: str | None = None
    synthetic: SyntheticSpec = SyntheticSpec()


class TrainRecipe(_Frozen):
    """How a network is trained; for students it is the per-trial budget."""

    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=128, ge=1, le=65_536)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(default=0.0, ge=0)
    # constant; cosine to 0; onecycle: up to lr over the warm-up, then linearly down to 0
    lr_schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    jitter: int = Field(default=0, ge=0, le=8)  # random shift of up to this many pixels
    hflip: bool = False  # random horizontal flips (not for digits); with views, flipped views
    # Consistent teaching (Beyer et al. 2022): K fixed, seeded views of every training image
    # (view 0 the image itself), the teacher's logits cached once per view; each epoch shows
    # every image in one of its views with the logits of exactly that view. 0: no fixed views.
    views: int = Field(default=0, ge=0, le=64)
    translate: int = Field(default=0, ge=0, le=8)  # pixels: the views' shift (else like jitter)
    max_norm: float | None = Field(default=None, gt=0)  # Hinton-style cap on incoming weight norm
    # Recipes for short budgets (issue 11). Each default is what kdsearch did before.
    nesterov: bool = True  # sgd only: Nesterov momentum (sgd has always used it)
    # epochs of linear warm-up from 0 to lr (fractions allowed); unset: 0, or for onecycle 30% of
    # the epochs, as torch's OneCycleLR
    warmup_epochs: float | None = Field(default=None, ge=0)
    # softens the hard-label cross-entropy only (the KD term's targets are already soft);
    # see distill.py for how the two combine
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # false: weight decay on conv and linear weights only, not on biases and batch-norm scales
    # (decaying those only shrinks what batch norm re-normalises)
    decay_norms_and_biases: bool = True

    @model_validator(mode="after")
    def _warmup_within_budget(self) -> TrainRecipe:
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            raise _refuse(f"fewer warm-up epochs than epochs ({self.epochs})",
                          f"{self.warmup_epochs:g}", "warmup_epochs")
        return self

    @model_validator(mode="after")
    def _one_shift(self) -> TrainRecipe:
        if self.jitter and self.translate:
            raise _refuse("jitter or translate, not both (both shift the images)",
                          f"jitter = {self.jitter}, translate = {self.translate}", "translate")
        if self.views and self.jitter:
            raise _refuse("jitter = 0 with views: a random shift would show pixels the cached "
                          "logits were not computed on (translate sets the views' shift)",
                          f"jitter = {self.jitter}", "jitter")
        if self.views > 1 and not (self.hflip or self.translate):
            raise _refuse("hflip = true or translate > 0 with views > 1 (else every view is "
                          "the image itself)", f"views = {self.views}", "views")
        return self

    def augments(self) -> bool:
        """Whether images are changed at random in every epoch (no fixed views)."""
        return not self.views and bool(self.jitter or self.translate or self.hflip)

    def warmup(self) -> float:
        """Warm-up epochs: as written, else 30% of the budget for onecycle and none otherwise."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return 0.3 * self.epochs if self.lr_schedule == "onecycle" else 0.0

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: Callable[[Any], dict]) -> dict:
        # The teacher's cache key hashes its recipe's JSON: keys added after caches existed are
        # left out while they hold their defaults, so an existing study keeps its teacher.
        out = handler(self)
        for key, default in _ADDED_RECIPE_DEFAULTS.items():
            if key in out and out[key] == default:
                del out[key]
        return out


_ADDED_RECIPE_DEFAULTS = {"nesterov": True, "warmup_epochs": None, "label_smoothing": 0.0,
                          "decay_norms_and_biases": True, "views": 0, "translate": 0}


class StudentRecipe(TrainRecipe):
    """`[student.train]`: the per-trial budget, whose learning rate and batch size may be searched.

    `lr = { low = 0.01, high = 0.4, log = true }` or `batch_size = { choices = [64, 128] }` are
    suggested per trial (search/space.py `suggest_recipe`), and the trial trains with
    `for_trial(...)`, a plain `TrainRecipe` holding what it drew. Fixed values are not suggested,
    so a study that searches neither stores the same trial parameters as before.
    """

    lr: Annotated[FloatParam, _floats("a learning rate in (0, 10]",  # type: ignore[assignment]
                                      lambda v: 0 < v <= 10)] = 1e-3
    batch_size: Annotated[IntParam, _ints("batch sizes", 1, 65_536)] = 128  # type: ignore[assignment]

    def for_trial(self, lr: float | None = None, batch_size: int | None = None) -> TrainRecipe:
        """The recipe a trial trains with; `None` keeps the file's fixed value."""
        values = self.model_dump()
        values["lr"] = lr if lr is not None else values["lr"]
        values["batch_size"] = batch_size if batch_size is not None else values["batch_size"]
        if not (_is_number(values["lr"]) and _is_int(values["batch_size"])):
            raise ValueError("a searched lr or batch_size needs the trial's value")
        return TrainRecipe.model_validate(values)


class MLPSpace(_Frozen):
    family: Literal["mlp"]
    depth: Annotated[IntParam, _ints("hidden layers", 1, MAX_MLP_DEPTH)] = IntRange(low=1, high=3)
    width: Annotated[IntParam, _ints("units per layer", 1, MAX_WIDTH)] = IntChoices(
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
        raise _refuse(f"at most {MAX_CHANNELS:,} channels in the last {unit} ({keys[0]} x "
                      f"{keys[1]}^({keys[2]} - 1))",
                      f"{width} x {growth:g}^{layers - 1} = {channels:,}", keys[0])


class CNNSpace(_Frozen):
    family: Literal["cnn"]
    # conv blocks, each ending in a 2x2 max-pool
    depth: Annotated[IntParam, _ints("conv blocks", 1, MAX_CNN_DEPTH)] = IntRange(low=1, high=3)
    # the last of >=2 is 'valid', as in the seed
    convs_per_block: Annotated[IntParam, _ints("convs per block", 1, MAX_CONVS_PER_BLOCK)] = (
        IntRange(low=1, high=2))
    # channels of block 1
    width: Annotated[IntParam, _ints("channels", 1, MAX_CHANNELS)] = IntChoices(choices=[4, 8, 16, 32])
    channel_growth: int = Field(default=2, ge=1, le=4, strict=True)  # channels x this per block
    kernel: Annotated[IntParam, _ints("kernel sizes", 1, MAX_KERNEL, odd=True)] = IntChoices(
        choices=[3, 5])
    kernel_per_layer: bool = False  # sample each conv layer's kernel separately
    # hidden dense width, 0 = none
    dense: Annotated[IntParam, _ints("dense widths (0 = none)", 0, MAX_WIDTH)] = IntChoices(
        choices=[0, 32, 64, 128, 256])
    conv_dropout: Dropout = 0.0
    dropout: Dropout = 0.0
    temperature: Temperature = FloatRange(low=1.0, high=20.0, log=True)
    alpha: Alpha = FloatRange(low=0.0, high=1.0)

    @model_validator(mode="after")
    def _channels_fit(self) -> CNNSpace:
        _last_channels_fit(_high(self.width), self.channel_growth, _high(self.depth), "block",
                           ("width", "channel_growth", "depth"))
        return self


class TeacherInput(_Frozen):
    """`[teacher.input]`: what a teacher file expects, from uint8 pixels (teacher_file.TeacherFile)."""

    scale: float = Field(default=255.0, gt=0)  # pixels / scale: 255 gives [0, 1], 1 keeps 0..255
    mean: list[float] | None = Field(default=None, min_length=1)  # per channel, after scaling
    std: list[float] | None = Field(default=None, min_length=1)  # per channel, after scaling
    layout: Literal["NCHW", "NHWC"] = "NCHW"  # Keras exports are NHWC

    @field_validator("std")
    @classmethod
    def _positive(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and not all(s > 0 for s in std):
            raise _refuse("positive numbers", repr(std))
        return std


class TeacherFileSpec(_Frozen):
    """`[teacher] file = PATH` (TorchScript, torch.export .pt2, ONNX), or `torchvision = NAME`
    with `weights = PATH` (a state dict): a teacher the user already has, run as it is.

    Paths stay as written (relative to the study file): `StudySpec.teacher_path` resolves them,
    so a stored study file still names the same file.
    """

    file: str | None = Field(default=None, min_length=1)
    format: Literal["torchscript", "export", "onnx"] | None = None  # None: told by the suffix
    torchvision: str | None = Field(default=None, min_length=1)  # a torchvision.models name
    weights: str | None = Field(default=None, min_length=1)  # torchvision only: a state dict
    input: TeacherInput = TeacherInput()

    @model_validator(mode="after")
    def _one_source(self) -> TeacherFileSpec:
        if self.file is not None and self.torchvision is not None:
            raise _refuse("file or torchvision, not both", f"torchvision = {self.torchvision!r}",
                          "torchvision")
        if self.torchvision is not None and self.weights is None:
            raise _refuse("weights = PATH (a state dict) with torchvision", "nothing", "weights")
        if self.weights is not None and self.torchvision is None:
            raise _refuse("weights only with torchvision = NAME (a model file goes in file)",
                          repr(self.weights), "weights")
        if self.format is not None and self.torchvision is not None:
            raise _refuse("no format with torchvision (its weights are a state dict)",
                          repr(self.format), "format")
        return self

    def describe(self) -> str:
        """'onnx teacher.onnx', 'torchvision resnet18 w.pt': how reports name the teacher."""
        if self.torchvision is not None:
            return f"torchvision {self.torchvision} {Path(str(self.weights)).name}"
        path = Path(str(self.file))
        kind = self.format or {".onnx": "onnx", ".pt2": "export"}.get(path.suffix.lower(), "file")
        return f"{kind} {path.name}"


class _StagedShape(_Frozen):
    """What resnet and mobilenet students share: stages of equally many blocks, the first at the
    input's resolution, each later one halving the map and widening by `width_growth`."""

    stages: Annotated[IntParam, _ints("stages", 1, MAX_STAGES)] = IntRange(low=3, high=4)
    # blocks in every stage (ResNet-8: 1, ResNet-20: 3)
    blocks: Annotated[IntParam, _ints("blocks per stage", 1, MAX_STAGE_BLOCKS)] = IntRange(
        low=1, high=3)
    # channels of the stem and of stage 1
    base_width: Annotated[IntParam, _ints("channels", 1, MAX_BASE_WIDTH)] = IntChoices(
        choices=[6, 8, 12, 16, 24])
    width_growth: Annotated[FloatParam, _floats("a width growth from 1 to 4",
                                                lambda g: 1 <= g <= 4)] = FloatChoices(
        choices=[1.5, 2.0])
    kernel: Annotated[IntParam, _ints("kernel sizes", 1, MAX_STAGED_KERNEL, odd=True)] = (
        IntChoices(choices=[3, 5]))

    @model_validator(mode="after")
    def _channels_fit(self) -> _StagedShape:
        _last_channels_fit(_high(self.base_width), _float_values(self.width_growth)[-1],
                           _high(self.stages), "stage", ("base_width", "width_growth", "stages"))
        return self


class ResNetShape(_StagedShape):
    """He et al.'s basic blocks; `shortcut` "A" pads with zeros, "B" projects (1x1 conv)."""

    shortcut: Annotated[StrParam, _strs("shortcuts", ("A", "B"))] = "A"


class MobileNetShape(_StagedShape):
    """MobileNetV2's inverted residual blocks."""

    expansion: Annotated[IntParam, _ints("expansion ratios", 1, MAX_EXPANSION)] = IntChoices(
        choices=[2, 4, 6])
    head: Annotated[IntParam, _ints("head channels (0 = none)", 0, MAX_CHANNELS)] = 0
    activation: Literal["relu6", "relu"] = "relu6"


class ResNetSpace(ResNetShape):
    family: Literal["resnet"]
    temperature: Temperature = FloatRange(low=1.0, high=20.0, log=True)
    alpha: Alpha = FloatRange(low=0.0, high=1.0)


class MobileNetSpace(MobileNetShape):
    family: Literal["mobilenet"]
    temperature: Temperature = FloatRange(low=1.0, high=20.0, log=True)
    alpha: Alpha = FloatRange(low=0.0, high=1.0)


class FamilyChoices(_Frozen):
    choices: list[Literal["resnet", "mobilenet"]] = Field(min_length=1)


class FamilyChoiceSpace(_Frozen):
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
                raise _refuse(f"a [student.{family}] table, since family '{family}' is among "
                              "the choices", "none", family)
            if not chosen and getattr(self, family) is not None:
                raise _refuse(f"no [student.{family}] table, since family '{family}' is not "
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


class StudentSpec(_Frozen):
    space: StudentSpace
    train: StudentRecipe = StudentRecipe()
    # refuse larger students before training
    max_params: int | None = Field(default=None, ge=1, le=MAX_PARAMS, strict=True)
    # refuse costlier students before training (MACs are counted, latency measured untrained)
    max_macs: int | None = Field(default=None, ge=1, strict=True)
    max_latency_ms: float | None = Field(default=None, gt=0)


class EarlyStoppingSpec(_Frozen):
    """`[search.early_stopping]`: stop a trial dominated at a rung (see early_stopping.py)."""

    enabled: bool = True
    rungs: list[int] = Field(default_factory=lambda: [1, 3, 9])  # epochs after which to judge
    min_trials: int = Field(default=6, ge=1)  # peers at the rung before anything stops there
    quantile: float = Field(default=0.0, ge=0.0, le=1.0)  # share of no-larger peers that must win
    min_dominators: int = Field(default=1, ge=1)  # and at least this many of them
    # and the trials ahead of it in the rung's non-dominated order (front by front) fill at
    # least this share of the rung: the first fronts always go on, as MOASHA keeps the best
    # 1/eta. 0: only the front goes on, which stops ever more trials as a study grows.
    keep: float = Field(default=1 / 3, ge=0.0, lt=1.0)
    # "rung": compare accuracies at the rung; "reachable": compare the accuracy a trial could
    # still reach by the last epoch (its curve extended at its steepest recent slope) with
    # what its no-larger peers already reached (early_stopping.py). Prototype, issue 13.
    judge: Literal["rung", "reachable"] = "rung"
    # true: skip rungs at or before the end of the learning-rate warm-up (`warmup_epochs`, or 30%
    # of a onecycle budget), where students are ranked by how fast they warm up. Off by
    # default: at a reduced CIFAR-10 budget it cost hypervolume (fewer, dearer stops;
    # docs/PERFORMANCE.md section 2b).
    after_warmup: bool = False

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, rungs: list[int]) -> list[int]:
        if any(r < 1 for r in rungs):
            raise ValueError("epochs of at least 1")
        if any(b <= a for a, b in zip(rungs, rungs[1:], strict=False)):
            raise ValueError("strictly increasing epochs")
        return rungs


class Baseline(_Frozen):
    """`[[search.baselines]]`: a hand-picked student to run first, e.g. the one in production."""

    label: str = Field(min_length=1, max_length=80)
    # search-space values ("family" and "shortcut" are strings)
    params: dict[str, int | float | str] = Field(default_factory=dict)


Objective = Literal["params", "macs", "latency_ms"]  # objectives.COSTS


class SearchSpec(_Frozen):
    n_trials: int = Field(default=20, ge=1, le=1_000_000)  # a grid's default: the grid's size
    # the cost(s) minimized beside validation accuracy (see objectives.py); part of the study's
    # definition: its Optuna directions and metric names follow them
    objectives: list[Objective] = Field(default_factory=lambda: ["params"])
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    # TPE's random start-up: spread over the decades of cost and run cheapest first
    # (search/startup.py), or drawn as Optuna draws it
    startup: Literal["spread", "random"] = "spread"
    timeout: float | None = Field(default=None, gt=0)  # seconds per run-study invocation
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    repeats: int = Field(default=1, ge=1, le=100)  # grid only: each point with this many seeds
    baselines: list[Baseline] = Field(default_factory=list, max_length=100)

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, objectives: list[str]) -> list[str]:
        if not objectives:
            raise ValueError("one or more of 'params', 'macs', 'latency_ms'")
        if len(set(objectives)) != len(objectives):
            raise ValueError("each objective once")
        return objectives

    @model_validator(mode="after")
    def _repeats_need_grid(self) -> SearchSpec:
        if self.repeats > 1 and self.sampler != "grid":
            raise ValueError(f"repeats > 1 only with sampler = 'grid' (a sweep), not "
                             f"'{self.sampler}'")
        if "startup" in self.model_fields_set and self.sampler != "tpe":
            raise ValueError(f"startup is TPE's start-up: it needs sampler = 'tpe', not "
                             f"'{self.sampler}'")
        if self.baselines and self.sampler == "grid":
            raise ValueError("baselines are for searches: a grid sweep already runs every point")
        labels = [b.label for b in self.baselines]
        if len(set(labels)) != len(labels):
            raise ValueError("each baseline needs its own label")
        return self


class StudySpec(_Frozen):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    data: DataSpec
    # A network kdsearch trains, or (`teacher_file`) one the user brings: exactly one is set.
    teacher: Arch | None = None  # any family, discriminated by `family`
    teacher_file: TeacherFileSpec | None = None
    teacher_train: TrainRecipe = TrainRecipe()
    student: StudentSpec
    search: SearchSpec = SearchSpec()
    source: str = ""  # the study file's text, kept for the dashboard's note
    _path: str = PrivateAttr(default="")  # where it was read from, for messages; not its value

    @model_validator(mode="after")
    def _teacher(self) -> StudySpec:
        if (self.teacher is None) == (self.teacher_file is None):
            raise _refuse("a teacher: family = .. (trained here), file = PATH or torchvision = "
                          "NAME", "both" if self.teacher else "none", "teacher")
        if self.teacher_train.views:
            raise _refuse("views only for students (they need a teacher's logits)",
                          f"views = {self.teacher_train.views}", "teacher_train.views")
        if self.teacher_file is not None and self.student.train.augments():
            raise _refuse("views >= 1 to augment with a teacher from a file (it cannot run live "
                          "beside the student; its logits are cached once per fixed view)",
                          "random jitter, translate or hflip without views", "student.train.views")
        return self

    @property
    def path(self) -> str:
        """The file it was read from ('' when built in code), for messages."""
        return self._path

    def teacher_path(self, name: str) -> Path:
        """A teacher file named in the study file, absolute: relative to the study file."""
        path = Path(name).expanduser()
        if path.is_absolute():
            return path
        base = Path(self._path).parent if self._path else Path()
        return (base / path).resolve()

    def with_overrides(self, **changes: Any) -> StudySpec:
        return self.model_copy(update={k: v for k, v in changes.items() if v is not None})


# --- finding and loading study files ----------------------------------------------------------


def shipped_studies_dir() -> Path:
    """Studies shipped with kdsearch: `studies/` in a checkout, `kdsearch/studies` in a wheel."""
    packaged = Path(str(resources.files("kdsearch"))) / "studies"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "studies"


def list_studies() -> list[str]:
    return sorted(p.stem for p in shipped_studies_dir().glob("*.toml"))


def _is_file(path: Path) -> bool:
    """`path.is_file()`, false for names no file can have (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def find_study_file(study: str) -> Path:
    """A path to a .toml, a name in ./studies, or a name among the shipped studies."""
    path = Path(study)
    if study.endswith(".toml") or os.sep in study:
        if not _is_file(path):
            raise StudyFileError(f"{study}: no such study file")
        return path
    for folder in (Path("studies"), shipped_studies_dir()):
        candidate = folder / f"{study}.toml"
        if _is_file(candidate):
            return candidate
    known = ", ".join(list_studies()) or "none"
    raise StudyFileError(f"unknown study '{study}': not a .toml path, and no studies/{study}.toml "
                         f"(shipped studies: {known})")


def _describe_found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_PARAM_MEMBERS = {"int", "float", "str", "IntRange", "FloatRange", "IntChoices", "FloatChoices",
                  "StrChoices"}
_UNION_MEMBERS = _PARAM_MEMBERS | {"MLPArch", "CNNArch", "MLPSpace", "CNNSpace"}
# pydantic names the member of a family union by its tag, right after the union's own key
_FAMILY_TAGS = {"mlp", "cnn", "resnet", "mobilenet", "choice"}
_FAMILY_UNIONS = {"teacher", "space"}
_FAMILIES = "'mlp', 'cnn', 'resnet', 'mobilenet'"
_TYPE_ERRORS = {"int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
                "model_type", "model_attributes_type", "dict_type", "bool_type", "bool_parsing",
                "string_type", "list_type"}


def _one_line(path: Path, err: ValidationError) -> str:
    """The most telling of pydantic's errors, as 'file: key 'a.b': expected X, found Y'."""
    errors = err.errors()
    specific = [e for e in errors if e["type"] not in _TYPE_ERRORS]
    first = specific[0] if specific else errors[0]
    raw_loc = [str(p) for p in first["loc"]]
    in_union = any(p in _PARAM_MEMBERS for p in raw_loc)
    # pydantic names union members by type ("int", "IntRange") or tag; the user wrote none of them.
    loc = [p for i, p in enumerate(raw_loc)
           if p not in _UNION_MEMBERS and not p.startswith("function-")
           and not (p in _FAMILY_TAGS and i > 0 and raw_loc[i - 1] in _FAMILY_UNIONS)]
    key = ".".join(loc).replace("teacher_train", "teacher.train").replace("student.space", "student")
    key = key.replace("teacher_file", "teacher")
    key = key or "(top level)"
    found = _describe_found(first.get("input"))
    kind = first["type"]
    if kind == "kdsearch":
        ctx = first["ctx"]
        key = f"{key}.{ctx['key']}" if ctx["key"] else key
        key = key.replace("(top level).", "").replace("teacher_train", "teacher.train")
        return f"{path}: key '{key}': expected {ctx['expected']}, found {ctx['found']}"
    if kind == "missing":
        return f"{path}: key '{key}': expected a value, found nothing (the key is required)"
    if kind == "extra_forbidden":
        return f"{path}: key '{key}': expected no such key, found {found}"
    if kind == "union_tag_invalid":
        ctx = first.get("ctx", {})
        expected = _FAMILIES + (" or { choices = [..] } of 'resnet' and 'mobilenet'"
                                if key == "student" else "")
        return f"{path}: key '{key}.family': expected one of {expected}, found {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        other = " (or file = PATH for a teacher you have)" if key == "teacher" else ""
        return f"{path}: key '{key}.family': expected one of {_FAMILIES}{other}, found nothing"
    if not specific and in_union:
        return (f"{path}: key '{key}': expected a number, a range {{ low = .., high = .. }} "
                f"or {{ choices = [..] }}, found {found}")
    msg = first["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    msg = msg.removeprefix("input should be ")
    return f"{path}: key '{key}': expected {msg[0].lower() + msg[1:]}, found {found}"


def parse_study(text: str, path: Path) -> StudySpec:
    """Validate a study file's text; raises `StudyFileError` with one line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StudyFileError(one_line(f"{path}: not valid TOML: {e}")) from None
    raw = dict(raw)
    raw.setdefault("name", path.stem)
    teacher = raw.get("teacher")
    if isinstance(teacher, dict) and "train" in teacher:
        teacher = dict(teacher)
        raw["teacher_train"] = teacher.pop("train")
        raw["teacher"] = teacher
    if isinstance(teacher, dict) and ("file" in teacher or "torchvision" in teacher):
        if "teacher_train" in raw:
            raise StudyFileError(f"{path}: key 'teacher.train': expected no training recipe for "
                                 "a teacher from a file (kdsearch runs it as it is), found one")
        raw["teacher_file"] = raw.pop("teacher")
    student = raw.get("student")
    if isinstance(student, dict):
        student = dict(student)
        nested = {k: student.pop(k) for k in ("train", "max_params", "max_macs", "max_latency_ms")
                  if k in student}
        raw["student"] = {"space": student, **nested}
    if "source" in raw:
        raise StudyFileError(f"{path}: key 'source': expected no such key, found {raw['source']!r}")
    raw["source"] = text
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as e:
        raise StudyFileError(one_line(_one_line(path, e))) from None
    spec._path = str(path)
    if spec.data.dataset in NAMED_INPUTS:
        check_input(spec, *NAMED_INPUTS[spec.data.dataset])
    elif spec.data.dataset == "synthetic":
        s = spec.data.synthetic
        if spec.data.val_size >= s.n_train:  # else refused only once the data is drawn
            raise _refusal(spec, "data.val_size", f"fewer validation images than "
                           f"synthetic.n_train ({s.n_train:,})", f"{spec.data.val_size:,}")
        check_input(spec, (s.channels, s.height, s.width), s.num_classes)
    return spec


# --- the networks a study asks for, against its input ----------------------------------------


def check_input(spec: StudySpec, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Refuse a study whose teacher or students cannot be built for its input, in one line.

    `parse_study` calls it when the input is known from the file; for an ImageFolder the
    runner calls it once the images are read, still before the teacher.
    """
    problem = _input_problem(spec, input_shape, num_classes)
    if problem is not None:
        raise _refusal(spec, *problem)


def _refusal(spec: StudySpec, key: str, expected: str, found: str) -> StudyFileError:
    path = spec._path or f"{spec.name}.toml"
    return StudyFileError(one_line(f"{path}: key '{key}': expected {expected}, found {found}"))


def _input_problem(spec: StudySpec, input_shape: tuple[int, int, int],
                   num_classes: int) -> tuple[str, str, str] | None:
    """(key, expected, found) of the first thing that does not fit, or None."""
    from kdsearch.training.models import ArchitectureError, arch_params  # torch: only once needed

    shape = f"{input_shape[1]}x{input_shape[2]}"
    if spec.teacher is not None:
        try:
            teacher = arch_params(spec.teacher, input_shape, num_classes)
        except ArchitectureError as e:
            return "teacher.convs", f"conv layers that fit a {shape} input", str(e)  # only CNNs collapse
        if teacher > MAX_PARAMS:
            return "teacher", f"at most {MAX_PARAMS:,} params", f"{teacher:,}"
    if spec.teacher_file is not None:  # whether the file loads is checked once the data is in
        channels = input_shape[0]
        for name in ("mean", "std"):
            values = getattr(spec.teacher_file.input, name)
            if values is not None and len(values) not in (1, channels):
                wanted = "1 value" if channels == 1 else f"1 or {channels} values (one per channel)"
                return f"teacher.input.{name}", wanted, f"{len(values)}"

    space, max_params = spec.student.space, spec.student.max_params
    if isinstance(space, CNNSpace) and _high(space.kernel) > min(input_shape[1:]):
        return ("student.kernel", f"kernels no larger than the {shape} input",
                str(_high(space.kernel)))
    sizes = [arch_params(a, input_shape, num_classes) for a in _extreme_students(space, input_shape)]
    if not sizes:
        return None  # too many kernel sequences to size here: each trial checks its own
    smallest, largest = min(sizes), max(sizes)
    if max_params is not None and smallest > max_params:
        return ("student.max_params", f"at least {smallest:,}, the smallest student of this "
                f"space on {shape} inputs of {num_classes} classes", f"{max_params:,}")
    if max_params is None and largest > MAX_PARAMS:
        return ("student.max_params", f"a cap: this space reaches {largest:,} params, past the "
                f"{MAX_PARAMS:,} a network may have", "none")
    return None


_MAX_SIZED = 20_000  # students worth sizing one by one at load (about a second)


def _extreme_students(space: MLPSpace | CNNSpace | StagedSpace,
                      input_shape: tuple[int, int, int]) -> list[Arch]:
    """Students among which lie the space's smallest and its largest.

    Parameters grow with every width and with the kernels of 'same' convs, so their ends
    suffice. Depth, convs per block and the kernel of a block's last ('valid') conv also shrink
    the map the head sees, so all of their values are tried; a dense width of 0 swaps a layer
    for none, so the dense widths tried are none, the narrowest and the widest. Empty when
    per-layer kernels make that too many to list. The residual families keep the map's size
    with every kernel (padding k // 2) and end in global pooling, so their parameters grow with
    every knob (a stage, a block, a width, a kernel, shortcut B over A, an expansion, a head):
    each family's lowest and highest corner are its smallest and largest student.
    """
    if isinstance(space, FamilyChoiceSpace):
        return [a for shape in space.shapes().values() for a in _staged_ends(shape)]
    if isinstance(space, ResNetShape | MobileNetShape):
        return _staged_ends(space)
    if isinstance(space, MLPSpace):
        depths, widths = _values(space.depth), _values(space.width)
        return [MLPArch(hidden=[widths[0]] * depths[0]), MLPArch(hidden=[widths[-1]] * depths[-1])]
    widths, kernels, dense = _values(space.width), _values(space.kernel), _values(space.dense)
    denses = sorted({dense[0], dense[-1], next((d for d in dense if d > 0), dense[-1])})
    shapes = list(product(_values(space.depth), _values(space.convs_per_block)))

    def sequences(depth: int, per_block: int) -> list[list[int]]:
        if not space.kernel_per_layer:
            return [[k] * depth * per_block for k in kernels]
        if per_block == 1:  # all 'same': the smallest and the largest kernel everywhere
            return [[kernels[0]] * depth, [kernels[-1]] * depth]
        return [sum(([k] * (per_block - 1) + [last] for last in lasts), [])
                for lasts in product(kernels, repeat=depth) for k in (kernels[0], kernels[-1])]

    def count(depth: int, per_block: int) -> int:
        if space.kernel_per_layer and per_block > 1:
            return 2 * len(kernels) ** depth
        return len(kernels) if not space.kernel_per_layer else 2

    if sum(count(*s) for s in shapes) * 2 * len(denses) > _MAX_SIZED:
        return []
    side = min(input_shape[1:])
    return [cnn_arch(depth, per_block, width, space.channel_growth, seq, d, side)
            for depth, per_block in shapes
            for seq in sequences(depth, per_block)
            for width in (widths[0], widths[-1])
            for d in denses]


def staged_arch(shape: ResNetShape | MobileNetShape, stages: int, blocks: int, base_width: int,
                width_growth: float, kernel: int, shortcut: str = "A", expansion: int = 6,
                head: int = 0) -> ResNetArch | MobileNetArch:
    """The student of a resnet or mobilenet space at these values (the search suggests them)."""
    common = dict(blocks=[blocks] * stages, base_width=base_width, width_growth=width_growth,
                  kernel=kernel)
    if isinstance(shape, ResNetShape):
        return ResNetArch(**common, shortcut=shortcut)
    return MobileNetArch(**common, expansion=expansion, head=head, activation=shape.activation)


def _staged_ends(shape: ResNetShape | MobileNetShape) -> list[ResNetArch | MobileNetArch]:
    """The lowest and the highest corner of a residual space: its smallest and largest student."""
    ends = []
    for end in (0, -1):
        extra = ({"shortcut": _str_values(shape.shortcut)[end]} if isinstance(shape, ResNetShape)
                 else {"expansion": _values(shape.expansion)[end], "head": _values(shape.head)[end]})
        ends.append(staged_arch(shape, _values(shape.stages)[end], _values(shape.blocks)[end],
                                _values(shape.base_width)[end],
                                _float_values(shape.width_growth)[end],
                                _values(shape.kernel)[end], **extra))
    return ends


def load_study(study: str) -> StudySpec:
    path = find_study_file(study)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StudyFileError(f"{path}: cannot read: {e}") from None
    return parse_study(text, path)
