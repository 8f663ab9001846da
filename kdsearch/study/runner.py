"""`run-study`: study file -> data -> cached teacher -> Optuna trials in SQL storage.

`--n-trials` is the study's total target of finished (complete or pruned) trials, so
running the same command again resumes and adds only what is missing, and any number of
workers running it against one database stop together at exactly that many.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdsearch import objectives, record
from kdsearch.options import Options
from kdsearch.record import TrialRecord
from kdsearch.search import baselines
from kdsearch.search.early_stopping import make_stopper
from kdsearch.search.objective import make_objective, measures_latency
from kdsearch.spec import StudySpec, check_input
from kdsearch.study import coordination
from kdsearch.study.shutdown import Shutdown, ShutdownRequested
from kdsearch.study.storage import open_storage, redact
from kdsearch.training.data import Dataset, load_data
from kdsearch.training.engine import resolve_device
from kdsearch.training.teacher_cache import StopSignal, Teacher

OBJECTIVES = ("val_accuracy", "params")  # a study file without `[search] objectives`
DIRECTIONS = ("maximize", "minimize")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """A GridSampler that does not call `study.stop()` when its grid is used up.

    Trials run through ask/tell here (to hold a study-wide target across workers), where
    Optuna forbids `stop()`; the target, which is capped at the grid size, ends a sweep instead.
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(spec: StudySpec, offset: int) -> optuna.samplers.BaseSampler:
    """The study file's sampler, seeded by the study seed plus the trials already run.

    The offset keeps a resumed run from drawing the same random start-up points again.
    """
    seed = spec.seed + offset
    if spec.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=max(8, min(50, spec.search.n_trials // 4)))
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.search.sampler == "grid":
        from kdsearch.search.sweep import sweep_grid

        return _AskTellGridSampler(sweep_grid(spec), seed=seed)
    # Multi-objective TPE: better than NSGA-II at the tens of trials a CPU study affords;
    # constant_liar keeps parallel workers from all sampling the same point.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=min(10, max(3, spec.search.n_trials // 3)))


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def study_note(spec: StudySpec, teacher: Teacher) -> str:
    m = teacher.record
    return (
        f"# {spec.name}\n\n{spec.description}\n\n"
        f"**Teacher** `{m.description}`: {m.params:,} params, {m.macs:,} MACs, "
        f"val acc {m.val_accuracy:.4f}, test acc {m.test_accuracy:.4f} "
        f"(cache key `{m.key}`).\n\n"
        f"Objectives: **val_accuracy** (maximize) and "
        f"{' and '.join(f'**{c}**' for c in spec.search.objectives)} (minimize).\n\n"
        f"## Study file\n\n```toml\n{spec.source.strip()}\n```\n"
    )


def create_study(spec: StudySpec, opts: Options, storage) -> optuna.Study:
    """Create the study, or join it if another worker (or an earlier run) created it."""
    existing = 0
    try:
        existing = len(optuna.load_study(study_name=opts.study_name, storage=storage).trials)
    except KeyError:
        pass
    costs = spec.search.objectives
    directions = objectives.directions(costs)
    study = optuna.create_study(
        storage=storage, study_name=opts.study_name, directions=directions,
        sampler=make_sampler(spec, existing + 7919 * opts.worker), load_if_exists=True)
    names = objectives.metric_names(costs)
    if [d.name.lower() for d in study.directions] != directions or (
            study.metric_names and list(study.metric_names) != names):
        from kdsearch.errors import StorageError

        found = ", ".join(study.metric_names or [d.name.lower() for d in study.directions])
        raise StorageError(f"study '{opts.study_name}' in {redact(opts.storage)} has other "
                           f"objectives ({found}) than the study file's ({', '.join(names)}); "
                           "choose another --study-name")
    if not study.metric_names:
        study.set_metric_names(names)
    return study


def annotate_study(study: optuna.Study, spec: StudySpec, teacher: Teacher) -> None:
    for key, value in {
        record.STUDY_FILE: spec.source,
        record.STUDY_SPEC: spec.model_dump(mode="json", exclude={"source"}),
        record.TEACHER: teacher.record.summary(),
    }.items():
        study.set_user_attr(key, value)
    try:
        from optuna_dashboard import save_note

        save_note(study, study_note(spec, teacher))
    except Exception:  # the note is a nicety; never fail a run over it
        pass


def time_teacher(study: optuna.Study, spec: StudySpec, teacher: Teacher, device) -> None:
    """Time the teacher as trials time students, once per study, where latency counts: the
    reference point of the hypervolume and the star of the Pareto plot."""
    import copy

    from kdsearch.training.latency import measure_latency

    if not measures_latency(spec) or record.TEACHER_LATENCY in study.user_attrs:
        return
    shape = tuple(teacher.record.input_shape)
    timed = measure_latency(copy.deepcopy(teacher.model), shape, device)
    study.set_user_attr(record.TEACHER_LATENCY, {"latency_ms": timed.median_ms,
                                                 "method": timed.method})


def trial_line(trial: FrozenTrial) -> str:
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
    return f"{head} {a.stopped_reason}  params {a.params or 0:,}  {arch}  {knobs}"


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
    """A study ready for trials: its data, storage, Optuna study and teacher."""

    data: Dataset
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    teacher: Teacher


def prepare(spec: StudySpec, opts: Options, log: Callable[[str], None],
            stop: StopSignal | None = None) -> Prepared:
    """The one route to a study's teacher: data, storage, study, then the teacher, trained by
    exactly one worker and shared with the rest (coordination.obtain_teacher)."""
    device = resolve_device(opts.device)
    data = load_logged(spec, opts, log)
    baselines.resolve(spec, data.input_shape)  # a bad one fails before any training
    storage = open_storage(opts.storage, opts.heartbeats)
    study = create_study(spec, opts, storage)
    teacher = coordination.obtain_teacher(spec, data, opts, device, log, study=study,
                                          storage=storage, stop=stop)
    annotate_study(study, spec, teacher)
    time_teacher(study, spec, teacher, device)
    return Prepared(data, storage, study, teacher)


def run_study(spec: StudySpec, opts: Options, log: Callable[[str], None] = print,
              on_epoch: Callable | None = None) -> optuna.Study:
    """Join (or create) the study and run trials until it has `opts.n_trials` finished ones.

    SIGINT / SIGTERM stop at the next epoch boundary: the running trial is marked FAIL and
    queued for retry (a teacher in training keeps its checkpoint, which the same command
    resumes), and `ShutdownRequested` is raised (exit code 130 / 143).
    """
    shutdown = Shutdown()
    with shutdown.installed():
        return _run(spec, opts, log, on_epoch, shutdown)


def _run(spec: StudySpec, opts: Options, log: Callable[[str], None],
         on_epoch: Callable | None, shutdown: Shutdown) -> optuna.Study:
    from tqdm import tqdm

    device = resolve_device(opts.device)
    prepared = prepare(spec, opts, log, stop=shutdown)
    data, storage, study, teacher = prepared.data, prepared.storage, prepared.study, prepared.teacher
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
                                tuple(spec.search.objectives))
    stopper = on_epoch

    def epoch_hook(trial: optuna.Trial, epoch: int, val_acc: float) -> None:
        shutdown.check()  # the safe point: stop between epochs, never inside one
        if stopper is not None and not TrialRecord.of(trial).baseline:
            stopper(trial, epoch, val_acc)

    objective = make_objective(spec, data, teacher, device, on_epoch=epoch_hook)
    bar = tqdm(total=target, initial=done, desc="trials", unit="trial", file=sys.stderr,
               dynamic_ncols=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.monotonic()
    waiting_said = False
    try:
        while opts.timeout is None or time.monotonic() - start < opts.timeout:
            with shutdown.deferring():
                claim = coordination.claim_trial(study, storage, opts.storage, target)
                if isinstance(claim, optuna.Trial):
                    frozen = _run_trial(study, storage, opts, claim, objective, shutdown)
                    bar.write(trial_line(frozen), file=sys.stderr)
                    waiting_said = False
            bar.n = min(finished_count(study), target)
            bar.refresh()
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


def _run_trial(study: optuna.Study, storage, opts: Options, trial: optuna.Trial,
               objective: Callable, shutdown: Shutdown) -> FrozenTrial:
    """Run one claimed trial to a recorded end state: never left RUNNING by an exception."""
    try:
        with coordination.Heartbeat(storage, trial._trial_id):
            shutdown.check()
            values = objective(trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except ShutdownRequested as e:
        coordination.abandon_trial(study, storage, opts.storage, trial,
                                   f"interrupted by {e.signum_name}", retry=True)
        raise ShutdownRequested(e.signum, f"trial {trial.number} marked FAIL and queued for "
                                f"retry; run the same command again to resume") from None
    except BaseException as e:
        # A bug or an unexpected error: record it on the trial, then let it surface.
        reason = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        coordination.abandon_trial(study, storage, opts.storage, trial, reason[:300], retry=False)
        raise
    return study.tell(trial, values)
