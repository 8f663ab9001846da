"""The study file's tables: data, teacher, student, search, each a frozen, strict model.

`StudySpec` holds them all; `loading.parse_study` builds it from a file's text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_serializer, model_validator

from kdsearch.architecture import Arch
from kdsearch.spec.limits import MAX_PARAMS, MAX_PIXELS
from kdsearch.spec.params import (
    FloatParam,
    Frozen,
    IntParam,
    floats,
    ints,
    is_int,
    is_number,
    refuse,
)
from kdsearch.spec.spaces import StudentSpace


class SyntheticSpec(Frozen):
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
            raise refuse(f"at most {MAX_PIXELS:,} pixel values, (n_train + n_test) x channels x "
                          f"height x width", f"{pixels:,}", "n_train")
        return self


class DataSpec(Frozen):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder"]
    val_size: int = Field(default=5000, ge=1)  # images carved from the training set, fixed seed
    split_seed: int = 0
    train_limit: int | None = Field(default=None, ge=1)  # use only this many training images
    # imagefolder only: a folder with train/ and test/ class folders. May be left out and given
    # as --data-dir instead, which the file cannot know: load_data refuses when neither is.
    path: str | None = None
    synthetic: SyntheticSpec = SyntheticSpec()


class TrainRecipe(Frozen):
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
    # A cheaper fidelity for early-stopping's first rungs (training/epoch_plan.py): the first
    # `early_epochs` epochs each train on a fresh, seeded random `early_fraction` of the
    # training images, the later ones on all; validation is unchanged. 1.0 and 0: off.
    early_fraction: float = Field(default=1.0, gt=0, le=1)
    early_epochs: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _early_epochs_within_budget(self) -> TrainRecipe:
        if self.early_fraction < 1 and not self.early_epochs:
            raise refuse("early_epochs >= 1 with early_fraction < 1 (else no epoch is short)",
                          "early_epochs = 0", "early_fraction")
        if self.early_epochs and self.early_epochs >= self.epochs:
            raise refuse(f"fewer early epochs than epochs ({self.epochs}), so the last ones "
                          "train on all the images", f"{self.early_epochs}", "early_epochs")
        return self

    @model_validator(mode="after")
    def _warmup_within_budget(self) -> TrainRecipe:
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            raise refuse(f"fewer warm-up epochs than epochs ({self.epochs})",
                          f"{self.warmup_epochs:g}", "warmup_epochs")
        return self

    @model_validator(mode="after")
    def _one_shift(self) -> TrainRecipe:
        if self.jitter and self.translate:
            raise refuse("jitter or translate, not both (both shift the images)",
                          f"jitter = {self.jitter}, translate = {self.translate}", "translate")
        if self.views and self.jitter:
            raise refuse("jitter = 0 with views: a random shift would show pixels the cached "
                          "logits were not computed on (translate sets the views' shift)",
                          f"jitter = {self.jitter}", "jitter")
        if self.views > 1 and not (self.hflip or self.translate):
            raise refuse("hflip = true or translate > 0 with views > 1 (else every view is "
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
                          "decay_norms_and_biases": True, "views": 0, "translate": 0,
                          "early_fraction": 1.0, "early_epochs": 0}


class StudentRecipe(TrainRecipe):
    """`[student.train]`: the per-trial budget, whose learning rate and batch size may be searched.

    `lr = { low = 0.01, high = 0.4, log = true }` or `batch_size = { choices = [64, 128] }` are
    suggested per trial (search/space.py `suggest_recipe`), and the trial trains with
    `for_trial(...)`, a plain `TrainRecipe` holding what it drew. Fixed values are not suggested,
    so a study that searches neither stores the same trial parameters as before.
    """

    lr: Annotated[FloatParam, floats("a learning rate in (0, 10]",  # type: ignore[assignment]
                                      lambda v: 0 < v <= 10)] = 1e-3
    batch_size: Annotated[IntParam, ints("batch sizes", 1, 65_536)] = 128  # type: ignore[assignment]

    def for_trial(self, lr: float | None = None, batch_size: int | None = None) -> TrainRecipe:
        """The recipe a trial trains with; `None` keeps the file's fixed value."""
        values = self.model_dump()
        values["lr"] = lr if lr is not None else values["lr"]
        values["batch_size"] = batch_size if batch_size is not None else values["batch_size"]
        if not (is_number(values["lr"]) and is_int(values["batch_size"])):
            raise ValueError("a searched lr or batch_size needs the trial's value")
        return TrainRecipe.model_validate(values)



