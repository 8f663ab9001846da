"""What a trial, a teacher and a study store: the one place that names the keys.

Reports read only from storage, so what a trial knows lives in its Optuna user attributes and
what the teacher knows lives in its cache folder's meta.json and in the study's attributes.
Every key is named once, here, as a field of a frozen record: writers go through `set_trial`
(an unknown key is a TypeError, not a silent new attribute) and readers through
`TrialRecord.of` / `TeacherRecord.from_json` (a typo is an AttributeError, not a None).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from kdsearch.errors import KdsearchError
from kdsearch.optuna_internals import set_study_system_attr, study_system_attrs
from kdsearch.spec import StudySpec, parse_study


@dataclass(frozen=True)
class TrialRecord:
    """A trial's own numbers, beside its Optuna params (the sampled knobs) and values."""

    architecture: dict | None = None  # the student's full JSON (architecture.Arch)
    arch_summary: str = ""  # its one-line description
    n_layers: int | None = None  # hidden layers (MLP) or conv layers (CNN)
    params: int | None = None  # parameter count: known before training
    macs: int | None = None  # multiply-accumulates per image
    # median ms per image at batch 1 on the worker's device (measured before training, only in
    # studies with a latency objective or limit), and how: device, threads, repeats, torch
    latency_ms: float | None = None
    latency_method: dict | None = None
    val_curve: tuple[float, ...] = ()  # validation accuracy after each epoch, as it grows
    val_accuracy: float | None = None  # the score the search selects on
    test_accuracy: float | None = None  # recorded for reports, never selected on
    train_seconds: float | None = None
    epochs: int | None = None  # epochs actually run (fewer when stopped early)
    stopped_reason: str = ""  # why a trial ended PRUNED or FAIL
    stopped_at_rung: int | None = None  # the early-stopping rung (epoch) that stopped it
    repeat_of: int | None = None  # the finished trial whose point it repeats (search/repeats.py)
    worker: str = ""  # host:pid of the worker that ran it
    baseline: str = ""  # the label of a hand-picked baseline student ([[search.baselines]])
    sampler_stream: int | None = None  # the sampler seed of the worker that drew it

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        a = trial.user_attrs
        values = {f.name: a[f.name] for f in dataclasses.fields(cls) if f.name in a}
        if "val_curve" in values:
            values["val_curve"] = tuple(values["val_curve"])
        return cls(**values)


@dataclass(frozen=True)
class KD:
    """How a student learns from its teacher (a trial's T and alpha), read by the engine, the
    trial lines and the reports through `KD.of`: the defaults, once, are a plain student."""

    temperature: float = 1.0  # T > 0; without a soft term (alpha 0) it changes nothing
    alpha: float = 0.0  # the soft term's weight in [0, 1]; 0 trains on the labels alone

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> KD:
        """A trial's T and alpha, from its sampled parameters (`temperature`, `alpha`); the
        defaults above for one that has none."""
        return cls(float(params.get("temperature", cls.temperature)),
                   float(params.get("alpha", cls.alpha)))


TRIAL_KEYS = frozenset(f.name for f in dataclasses.fields(TrialRecord))
KEEP_ON_RETRY = ("baseline",)  # a retried trial is still the same hand-picked student


def trial_attrs(**values: Any) -> dict[str, Any]:
    """User attributes for a trial created or enqueued whole (a baseline, a retry)."""
    unknown = set(values) - TRIAL_KEYS
    if unknown:
        raise TypeError(f"not fields of TrialRecord: {sorted(unknown)}")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def set_trial(trial: optuna.Trial, **values: Any) -> None:
    """Store fields of the trial's record in storage (where reports and workers read them)."""
    for key, value in trial_attrs(**values).items():
        trial.set_user_attr(key, value)


