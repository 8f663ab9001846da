"""A study's identity in storage: created once from a study file, joined only from the same one.

The study file is stored with the study when it is created; a later run (or another worker) is
compared with it before anything is written, so a changed file never mixes its trials with
the stored study's. The dashboard's note shows the teacher and the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

import optuna

from kdsearch import objectives, record
from kdsearch.errors import KdsearchError, StorageError, StudyFileError
from kdsearch.options import Options
from kdsearch.spec import StudySpec
from kdsearch.study import coordination
from kdsearch.study import sampler as samplers
from kdsearch.study.storage import redact
from kdsearch.training.teacher import Teacher

OBJECTIVES = ("val_accuracy", "params")  # a study file without `[search] objectives`
DIRECTIONS = ("maximize", "minimize")


def study_note(spec: StudySpec, teacher: Teacher | None) -> str:
    """The study's note in optuna-dashboard: the teacher's numbers and the study file."""
    if teacher is None:
        about = "**Teacher**: not trained yet.\n\n"
    else:
        m = teacher.record
        params = f"{m.params:,}" if m.params else "unknown"
        macs = f"{m.macs:,}" if m.macs else "unknown"
        about = (f"**Teacher** `{m.description}`: {params} params, {macs} MACs, "
                 f"val acc {m.val_accuracy:.4f}, test acc {m.test_accuracy:.4f} "
                 f"(cache key `{m.key}`).\n\n")
    file_seed = tomllib.loads(spec.source).get("seed", 0) if spec.source else spec.seed
    seed = f" (run with --seed {spec.seed})" if file_seed != spec.seed else ""
    return (
        f"# {spec.name}\n\n{spec.description}\n\n{about}"
        f"Objectives: **val_accuracy** (maximize) and "
        f"{' and '.join(f'**{c}**' for c in spec.search.objectives)} (minimize).\n\n"
        f"## Study file{seed}\n\n```toml\n{spec.source.strip()}\n```\n"
    )


def definition(spec: StudySpec) -> dict:
    """What a study is, as JSON: the parsed spec but its name, description and the run's
    target (n_trials, timeout), which a later run may change without changing the study."""
    out = spec.model_dump(mode="json", exclude={"source", "name", "description"})
    out["search"] = {k: v for k, v in out["search"].items() if k not in ("n_trials", "timeout")}
    return out


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def changed_keys(before: dict, after: dict) -> list[str]:
    """The dotted keys, as the study file names them, whose values differ."""
    a, b = _flat(before), _flat(after)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))
    return [k.replace("teacher_train", "teacher.train").replace("student.space", "student")
            for k in keys]


def spec_changes(study: optuna.Study, spec: StudySpec) -> list[str]:
    """The keys in which `spec` differs from the one the stored study was created with.

    The stored file is parsed again with this version of kdsearch, so a default added since
    is not a change, nor is an edit of comments or whitespace; a `--seed` other than the
    stored one is (it changes every result).
    """
    text = record.study_attr(study, record.STUDY_FILE)
    stored = record.study_attr(study, record.STUDY_DEFINITION) or {}
    if text == spec.source and stored.get("seed", spec.seed) == spec.seed:
        return []
    try:
        before = definition(record.stored_spec(study))
    except KdsearchError:  # the stored file no longer loads: compare what was stored
        before = {k: v for k, v in stored.items() if k not in ("name", "description")}
        before["search"] = {k: v for k, v in (before.get("search") or {}).items()
                            if k not in ("n_trials", "timeout")}
    return changed_keys(before, definition(spec))


def refuse_changed(spec: StudySpec, opts: Options, changes: list[str],
                   stored_seed: int | None) -> StudyFileError:
    shown = ", ".join(changes[:8]) + (f" and {len(changes) - 8} more" if len(changes) > 8 else "")
    file = spec.path or f"{spec.name}.toml"
    seed = f" with --seed {stored_seed}" if "seed" in changes and stored_seed is not None else ""
    return StudyFileError(
        f"{file}: study '{opts.study_name}' in {redact(opts.storage)} was created from a "
        f"different version of this study (differs in {shown}); to search the changed one, "
        f"give it a new --study-name NAME; to go on with the stored study, run the file it "
        f"was made from{seed} (its note in 'kdsearch dashboard' shows it)")


def check_stored(spec: StudySpec, opts: Options, storage) -> None:
    """Refuse, before anything is loaded or written, a study stored under this name that
    kdsearch did not make, or that was made from a different study file."""
    try:
        study = optuna.load_study(study_name=opts.study_name, storage=storage)
    except KeyError:
        return
    _check_joinable(study, spec, opts)


def _kdsearch_shaped(study: optuna.Study) -> bool:
    """Whether the study's objectives are kdsearch's: accuracy up, then one or more costs down
    (metric names, once set, naming them)."""
    dirs = list(study.directions)
    return (len(dirs) >= 2 and dirs[0] == optuna.study.StudyDirection.MAXIMIZE
            and all(d == optuna.study.StudyDirection.MINIMIZE for d in dirs[1:])
            and (not study.metric_names
                 or objectives.from_metric_names(study.metric_names, len(dirs)) is not None))


def _check_joinable(study: optuna.Study, spec: StudySpec, opts: Options) -> None:
    if not _kdsearch_shaped(study) or (
            not record.is_kdsearch_study(study) and study.get_trials(deepcopy=False)):
        raise StorageError(f"study '{opts.study_name}' in {redact(opts.storage)} was not made "
                           "by kdsearch (other objectives, or trials but no study file); "
                           "choose another --study-name")
    changes = spec_changes(study, spec) if record.is_kdsearch_study(study) else []
    if changes:  # `[search] objectives` is part of the definition: a changed list lands here
        stored_seed = (record.study_attr(study, record.STUDY_DEFINITION) or {}).get("seed")
        raise refuse_changed(spec, opts, changes, stored_seed)
    # A second guard: the stored objectives themselves (directions and metric names), for a
    # study whose stored definition does not say them (made empty elsewhere, or by hand).
    costs = spec.search.objectives
    names = objectives.metric_names(costs)
    if [d.name.lower() for d in study.directions] != objectives.directions(costs) or (
            study.metric_names and list(study.metric_names) != names):
        found = ", ".join(study.metric_names or [d.name.lower() for d in study.directions])
        raise StorageError(f"study '{opts.study_name}' in {redact(opts.storage)} has other "
                           f"objectives ({found}) than the study file's ({', '.join(names)}); "
                           "choose another --study-name")


def create_study(spec: StudySpec, opts: Options, storage,
                 planned: Sequence[dict] = ()) -> tuple[optuna.Study, int]:
    """Create the study, or join it if another worker (or an earlier run) created it.

    Under the study's claim lock: the study file is stored with the study when it is created,
    and compared with the stored one when it is joined (a changed file is refused, nothing
    written); and this process takes the next sampler stream from the study's counter.
    Returns the study, sampling from that stream, and the stream's number.
    """
    with coordination.claim_lock(storage, opts.storage, opts.study_name):
        costs = spec.search.objectives
        study = optuna.create_study(storage=storage, study_name=opts.study_name,
                                    directions=objectives.directions(costs),
                                    load_if_exists=True)
        _check_joinable(study, spec, opts)
        if not record.is_kdsearch_study(study):
            record.set_study_attr(study, record.STUDY_DEFINITION, definition_json(spec))
            record.set_study_attr(study, record.STUDY_FILE, spec.source)
            record.set_study_attr(study, record.STUDY_PATH,
                                  str(Path(spec.path).resolve()) if spec.path else "")
            study.set_metric_names(objectives.metric_names(costs))
            _save_note(study, study_note(spec, None))
        stream = record.study_attr(study, record.SAMPLER_STREAMS, 0)
        record.set_study_attr(study, record.SAMPLER_STREAMS, stream + 1)
    study = optuna.load_study(study_name=opts.study_name, storage=storage,
                              sampler=samplers.make_sampler(spec, stream, planned))
    return study, stream


def definition_json(spec: StudySpec) -> dict:
    """The parsed spec as stored with the study (the --seed it runs with included)."""
    return spec.model_dump(mode="json", exclude={"source"})


def _save_note(study: optuna.Study, note: str) -> None:
    try:
        from optuna_dashboard import save_note

        save_note(study, note)
    except Exception:  # the note is a nicety; never fail a run over it
        pass


def annotate_study(study: optuna.Study, spec: StudySpec, teacher: Teacher) -> None:
    """Store the study's teacher and show it in the dashboard's note (the study file was
    stored when the study was created)."""
    if record.study_attr(study, record.TEACHER) != teacher.record.summary():
        record.set_study_attr(study, record.TEACHER, teacher.record.summary())
        _save_note(study, study_note(spec, teacher))
