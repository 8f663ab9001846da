"""What a trial, a teacher and a study store: the one place that names the keys.

Reports read only from storage, so what a trial knows lives in its Optuna user attributes and
what the teacher knows lives in its cache folder's meta.json and in the study's attributes.
Every key is named once, here, as a field of a frozen record: writers go through `set_trial`
(an unknown key is a TypeError, not a silent new attribute) and readers through
`TrialRecord.of` / `TeacherRecord.from_json` (a typo is an AttributeError, not a None).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from kdsearch.errors import KdsearchError
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


TRIAL_KEYS = frozenset(f.name for f in dataclasses.fields(TrialRecord))
KEEP_ON_RETRY = ("baseline",)  # a retried trial is still the same hand-picked student


def set_trial(trial: optuna.Trial, **values: Any) -> None:
    """Store fields of the trial's record in storage (where reports and workers read them)."""
    unknown = set(values) - TRIAL_KEYS
    if unknown:
        raise TypeError(f"not fields of TrialRecord: {sorted(unknown)}")
    for key, value in values.items():
        trial.set_user_attr(key, list(value) if isinstance(value, tuple) else value)


def trial_attrs(**values: Any) -> dict[str, Any]:
    """User attributes for a trial created or enqueued whole (a baseline, a retry)."""
    unknown = set(values) - TRIAL_KEYS
    if unknown:
        raise TypeError(f"not fields of TrialRecord: {sorted(unknown)}")
    return dict(values)


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


# The study's own attributes (Study.user_attrs).
STUDY_FILE = "study_file"  # the study file's text, as it was when the study was created
STUDY_SPEC = "study_spec"  # the parsed spec as JSON, for reports that need no parsing
TEACHER = "teacher"  # TeacherRecord.summary() of the study's teacher
TEACHER_ARTIFACTS = "teacher_artifacts"  # teacher key -> artifact id in the shared store
TEACHER_TRAINED_BY = "teacher_trained_by"  # teacher key -> the worker that trained it
# {"latency_ms": .., "method": {..}}: the teacher timed as students are, in studies that
# measure latency; the reference point of their hypervolume and the star of their plots
TEACHER_LATENCY = "teacher_latency"


def study_teacher(study: optuna.Study) -> TeacherRecord | None:
    """The study's teacher, or None for a study that kdsearch did not (yet) annotate."""
    raw = study.user_attrs.get(TEACHER)
    if not raw:
        return None
    try:
        return TeacherRecord.from_json(raw)
    except (KeyError, TypeError):
        return None


def stored_spec(study: optuna.Study) -> StudySpec:
    """The study file a study was created from, parsed again: the one way to recover it."""
    text = study.user_attrs.get(STUDY_FILE)
    if not text:
        raise KdsearchError(f"study '{study.study_name}' carries no study file (was it made by "
                            "'kdsearch run-study'?)")
    return parse_study(text, Path(f"{study.study_name}.toml"))
