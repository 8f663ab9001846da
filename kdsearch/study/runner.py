"""`run-study`: study file -> data -> cached teacher -> Optuna trials in SQL storage.

`--n-trials` is the study's total target of finished (complete or pruned) trials, so
running the same command again resumes and adds only what is missing, and any number of
workers running it against one database stop together at exactly that many.
"""

from __future__ import annotations

import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdsearch import objectives, optuna_internals, record
from kdsearch.errors import KdsearchError, StorageError, StudyFileError
from kdsearch.objectives import COST
from kdsearch.options import Options
from kdsearch.record import TrialRecord
from kdsearch.search import baselines, startup
from kdsearch.search.early_stopping import judged_rungs, make_stopper
from kdsearch.search.objective import make_objective, measures_latency
from kdsearch.spec import StudySpec, check_input
from kdsearch.study import coordination
from kdsearch.study.resolve import load_file_teacher, teacher_plan
from kdsearch.study.shutdown import Shutdown, ShutdownRequested
from kdsearch.study.storage import open_storage, probe_storage, redact
from kdsearch.training.data import Dataset, load_data
from kdsearch.training.engine import resolve_device
from kdsearch.training.teacher import StopSignal, Teacher

OBJECTIVES = ("val_accuracy", "params")  # a study file without `[search] objectives`
DIRECTIONS = ("maximize", "minimize")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STREAM_STRIDE = 7919  # a prime: stream k seeds the sampler with seed + 7919 k


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """A GridSampler that does not call `study.stop()` when its grid is used up.

    Trials run through ask/tell here (to hold a study-wide target across workers), where
    Optuna forbids `stop()`; the target, which is capped at the grid size, ends a sweep instead.
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass


def sampler_seed(spec: StudySpec, stream: int) -> int:
    """The seed of one of the study's sampler streams (`make_sampler`)."""
    return (spec.seed + STREAM_STRIDE * stream) % 2**32


def make_sampler(spec: StudySpec, stream: int,
                 planned: Sequence[dict] = ()) -> optuna.samplers.BaseSampler:
    """The study file's sampler, seeded for one of the study's sampler streams; TPE's first
    trials take the `planned` start-up students (search/startup.py).

    Every process that joins a study draws the next stream number from a counter in the
    database (`create_study`), so workers started separately as identical commands (what
    `docker compose up --scale worker=4` does), never share a random stream and never draw the
    same students; a resumed run gets a new stream and does not repeat its start-up points.
    The trade-off: the study seed and the run's order fix each stream, so a lone worker's
    first run (stream 0, seeded with the study seed itself) and each later run are
    reproducible, but which worker of a concurrent start gets which stream is a race.
    """
    seed = sampler_seed(spec, stream)
    if spec.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=max(8, min(50, spec.search.n_trials // 4)))
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.search.sampler == "grid":
        from kdsearch.search.sweep import sweep_grid

        return _AskTellGridSampler(sweep_grid(spec), seed=seed)
    # Multi-objective TPE: better than NSGA-II at the tens of trials a CPU study affords;
    # constant_liar keeps parallel workers from all sampling the same point; group: a family's
    # knobs (`resnet.blocks`) are modelled jointly, not one by one. It ranks trials in decades
    # of cost and never sees stored curves (search/tpe.py).
    from kdsearch.search.tpe import KDSearchTPESampler

    return KDSearchTPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                              n_startup_trials=startup.startup_trials(spec), startup=planned)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


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
                              sampler=make_sampler(spec, stream, planned))
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


def time_teacher(study: optuna.Study, spec: StudySpec, teacher: Teacher, device) -> None:
    """Time the teacher as trials time students, once per study, where latency counts: the
    reference point of the hypervolume and the star of the Pareto plot. A teacher file is not
    timed (trials never run it); its latency stays unknown, and reports fall back as for any
    unknown teacher cost."""
    import copy

    from kdsearch.training.latency import measure_latency

    if (not measures_latency(spec) or teacher.model is None
            or record.study_attr(study, record.TEACHER_LATENCY) is not None):
        return
    shape = tuple(teacher.record.input_shape)
    timed = measure_latency(copy.deepcopy(teacher.model), shape, device)
    record.set_study_attr(study, record.TEACHER_LATENCY, {"latency_ms": timed.median_ms,
                                                          "method": timed.method})