@dataclass(frozen=True)
class TeacherRecord:
    """What the cached teacher is and how good it is: meta.json, and the study's copy."""

    key: str  # the cache key: hash of everything that shaped the teacher
    arch: dict  # the teacher's architecture JSON
    description: str
    params: int
    macs: int
    val_accuracy: float
    test_accuracy: float
    train_seconds: float
    epochs: int
    dataset: str
    data_identity: str
    input_shape: tuple[int, ...]
    num_classes: int
    recipe: dict  # the training recipe JSON
    seed: int
    created: str  # UTC, ISO 8601
    curve: tuple[float, ...] = ()  # validation accuracy per epoch
    sha256: dict[str, str] = field(default_factory=dict)  # cache file -> checksum
    kind: str = "trained"  # "trained" by kdsearch, or "file": one the user brought
    file: dict = field(default_factory=dict)  # a file teacher: path, sha256, format, input settings
    note: str = ""  # what a number means when it is not what it seems (params of a file, MACs 0)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_shape"], out["curve"] = list(self.input_shape), list(self.curve)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TeacherRecord:
        """From meta.json or the study's attribute; a missing key raises KeyError."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in names}
        values["input_shape"] = tuple(values["input_shape"])
        values["curve"] = tuple(values.get("curve", ()))
        return cls(**values)

    def summary(self) -> dict[str, Any]:
        """The study's copy: everything but the per-epoch curve and the file checksums."""
        return {k: v for k, v in self.to_json().items() if k not in ("curve", "sha256")}


# The study's own attributes. They live in the study's *system* attributes, which neither
# `optuna studies` nor the dashboard's attribute table prints: the study file and its parsed
# spec alone are kilobytes, and made `optuna studies` print one row thousands of characters
# wide. Read and write them with `study_attr` / `set_study_attr`; studies made before the move
# keep them in their user attributes, under the same names, and still read back.
STUDY_FILE = "study_file"  # the study file's text, as it was when the study was created
STUDY_DEFINITION = "study_spec"  # the parsed spec as JSON, --seed override included
STUDY_PATH = "study_path"  # where the study file was: its relative teacher file paths start there
TEACHER = "teacher"  # TeacherRecord.summary() of the study's teacher
TEACHER_ARTIFACTS = "teacher_artifacts"  # teacher key -> artifact id in the shared store
TEACHER_TRAINED_BY = "teacher_trained_by"  # teacher key -> the worker that trained it
# {"latency_ms": .., "method": {..}}: the teacher timed as students are, in studies that
# measure latency; the reference point of their hypervolume and the star of their plots
TEACHER_LATENCY = "teacher_latency"
SAMPLER_STREAMS = "sampler_streams"  # sampler streams handed out so far (a counter)
STUDY_KEYS = frozenset({STUDY_FILE, STUDY_DEFINITION, STUDY_PATH, TEACHER, TEACHER_ARTIFACTS,
                        TEACHER_TRAINED_BY, TEACHER_LATENCY, SAMPLER_STREAMS})


def study_attr(study: optuna.Study, key: str, default: Any = None) -> Any:
    """One of the study's kdsearch attributes (STUDY_KEYS), read from storage now."""
    system = study_system_attrs(study)
    if key in system:
        return system[key]
    return study.user_attrs.get(key, default)  # a study made before the move


def set_study_attr(study: optuna.Study, key: str, value: Any) -> None:
    if key not in STUDY_KEYS:
        raise TypeError(f"not a kdsearch study attribute: {key!r}")
    set_study_system_attr(study, key, value)


def is_kdsearch_study(study: optuna.Study) -> bool:
    """Whether kdsearch made this study: `run-study` stores the study file when it creates
    one, and the teacher once trained (all that studies built by hand for reports carry)."""
    return bool(study_attr(study, STUDY_FILE) or study_attr(study, TEACHER))


def study_teacher(study: optuna.Study) -> TeacherRecord | None:
    """The study's teacher, or None for a study that kdsearch did not (yet) annotate."""
    raw = study_attr(study, TEACHER)
    if not raw:
        return None
    try:
        return TeacherRecord.from_json(raw)
    except (KeyError, TypeError):
        return None


def stored_spec(study: optuna.Study) -> StudySpec:
    """The spec a study was created with, parsed again from its stored study file (with the
    `--seed` it ran under): the one way to recover it."""
    text = study_attr(study, STUDY_FILE)
    if not text:
        raise KdsearchError(f"study '{study.study_name}' carries no study file (was it made by "
                            "'kdsearch run-study'?)")
    spec = parse_study(text, Path(study_attr(study, STUDY_PATH) or f"{study.study_name}.toml"))
    seed = (study_attr(study, STUDY_DEFINITION) or {}).get("seed")
    return spec.with_overrides(seed=seed) if isinstance(seed, int) else spec