class TeacherInput(Frozen):
    """`[teacher.input]`: what a teacher file expects, from uint8 pixels (teacher_file.TeacherFile)."""

    scale: float = Field(default=255.0, gt=0)  # pixels / scale: 255 gives [0, 1], 1 keeps 0..255
    mean: list[float] | None = Field(default=None, min_length=1)  # per channel, after scaling
    std: list[float] | None = Field(default=None, min_length=1)  # per channel, after scaling
    layout: Literal["NCHW", "NHWC"] = "NCHW"  # Keras exports are NHWC

    @field_validator("std")
    @classmethod
    def _positive(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and not all(s > 0 for s in std):
            raise refuse("positive numbers", repr(std))
        return std


class TeacherFileSpec(Frozen):
    """`[teacher] file = PATH` (TorchScript, torch.export .pt2, ONNX), or `torchvision = NAME`
    with `weights = PATH` (a state dict): a teacher the user already has, run as it is.

    Paths stay as written (relative to the study file): `StudySpec.teacher_path` resolves them,
    so a stored study file still names the same file.
    """

    file: str | None = Field(default=None, min_length=1)
    format: Literal["torchscript", "export", "onnx"] | None = None  # None: told by the suffix
    torchvision: str | None = Field(default=None, min_length=1)  # a torchvision.models name
    weights: str | None = Field(default=None, min_length=1)  # torchvision only: a state dict
    # Its output is the mean over each image and its left-right mirror: a two-view ensemble,
    # a stronger teacher at no training cost where a mirror keeps the label (not for digits).
    flip_average: bool = False
    input: TeacherInput = TeacherInput()

    @model_validator(mode="after")
    def _one_source(self) -> TeacherFileSpec:
        if self.file is not None and self.torchvision is not None:
            raise refuse("file or torchvision, not both", f"torchvision = {self.torchvision!r}",
                          "torchvision")
        if self.torchvision is not None and self.weights is None:
            raise refuse("weights = PATH (a state dict) with torchvision", "nothing", "weights")
        if self.weights is not None and self.torchvision is None:
            raise refuse("weights only with torchvision = NAME (a model file goes in file)",
                          repr(self.weights), "weights")
        if self.format is not None and self.torchvision is not None:
            raise refuse("no format with torchvision (its weights are a state dict)",
                          repr(self.format), "format")
        return self


class StudentSpec(Frozen):
    space: StudentSpace
    train: StudentRecipe = StudentRecipe()
    # refuse larger students before training
    max_params: int | None = Field(default=None, ge=1, le=MAX_PARAMS, strict=True)
    # refuse costlier students before training (MACs are counted, latency measured untrained)
    max_macs: int | None = Field(default=None, ge=1, strict=True)
    max_latency_ms: float | None = Field(default=None, gt=0)


class EarlyStoppingSpec(Frozen):
    """`[search.early_stopping]`: stop a trial dominated at a rung (see early_stopping.py)."""

    enabled: bool = True
    # epochs after which to judge; unset: `rungs_for`'s default for the recipe's schedule
    rungs: list[int] | None = None
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
    def _increasing(cls, rungs: list[int] | None) -> list[int] | None:
        if rungs is None:
            return None
        if any(r < 1 for r in rungs):
            raise ValueError("epochs of at least 1")
        if any(b <= a for a, b in zip(rungs, rungs[1:], strict=False)):
            raise ValueError("strictly increasing epochs")
        return rungs

    def rungs_for(self, epochs: int, schedule: str = "constant") -> list[int]:
        """The rungs as written; unset, epochs 1, 3 and 9 under a constant learning rate, and
        none under a one-cycle schedule.

        A one-cycle schedule anneals the rate to nothing by the last epoch, and students are
        ranked by where they end only once it has come down: on the tabulated cifar_resnet
        grid (8 epochs, 2 of warm-up; docs/PERFORMANCE.md section 5) judging after epoch 3, 4
        or 5 stopped the slow starters the front needed (a 30k-param mobilenet at 0.23 after
        epoch 3, 0.67 at the end, ahead of every smaller student). A rung late enough to rank
        fairly saves little: one after epoch 6 of 8 saves a quarter of each trial it stops,
        which has already paid three quarters and leaves no point on the front. On two
        replicates of the grid it stopped a third of the trials; against not stopping it lost
        on both hypervolumes and under 80k params where repeated points were trained, and
        tied where they were skipped (search/repeats.py): it bought nothing. A study that wants
        rungs under one-cycle (cifar_resnet's cheap early epochs) names them.
        """
        if self.rungs is not None:
            return list(self.rungs)
        if schedule == "onecycle":
            return []
        return [1, 3, 9]


class Baseline(Frozen):
    """`[[search.baselines]]`: a hand-picked student to run first, e.g. the one in production."""

    label: str = Field(min_length=1, max_length=80)
    # search-space values ("family" and "shortcut" are strings)
    params: dict[str, int | float | str] = Field(default_factory=dict)


Objective = Literal["params", "macs", "latency_ms"]  # objectives.COSTS


class SearchSpec(Frozen):
    n_trials: int = Field(default=20, ge=1, le=1_000_000)  # a grid's default: the grid's size
    # the cost(s) minimized beside validation accuracy (see objectives.py); part of the study's
    # definition: its Optuna directions and metric names follow them
    objectives: list[Objective] = Field(default_factory=lambda: ["params"])
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    # TPE's random start-up: spread over the decades of cost and run cheapest first
    # (search/startup.py), or drawn as Optuna draws it
    startup: Literal["spread", "random"] = "spread"
    # the spread start-up's distillation and training knobs (T, alpha, lr, batch size): set at
    # the centre of their ranges, so that a planned student's result reads as its shape's, or
    # drawn with each student (search/startup.py; the centre since 2026-12-06: measured ahead
    # on cifar_resnet, docs/RESULTS.md section 7 and docs/PERFORMANCE.md section 5)
    startup_recipe: Literal["drawn", "centre"] = "centre"
    timeout: float | None = Field(default=None, gt=0)  # seconds per run-study invocation
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    repeats: int = Field(default=1, ge=1, le=100)  # grid only: each point with this many seeds
    # a sampled point equal to a finished trial's ends at once as its repeat instead of training
    # again (search/repeats.py); false: train it, a second draw of its noise. Sweeps never skip.
    skip_repeats: bool = True
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
        for knob in ("startup", "startup_recipe"):
            if knob in self.model_fields_set and self.sampler != "tpe":
                raise ValueError(f"{knob} is TPE's start-up: it needs sampler = 'tpe', not "
                                 f"'{self.sampler}'")
        if ("startup_recipe" in self.model_fields_set and self.startup_recipe != "drawn"
                and self.startup != "spread"):
            raise ValueError("startup_recipe = 'centre' sets the planned start-up's knobs: it "
                             "needs startup = 'spread'")
        if self.baselines and self.sampler == "grid":
            raise ValueError("baselines are for searches: a grid sweep already runs every point")
        labels = [b.label for b in self.baselines]
        if len(set(labels)) != len(labels):
            raise ValueError("each baseline needs its own label")
        return self


class StudySpec(Frozen):
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
            raise refuse("a teacher: family = .. (trained here), file = PATH or torchvision = "
                          "NAME", "both" if self.teacher else "none", "teacher")
        if self.teacher_train.views:
            raise refuse("views only for students (they need a teacher's logits)",
                          f"views = {self.teacher_train.views}", "teacher_train.views")
        if self.teacher_file is not None and self.student.train.augments():
            raise refuse("views >= 1 to augment with a teacher from a file (it cannot run live "
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