def trial_line(trial: FrozenTrial, costs: Sequence[str] = objectives.DEFAULT) -> str:
    """One finished trial in a line: a complete one with its scores and every cost it has; a
    stopped one with why and its value of each cost objective (`costs`)."""
    a = TrialRecord.of(trial)
    head = f"trial {trial.number:>3} {trial.state.name.lower():8}"
    arch = (a.arch_summary or "?") + (f" [{a.baseline}]" if a.baseline else "")
    p = trial.params
    knobs = f"T={p.get('temperature', 0):.2f} alpha={p.get('alpha', 0):.2f}"
    if trial.state == TrialState.COMPLETE:
        return (f"{head} val_acc {a.val_accuracy:.4f}  test_acc {a.test_accuracy:.4f}  "
                f"params {a.params:>9,}  macs {a.macs:>11,}  "
                + (f"latency {a.latency_ms:.4g} ms  " if a.latency_ms is not None else "")
                + f"{arch}  {knobs}  "
                f"{a.train_seconds:.1f}s")
    known = "  ".join(f"{c} {COST[c].format(getattr(a, c)).split(' ')[0]}" for c in costs
                      if getattr(a, c) is not None)
    return f"{head} {a.stopped_reason}  {known or 'params 0'}  {arch}  {knobs}"


def load_logged(spec: StudySpec, opts: Options, log: Callable[[str], None]) -> Dataset:
    data = load_data(spec.data, opts.data_dir, opts.cache_dir, data_home=opts.data_home,
                     offline=opts.offline, study_file=spec.path)
    check_input(spec, data.input_shape, data.num_classes)  # an ImageFolder's shape is news here
    log(f"data {data.name}: {len(data.train):,} train / {len(data.val):,} val / "
        f"{len(data.test):,} test images of shape {data.input_shape}, {data.num_classes} classes")
    return data


def prepare_teacher(spec: StudySpec, opts: Options, log: Callable[[str], None]) -> Teacher:
    """The study's teacher without a study (`kdsearch teacher`): cached, or trained now."""
    data = load_logged(spec, opts, log)
    return coordination.obtain_teacher(spec, data, opts, resolve_device(opts.device), log)


@dataclass(frozen=True)
class Prepared:
    """A study ready for trials: its data, storage, Optuna study, sampler stream and teacher."""

    data: Dataset
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    stream: int  # this process's sampler stream (`make_sampler`), recorded on its trials
    teacher: Teacher


def prepare(spec: StudySpec, opts: Options, log: Callable[[str], None],
            stop: StopSignal | None = None) -> Prepared:
    """The one route to a study's teacher: storage, data, study, then the teacher, trained by
    exactly one worker and shared with the rest (coordination.obtain_teacher).

    The storage is checked first, read-only: an unreachable database, a study that kdsearch
    did not make or a changed study file end the run before the data set is loaded, and
    nothing is written to the storage until the data has loaded.
    """
    device = resolve_device(opts.device)
    stored = probe_storage(opts.storage)  # reachable? the study joinable? nothing written
    if stored is not None:
        check_stored(spec, opts, stored)
    data = load_logged(spec, opts, log)
    baselines.resolve(spec, data.input_shape)  # a bad one fails before any training
    # A teacher file that does not fit the data: one line, no study. Loaded once per run.
    loaded = load_file_teacher(teacher_plan(spec), data, device)
    storage = open_storage(opts.storage, opts.heartbeats)
    planned = startup.plan(spec, data.input_shape, data.num_classes, sampler_seed(spec, 0))
    study, stream = create_study(spec, opts, storage, [params for _, params in planned])
    if planned and not startup.started(study):
        cost = COST[startup.planned_cost(spec)]
        log(f"TPE's first {len(planned)} students: from {cost.format(planned[0][0])} to "
            f"{cost.format(planned[-1][0])}, one per band of log10({cost.name}), smallest "
            "first (search/startup.py)")
    teacher = coordination.obtain_teacher(spec, data, opts, device, log, study=study,
                                          storage=storage, stop=stop, loaded=loaded)
    annotate_study(study, spec, teacher)
    time_teacher(study, spec, teacher, device)
    return Prepared(data, storage, study, stream, teacher)


