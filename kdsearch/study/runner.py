"""`run-study`: study file -> data -> cached teacher -> Optuna trials in SQL storage.

`--n-trials` is the study's total target of finished (complete or pruned) trials, so
running the same command again resumes and adds only what is missing, and any number of
workers running it against one database stop together at exactly that many.

The run loop lives here; the sampler (`sampler.py`), the study's identity in storage
(`identity.py`) and what the run prints (`console.py`) each have their own module.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdsearch import optuna_internals, record
from kdsearch.objectives import COST
from kdsearch.options import Options
from kdsearch.record import TrialRecord
from kdsearch.search import baselines, startup
from kdsearch.search.early_stopping import make_stopper
from kdsearch.search.objective import make_objective, measures_latency
from kdsearch.spec import StudySpec, check_input
from kdsearch.study import coordination
from kdsearch.study.console import (
    FINISHED,
    closing_summary,
    duration,
    durations_by_state,
    run_estimate,
    stopping_line,
    trial_line,
    trial_share,
    writer,
)
from kdsearch.study.identity import (
    DIRECTIONS,
    OBJECTIVES,
    annotate_study,
    check_stored,
    create_study,
)
from kdsearch.study.resolve import load_file_teacher, teacher_plan
from kdsearch.study.sampler import make_sampler, sampler_seed
from kdsearch.study.shutdown import Shutdown, ShutdownRequested
from kdsearch.study.storage import open_storage, probe_storage, redact
from kdsearch.training.data import Dataset, load_data
from kdsearch.training.engine import resolve_device
from kdsearch.training.epoch_plan import epoch_images
from kdsearch.training.teacher import Teacher

# Importable from here as before the split (benchmarks and tests use them).
__all__ = ["DIRECTIONS", "OBJECTIVES", "check_stored", "closing_summary", "make_sampler",
           "prepare", "prepare_teacher", "run_estimate", "run_study", "sampler_seed"]


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))



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



def load_logged(spec: StudySpec, opts: Options, log: Callable[[str], None]) -> Dataset:
    data = load_data(spec.data, opts.data_dir, opts.cache_dir, data_home=opts.data_home,
                     offline=opts.offline, study_file=spec.path)
    check_input(spec, data.input_shape, data.num_classes)  # an ImageFolder's shape is news here
    log(f"data {data.name}: {len(data.train):,} train / {len(data.val):,} val / "
        f"{len(data.test):,} test images of shape {data.input_shape}, {data.num_classes} classes")
    return data


def prepare_teacher(spec: StudySpec, opts: Options, log: Callable[[str], None]) -> Teacher:
    """The study's teacher without a study (`kdsearch teacher`): cached, or trained now.

    Ctrl-C and SIGTERM stop as in `run_study`: after this epoch, a second one at once, the
    finished epochs checkpointed for the same command to resume."""
    shutdown = Shutdown()
    with shutdown.installed():
        data = load_logged(spec, opts, log)
        shutdown.check()
        return coordination.obtain_teacher(spec, data, opts, resolve_device(opts.device), log,
                                           stop=shutdown)


@dataclass(frozen=True)
class Prepared:
    """A study ready for trials: its data, storage, Optuna study, sampler stream and teacher."""

    data: Dataset
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    stream: int  # this process's sampler stream (`make_sampler`), recorded on its trials
    teacher: Teacher


def prepare(spec: StudySpec, opts: Options, log: Callable[[str], None],
            stop: Shutdown | None = None) -> Prepared:
    """The one route to a study's teacher: storage, data, study, then the teacher, trained by
    exactly one worker and shared with the rest (coordination.obtain_teacher).

    The storage is checked first, read-only: an unreachable database, a study that kdsearch
    did not make or a changed study file end the run before the data set is loaded, and
    nothing is written to the storage until the data has loaded.

    With `stop`, a signal ends the run at the next step boundary (`stop.check()`), never
    inside a storage call.
    """
    check = stop.check if stop is not None else lambda: None
    device = resolve_device(opts.device)
    stored = probe_storage(opts.storage)  # reachable? the study joinable? nothing written
    check()
    if stored is not None:
        check_stored(spec, opts, stored)
        check()
    data = load_logged(spec, opts, log)
    check()
    baselines.resolve(spec, data.input_shape)  # a bad one fails before any training
    # A teacher file that does not fit the data: one line, no study. Loaded once per run.
    loaded = load_file_teacher(teacher_plan(spec), data, device)
    check()
    storage = open_storage(opts.storage, opts.heartbeats)
    check()
    planned = startup.plan(spec, data.input_shape, data.num_classes, sampler_seed(spec, 0))
    study, stream = create_study(spec, opts, storage, [params for _, params in planned])
    check()
    if planned and not startup.started(study):
        cost = COST[startup.planned_cost(spec)]
        fixed = ("" if spec.search.startup_recipe == "drawn" else ", each at " + ", ".join(
            f"{k} {v:.3g}" for k, v in startup.recipe_centre(spec).items() if k in planned[0][1]))
        log(f"TPE's first {len(planned)} students: from {cost.format(planned[0][0])} to "
            f"{cost.format(planned[-1][0])}, one per band of log10({cost.name}), smallest "
            f"first{fixed} (search/startup.py)")
    teacher = coordination.obtain_teacher(spec, data, opts, device, log, study=study,
                                          storage=storage, stop=stop, loaded=loaded)
    check()
    annotate_study(study, spec, teacher)
    time_teacher(study, spec, teacher, device)
    check()
    return Prepared(data, storage, study, stream, teacher)


def run_study(spec: StudySpec, opts: Options, log: Callable[[str], None] = print,
              on_epoch: Callable | None = None,
              after_trial: Callable[[optuna.Study], None] | None = None,
              worker: str = "", summary: bool = True) -> optuna.Study:
    """Join (or create) the study and run trials until it has `opts.n_trials` finished ones.

    `after_trial(study)` runs after each trial this worker ends (the CLI draws the learning
    curves into the dashboard there: the report side, which the runner does not import).
    `worker` names this worker on its trial lines (`--workers` gives w1, w2, ...); without
    `summary` the closing summary is left to the caller (the parent of those workers).

    SIGINT / SIGTERM stop at the next epoch boundary, a second one at once (`shutdown.py`):
    the running trial is marked FAIL and queued for retry (a teacher in training keeps its
    checkpoint, which the same command resumes), and `ShutdownRequested` is raised (exit code
    130 / 143).
    """
    shutdown = Shutdown(prefix=f"[{worker}] " if worker else "")
    start = time.monotonic()
    with shutdown.installed():
        study = _run(spec, opts, log, on_epoch, shutdown, after_trial, worker)
    if summary:
        for line in closing_summary(study, time.monotonic() - start):
            log(line)
    return study


def _run(spec: StudySpec, opts: Options, log: Callable[[str], None],
         on_epoch: Callable | None, shutdown: Shutdown,
         after_trial: Callable[[optuna.Study], None] | None = None,
         worker: str = "") -> optuna.Study:
    from tqdm import tqdm

    device = resolve_device(opts.device)
    prepared = prepare(spec, opts, log, stop=shutdown)
    data, storage, study, teacher = prepared.data, prepared.storage, prepared.study, prepared.teacher
    say = writer(log)
    picked = baselines.resolve(spec, data.input_shape)
    if picked:
        with coordination.claim_lock(storage, opts.storage, study.study_name):
            queued = baselines.enqueue(study, picked)
        if queued:
            log(f"queued {queued} hand-picked baseline student(s) to run first, at the full "
                "budget: " + ", ".join(label for label, _ in picked))
        shutdown.check()
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
        train = spec.student.train
        on_epoch = make_stopper(spec.search.early_stopping, train.epochs,
                                tuple(spec.search.objectives), train.warmup(), train.lr_schedule)
        log(stopping_line(spec))
    stopper = on_epoch

    def epoch_hook(trial: optuna.Trial, epoch: int, val_acc: float) -> None:
        shutdown.at_epoch()  # the safe point of a first signal: between epochs
        if stopper is not None and not TrialRecord.of(trial).baseline:
            stopper(trial, epoch, val_acc)

    # The bar's own ETA is off: its moving average swings with every pruned trial. The postfix
    # carries the running trial's epoch and share done, and `run_estimate` for the whole run.
    bar = tqdm(total=target, initial=done, desc="trials", unit="trial", file=sys.stderr,
               dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                                              "[{elapsed}{postfix}]")
    epochs = spec.student.train.epochs
    images = epoch_images(len(data.train), spec.student.train)  # each epoch's share of a trial
    durations = durations_by_state(study.get_trials(deepcopy=False, states=FINISHED))
    current: dict = {"number": None, "fraction": 0.0, "epoch": 1}

    def show() -> None:
        left = target - bar.n
        parts = []
        if current["number"] is not None:
            parts.append(f"trial {current['number']}: epoch {current['epoch']}/{epochs} "
                         f"{current['fraction']:.0%}")
        clock_left = None if opts.timeout is None else opts.timeout - (time.monotonic() - start)
        eta = run_estimate(durations, left, current["fraction"]
                           if current["number"] is not None else None, clock_left)
        if eta is not None and left > 0:
            parts.append(f"run ~{duration(eta)} left")
        bar.set_postfix_str(", ".join(parts))

    def batches(epoch: int, done_batches: int, per_epoch: int) -> None:
        current["epoch"] = epoch
        current["fraction"] = trial_share(epoch, done_batches, per_epoch, images)
        show()
        shutdown.at_batch(done_batches, per_epoch)  # a second signal stops here

    objective = make_objective(spec, data, teacher, device, on_epoch=epoch_hook,
                               on_batches=batches)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.monotonic()
    waiting_said = False
    prefix = f"[{worker}] " if worker else ""
    try:
        while opts.timeout is None or time.monotonic() - start < opts.timeout:
            claim = coordination.claim_trial(study, storage, opts.storage, target,
                                             stream=prepared.stream)
            if isinstance(claim, optuna.Trial):
                current.update(number=claim.number, fraction=0.0, epoch=1)
                show()
                frozen = _run_trial(study, storage, opts, claim, objective, shutdown, say)
                current["number"] = None
                if frozen is not None:
                    bar.write(prefix + trial_line(frozen, spec.search.objectives),
                              file=sys.stderr)
                if after_trial is not None:
                    after_trial(study)
                waiting_said = False
            finished = study.get_trials(deepcopy=False, states=FINISHED)
            durations = durations_by_state(finished)
            bar.n = min(len(finished), target)
            show()
            shutdown.check()
            if claim == coordination.DONE:
                break
            if claim == coordination.WAIT:
                if not waiting_said:
                    bar.write(prefix + "the rest of the target is running on other workers; "
                              "waiting in case one of them fails", file=sys.stderr)
                    waiting_said = True
                time.sleep(WAIT_POLL_SECONDS)
                shutdown.check()
    finally:
        bar.close()
    return study


WAIT_POLL_SECONDS = 1.0  # how often an idle worker looks for failed trials to retry


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
            with shutdown.training(f"trial {trial.number}",
                                   f"trial {trial.number} is queued for retry"):
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
