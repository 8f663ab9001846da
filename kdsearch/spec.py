"""The study file, typed: `load_study("cifar_compress")` -> a frozen `StudySpec`.

A study file is checked once, here, so that nothing downstream meets a bad value halfway
through a run. Every failure becomes one line naming the file, the key, what was expected
and what was found.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kdsearch.architecture import CNNArch, MLPArch
from kdsearch.errors import StudyFileError, one_line

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


IntParam = int | IntRange | IntChoices
FloatParam = float | FloatRange | FloatChoices


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
    lr_schedule: Literal["constant", "cosine"] = "constant"
    jitter: int = Field(default=0, ge=0, le=8)  # random shift of up to this many pixels
    hflip: bool = False  # random horizontal flips (not for digits)
    max_norm: float | None = Field(default=None, gt=0)  # Hinton-style cap on incoming weight norm


class MLPSpace(_Frozen):
    family: Literal["mlp"]
    depth: IntParam = IntRange(low=1, high=3)  # hidden layers
    width: IntParam = IntChoices(choices=[16, 32, 64, 128, 256])  # units per hidden layer
    width_per_layer: bool = False  # sample each layer's width separately
    dropout: FloatParam = 0.0
    temperature: FloatParam = FloatRange(low=1.0, high=20.0, log=True)
    alpha: FloatParam = FloatRange(low=0.0, high=1.0)


class CNNSpace(_Frozen):
    family: Literal["cnn"]
    depth: IntParam = IntRange(low=1, high=3)  # conv blocks, each ending in a 2x2 max-pool
    convs_per_block: IntParam = IntRange(low=1, high=2)  # the last of >=2 is 'valid', as in the seed
    width: IntParam = IntChoices(choices=[4, 8, 16, 32])  # channels of block 1
    channel_growth: int = Field(default=2, ge=1, le=4)  # each block multiplies channels by this
    kernel: IntParam = IntChoices(choices=[3, 5])  # kernel size (odd)
    kernel_per_layer: bool = False  # sample each conv layer's kernel separately
    dense: IntParam = IntChoices(choices=[0, 32, 64, 128, 256])  # hidden dense width, 0 = none
    conv_dropout: FloatParam = 0.0
    dropout: FloatParam = 0.0
    temperature: FloatParam = FloatRange(low=1.0, high=20.0, log=True)
    alpha: FloatParam = FloatRange(low=0.0, high=1.0)


class StudentSpec(_Frozen):
    space: Annotated[MLPSpace | CNNSpace, Field(discriminator="family")]
    train: TrainRecipe = TrainRecipe()
    max_params: int | None = Field(default=None, ge=1)  # refuse larger students before training


class EarlyStoppingSpec(_Frozen):
    """`[search.early_stopping]`: stop a trial dominated at a rung (see early_stopping.py)."""

    enabled: bool = True
    rungs: list[int] = Field(default_factory=lambda: [1, 3, 9])  # epochs after which to judge
    min_trials: int = Field(default=6, ge=1)  # peers at the rung before anything stops there
    quantile: float = Field(default=0.0, ge=0.0, le=1.0)  # share of no-larger peers that must win
    min_dominators: int = Field(default=1, ge=1)  # and at least this many of them

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
    params: dict[str, int | float] = Field(default_factory=dict)  # search-space values


class SearchSpec(_Frozen):
    n_trials: int = Field(default=20, ge=1, le=1_000_000)  # a grid's default: the grid's size
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    timeout: float | None = Field(default=None, gt=0)  # seconds per run-study invocation
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    repeats: int = Field(default=1, ge=1, le=100)  # grid only: each point with this many seeds
    baselines: list[Baseline] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _repeats_need_grid(self) -> SearchSpec:
        if self.repeats > 1 and self.sampler != "grid":
            raise ValueError(f"repeats > 1 only with sampler = 'grid' (a sweep), not "
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
    teacher: Annotated[MLPArch | CNNArch, Field(discriminator="family")]
    teacher_train: TrainRecipe = TrainRecipe()
    student: StudentSpec
    search: SearchSpec = SearchSpec()
    source: str = ""  # the study file's text, kept for the dashboard's note

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


_UNION_MEMBERS = {"int", "float", "IntRange", "FloatRange", "IntChoices", "FloatChoices",
                  "MLPArch", "CNNArch", "MLPSpace", "CNNSpace", "mlp", "cnn"}
_TYPE_ERRORS = {"int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
                "model_type", "model_attributes_type", "dict_type", "bool_type", "bool_parsing",
                "string_type", "list_type"}


def _one_line(path: Path, err: ValidationError) -> str:
    """The most telling of pydantic's errors, as 'file: key 'a.b': expected X, found Y'."""
    errors = err.errors()
    specific = [e for e in errors if e["type"] not in _TYPE_ERRORS]
    first = specific[0] if specific else errors[0]
    raw_loc = [str(p) for p in first["loc"]]
    in_union = any(p in _UNION_MEMBERS for p in raw_loc)
    # pydantic names union members by type ("int", "IntRange"); the user wrote none of them.
    loc = [p for p in raw_loc if p not in _UNION_MEMBERS and not p.startswith("function-")]
    key = ".".join(loc).replace("teacher_train", "teacher.train").replace("student.space", "student")
    key = key or "(top level)"
    found = _describe_found(first.get("input"))
    kind = first["type"]
    if kind == "missing":
        return f"{path}: key '{key}': expected a value, found nothing (the key is required)"
    if kind == "extra_forbidden":
        return f"{path}: key '{key}': expected no such key, found {found}"
    if kind == "union_tag_invalid":
        ctx = first.get("ctx", {})
        return (f"{path}: key '{key}.family': expected one of {ctx.get('expected_tags')}, "
                f"found {ctx.get('tag')!r}")
    if kind == "union_tag_not_found":
        return f"{path}: key '{key}.family': expected 'mlp' or 'cnn', found nothing"
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
    student = raw.get("student")
    if isinstance(student, dict):
        student = dict(student)
        nested = {k: student.pop(k) for k in ("train", "max_params") if k in student}
        raw["student"] = {"space": student, **nested}
    if "source" in raw:
        raise StudyFileError(f"{path}: key 'source': expected no such key, found {raw['source']!r}")
    raw["source"] = text
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as e:
        raise StudyFileError(one_line(_one_line(path, e))) from None


def load_study(study: str) -> StudySpec:
    path = find_study_file(study)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StudyFileError(f"{path}: cannot read: {e}") from None
    return parse_study(text, path)