def _stopping_line(spec: StudySpec) -> str:
    """Where trials are judged, and which rungs the warm-up or the budget leaves out."""
    rule, train = spec.search.early_stopping, spec.student.train
    if not rule.enabled:
        return "early stopping: off"
    judged = judged_rungs(rule, train.epochs, train.warmup())
    line = (f"early stopping: trials judged after epoch{'s' * (len(judged) > 1)} "
            f"{', '.join(map(str, judged))} of {train.epochs}" if judged
            else f"early stopping: no rung left to judge in {train.epochs} epochs")
    inside = [r for r in rule.rungs if r < train.epochs and r not in judged]
    if inside:
        line += (f" (not after {', '.join(map(str, inside))}: inside the {train.warmup():g}-epoch "
                 f"warm-up, as after_warmup = true asks)")
    return line


def run_study(spec: StudySpec, opts: Options, log: Callable[[str], None] = print,
              on_epoch: Callable | None = None,
              after_trial: Callable[[optuna.Study], None] | None = None) -> optuna.Study:
    """Join (or create) the study and run trials until it has `opts.n_trials` finished ones.

    `after_trial(study)` runs after each trial this worker ends (the CLI draws the learning
    curves into the dashboard there: the report side, which the runner does not import).

    SIGINT / SIGTERM stop at the next epoch boundary: the running trial is marked FAIL and
    queued for retry (a teacher in training keeps its checkpoint, which the same command
    resumes), and `ShutdownRequested` is raised (exit code 130 / 143).
    """
    shutdown = Shutdown()
    start = time.monotonic()
    with shutdown.installed():
        study = _run(spec, opts, log, on_epoch, shutdown, after_trial)
    for line in closing_summary(study, time.monotonic() - start):
        log(line)
    return study


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _value(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 10 else f"{v:.4f}"


def closing_summary(study: optuna.Study, seconds: float, front_lines: int = 5) -> list[str]:
    """What a run leaves behind, in a few lines: the study's trials by state, this run's wall
    time, and the head of the Pareto front (the counts say how much early stopping cut).
    """
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    lines = [f"run-study '{study.study_name}' done in {_duration(seconds)}: "
             f"{count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
             f"{count[TrialState.FAIL]} failed ({len(trials)} trials in the study)"]
    front = [t for t in study.best_trials if t.values is not None]
    if not front:
        return [*lines, "Pareto front: empty (no complete trial)"]
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    front.sort(key=lambda t: t.values[0], reverse=study.directions[0].name == "MAXIMIZE")
    # Names the study's objectives: accuracy and the chosen cost(s), read from storage.
    lines.append(f"Pareto front: {len(front)} trial{'s' * (len(front) > 1)} "
                 f"({names[0]} up; {', '.join(names[1:])} down), best {names[0]} first")
    for t in front[:front_lines]:
        values = "  ".join(f"{n} {_value(v)}" for n, v in zip(names, t.values, strict=False))
        lines.append(f"  trial {t.number:>3}  {values}  {TrialRecord.of(t).arch_summary}")
    if len(front) > front_lines:
        lines.append(f"  ... and {len(front) - front_lines} more ('kdsearch best' lists all)")
    return lines


def run_estimate(durations: dict[TrialState, list[float]], remaining: int,
                 running_fraction: float | None = None) -> float | None:
    """Seconds until `remaining` more trials finish (one of them running, `running_fraction`
    done), or None before any trial has completed.

    Complete and pruned trials are averaged apart and mixed in the proportion seen so far: a
    trial pruned before training takes 0.4 s against minutes for a complete one, so one mean
    rate (or tqdm's moving average) swings with every streak of pruned trials. The running
    trial is counted as a complete one: it may yet be pruned, so the estimate leans long.
    """
    complete, pruned = durations.get(TrialState.COMPLETE, []), durations.get(TrialState.PRUNED, [])
    if not complete or remaining <= 0:
        return None if not complete else 0.0
    mean_complete = sum(complete) / len(complete)
    mean_pruned = sum(pruned) / len(pruned) if pruned else 0.0
    share = len(pruned) / (len(pruned) + len(complete))
    per_trial = (1 - share) * mean_complete + share * mean_pruned
    if running_fraction is None:
        return remaining * per_trial
    return (remaining - 1) * per_trial + (1 - running_fraction) * mean_complete


def _durations(trials: list[FrozenTrial]) -> dict[TrialState, list[float]]:
    out: dict[TrialState, list[float]] = {state: [] for state in FINISHED}
    for t in trials:
        if t.state in out and t.datetime_start and t.datetime_complete:
            out[t.state].append((t.datetime_complete - t.datetime_start).total_seconds())
    return out


def _run(spec: StudySpec, opts: Options, log: Callable[[str], None],
         on_epoch: Callable | None, shutdown: Shutdown,
         after_trial: Callable[[optuna.Study], None] | None = None) -> optuna.Study:
    from tqdm import tqdm

    device = resolve_device(opts.device)
    prepared = prepare(spec, opts, log, stop=shutdown)
    data, storage, study, teacher = prepared.data, prepared.storage, prepared.study, prepared.teacher
    say = _writer(log)
    picked = baselines.resolve(spec, data.input_shape)
    if picked:
        with coordination.claim_lock(storage, opts.storage, study.study_name):
            queued = baselines.enqueue(study, picked)
        if queued:
            log(f"queued {queued} hand-picked baseline student(s) to run first, at the full "
                "budget: " + ", ".join(label for label, _ in picked))
    done = finished_count(study)
    target = opts.n_trials
    log(f"study '{opts.study_name}' in {redact(opts.storage)}: {done} of {target} trials finished")
    if done >= target:
        log("nothing to do: the target is reached (raise --n-trials to add more)")
        return study

    if on_epoch is None and spec.search.sampler == "grid":
        # A sweep compares every grid point at its full budget; stopping some early would
        # plot half-trained students beside trained ones.
        log("early stopping is off for grid sweeps: every point trains for its full budget")
    elif on_epoch is None:  # the study file's Pareto-aware early stopping (None when it is off)
        on_epoch = make_stopper(spec.search.early_stopping, spec.student.train.epochs,
                                tuple(spec.search.objectives), spec.student.train.warmup())
        log(_stopping_line(spec))
    stopper = on_epoch

    def epoch_hook(trial: optuna.Trial, epoch: int, val_acc: float) -> None:
        shutdown.check()  # the safe point: stop between epochs, never inside one
        if stopper is not None and not TrialRecord.of(trial).baseline:
            stopper(trial, epoch, val_acc)

    # The bar's own ETA is off: its moving average swings with every pruned trial. The postfix
    # carries the running trial's epoch and share done, and `run_estimate` for the whole run.
    bar = tqdm(total=target, initial=done, desc="trials", unit="trial", file=sys.stderr,
               dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                                              "[{elapsed}{postfix}]")
    epochs = spec.student.train.epochs
    durations = _durations(study.get_trials(deepcopy=False, states=FINISHED))
    current: dict = {"number": None, "fraction": 0.0, "epoch": 1}

    def show() -> None:
        left = target - bar.n
        parts = []
        if current["number"] is not None:
            parts.append(f"trial {current['number']}: epoch {current['epoch']}/{epochs} "
                         f"{current['fraction']:.0%}")
        eta = run_estimate(durations, left, current["fraction"]
                           if current["number"] is not None else None)
        if eta is not None and left > 0:
            parts.append(f"run ~{_duration(eta)} left")
        bar.set_postfix_str(", ".join(parts))

    def batches(epoch: int, done_batches: int, per_epoch: int) -> None:
        current["epoch"] = epoch
        current["fraction"] = ((epoch - 1) * per_epoch + done_batches) / (epochs * per_epoch)
        show()

    objective = make_objective(spec, data, teacher, device, on_epoch=epoch_hook,
                               on_batches=batches)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.monotonic()
    waiting_said = False
    try:
        while opts.timeout is None or time.monotonic() - start < opts.timeout:
            with shutdown.deferring():
                claim = coordination.claim_trial(study, storage, opts.storage, target,
                                                 stream=prepared.stream)
                if isinstance(claim, optuna.Trial):
                    current.update(number=claim.number, fraction=0.0, epoch=1)
                    show()
                    frozen = _run_trial(study, storage, opts, claim, objective, shutdown, say)
                    current["number"] = None
                    if frozen is not None:
                        bar.write(trial_line(frozen, spec.search.objectives),
                                  file=sys.stderr)
                    if after_trial is not None:
                        after_trial(study)
                    waiting_said = False
            finished = study.get_trials(deepcopy=False, states=FINISHED)
            durations = _durations(finished)
            bar.n = min(len(finished), target)
            show()
            shutdown.check()
            if claim == coordination.DONE:
                break
            if claim == coordination.WAIT:
                if not waiting_said:
                    bar.write("the rest of the target is running on other workers; waiting in "
                              "case one of them fails", file=sys.stderr)
                    waiting_said = True
                time.sleep(WAIT_POLL_SECONDS)
    finally:
        bar.close()
    return study


WAIT_POLL_SECONDS = 1.0  # how often an idle worker looks for failed trials to retry


def _writer(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, clearing the progress bar around the line so that the two do not garble."""
    from tqdm import tqdm

    def say(message: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            log(message)

    return say


def _taken_over(storage, trial: optuna.Trial) -> bool:
    return storage.get_trial(optuna_internals.trial_id(trial)).state.is_finished()


def _run_trial(study: optuna.Study, storage, opts: Options, trial: optuna.Trial,
               objective: Callable, shutdown: Shutdown,
               say: Callable[[str], None]) -> FrozenTrial | None:
    """Run one claimed trial to a recorded end state: never left RUNNING by an exception.

    None when the trial was taken over: this worker fell silent past the grace period (a
    paused laptop, a stopped container) and another worker failed the trial and queued its
    retry. Its result no longer belongs in the study; the worker drops it and goes on.
    """
    def dropped() -> None:
        say(f"warning: trial {trial.number} was taken over while this worker was silent past "
            f"the grace period (another worker failed it and queued a retry); dropping it and "
            f"going on")

    try:
        with coordination.Heartbeat(storage, optuna_internals.trial_id(trial)):
            shutdown.check()
            values = objective(trial)
    except optuna.TrialPruned:
        return _tell(study, storage, trial, dropped, state=TrialState.PRUNED)
    except optuna.exceptions.UpdateFinishedTrialError:
        dropped()  # a write to the trial found it finished: someone else has failed it
        return None
    except ShutdownRequested as e:
        coordination.abandon_trial(study, storage, opts.storage, trial,
                                   f"interrupted by {e.signum_name}", retry=True)
        raise ShutdownRequested(e.signum, f"trial {trial.number} marked FAIL and queued for "
                                f"retry; run the same command again to resume") from None
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt) and _taken_over(storage, trial):
            dropped()  # an error that followed the takeover is not this trial's to record
            return None
        # A bug or an unexpected error: record it on the trial, then let it surface.
        reason = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        coordination.abandon_trial(study, storage, opts.storage, trial, reason[:300], retry=False)
        raise
    return _tell(study, storage, trial, dropped, values=values)


def _tell(study: optuna.Study, storage, trial: optuna.Trial, dropped: Callable[[], None],
          **outcome) -> FrozenTrial | None:
    """`study.tell`, or None (and the warning) when the trial was finished by another worker."""
    try:
        return study.tell(trial, **outcome)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        if not _taken_over(storage, trial):
            raise
        dropped()
        return None
