"""Many workers, one study: claiming trials, heartbeats, retries and the shared teacher.

Optuna's distributed mode does the heavy lifting (RDB storage, heartbeats, the retry
callback); this module adds the two things it leaves open:

* an exact study-wide target. Workers take a trial only under a lock held in the database,
  and only while finished + running trials are below the target, so together they never
  run more than the target however many there are. A worker that finds the rest running
  waits instead of leaving: a running trial may yet fail (its worker killed) and need a retry.
* one teacher for all workers. The first trains it under a database lock while the others
  wait; with an artifact store configured it is published there, so workers on other
  machines download it instead of training their own.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from kdsearch import optuna_internals
from kdsearch.errors import CacheError
from kdsearch.options import Options
from kdsearch.record import TEACHER_ARTIFACTS as ARTIFACTS_ATTR
from kdsearch.record import TEACHER_TRAINED_BY as TRAINED_BY_ATTR
from kdsearch.record import set_study_attr, set_trial, study_attr
from kdsearch.spec import StudySpec
from kdsearch.study.artifacts import fetch_teacher, publish_teacher
from kdsearch.study.locks import db_lock
from kdsearch.study.resolve import load_file_teacher, teacher_plan, views_settings
from kdsearch.study.storage import retry_failed_trial
from kdsearch.training.data import Dataset
from kdsearch.training.teacher import StopSignal, Teacher, TeacherPlan
from kdsearch.training.teacher_cache import get_teacher
from kdsearch.training.teacher_file import FileTeacher
from kdsearch.training.teacher_store import teacher_key
from kdsearch.training.teacher_views import attach_views

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- heartbeats and stale trials ----------------------------------------------------------------


class Heartbeat:
    """Record a trial's heartbeat every `interval` seconds in a background thread."""

    def __init__(self, storage: RDBStorage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="kdsearch-heartbeat")

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 60
        while not self._stop.wait(interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # a database blip: the next beat retries; the grace period covers it
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _silent_running(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """RUNNING trials that never recorded a heartbeat and started over a grace period ago.

    Optuna's stale check skips trials without a heartbeat; a worker killed between taking a
    trial and its first beat would leave one RUNNING forever.
    """
    grace = timedelta(seconds=storage.grace_period or 2 * (storage.heartbeat_interval or 60))
    return optuna_internals.silent_running_trials(storage, study, started_before=datetime.now() - grace)


def reap_stale(study: optuna.Study, storage: RDBStorage) -> None:
    """Fail the trials of dead workers; the retry callback queues each one again."""
    if storage.get_heartbeat_interval() is None:
        return
    optuna.storages.fail_stale_trials(study)
    for trial_id in _silent_running(study, storage):
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                retry_failed_trial(study, storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


# --- claiming trials under the study-wide target ------------------------------------------------

DONE = "done"  # the study has its target of finished trials
WAIT = "wait"  # the rest of the target is running elsewhere; one may still fail


def claim_lock(storage: RDBStorage, url: str, study_name: str):
    return db_lock(storage.engine, url, f"kdsearch:claim:{study_name}")


def claim_trial(study: optuna.Study, storage: RDBStorage, url: str,
                target: int, stream: int | None = None) -> optuna.Trial | str:
    """A new (or retried) trial, or DONE / WAIT; never more than `target` finished trials.

    The trial records this worker and its sampler `stream` (the one that drew a new trial's
    parameters; a retry keeps the parameters of the trial it repeats).
    """
    with claim_lock(storage, url, study.study_name):
        reap_stale(study, storage)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = sum(s in FINISHED for s in states)
        running = states.count(TrialState.RUNNING)
        if finished >= target:
            return DONE
        if finished + running >= target:
            return WAIT
        with warnings.catch_warnings():  # Optuna warns that heartbeats expect optimize():
            warnings.simplefilter("ignore", UserWarning)  # this module runs them itself
            trial = study.ask()  # pops a queued retry first, if there is one
        if storage.get_heartbeat_interval() is not None:
            storage.record_heartbeat(optuna_internals.trial_id(trial))  # stale-checkable from the start
        set_trial(trial, worker=worker_id(), sampler_stream=stream)
        return trial


def abandon_trial(study: optuna.Study, storage: RDBStorage, url: str, trial: optuna.Trial,
                  reason: str, retry: bool) -> None:
    """Mark a trial this worker cannot finish FAIL (never left RUNNING), and queue its retry.

    Under the claim lock, so no other worker counts the slot as free before the retry is
    queued.
    """
    with claim_lock(storage, url, study.study_name):
        try:
            set_trial(trial, stopped_reason=reason)
            study.tell(trial, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # already failed by another worker's stale check, which queued the retry
        if retry:
            retry_failed_trial(study, storage.get_trial(optuna_internals.trial_id(trial)))


# --- the shared teacher -------------------------------------------------------------------------



def obtain_teacher(spec: StudySpec, data: Dataset, opts: Options, device: torch.device,
                   log: Callable[[str], None], study: optuna.Study | None = None,
                   storage: RDBStorage | None = None, stop: StopSignal | None = None,
                   loaded: FileTeacher | None = None) -> Teacher:
    """The study's teacher: the one route to it, for every command and every worker.

    With a study, trained by exactly one worker across all machines (under a database lock,
    shared through the artifact store); without one (`kdsearch teacher`, `compress`), from the
    local cache, trained there under a file lock if missing. `stop` (a `Shutdown`) makes a
    signal stop the teacher's training at an epoch boundary, checkpointed, so that the same
    command resumes it.

    A teacher from a file is measured locally by each machine (every worker reads the file the
    study names; running it once is no training worth sharing). With `[student.train] views`,
    the teacher comes with its logits on each fixed view (`attach_views`). The study's settings
    are resolved here, once, and a teacher file is loaded once (`loaded`, if the caller has).
    """
    plan = teacher_plan(spec)
    if loaded is None:
        loaded = load_file_teacher(plan, data, device)
    if plan.file is not None:  # measured locally by each machine
        teacher = get_teacher(plan, data, opts.cache_dir, device, log=log, loaded=loaded)
    else:
        teacher = _obtain(plan, data, opts, device, log, study, storage, stop)
    assert teacher is not None
    return attach_views(teacher, views_settings(spec), data, opts.cache_dir, device, log,
                        loaded=loaded)


def _obtain(plan: TeacherPlan, data, opts, device, log, study, storage, stop) -> Teacher | None:
    cache_dir, artifact_dir = opts.cache_dir, opts.artifact_dir
    if study is None or storage is None:
        return get_teacher(plan, data, cache_dir, device, log=log, stop=stop)
    key = teacher_key(plan, data)
    teacher = get_teacher(plan, data, cache_dir, device, log=log, train_if_missing=False)
    published = lambda: key in study_attr(study, ARTIFACTS_ATTR, {})  # noqa: E731
    if teacher is not None and (artifact_dir is None or published()):
        return teacher
    with db_lock(storage.engine, opts.storage, f"kdsearch:teacher:{key}",
                 on_wait=lambda: log(f"another worker is training teacher {key}; waiting"),
                 poll=stop.check if stop is not None else None):
        if teacher is None:
            teacher = _teacher_under_lock(plan, data, study, cache_dir, artifact_dir, device,
                                          key, log, stop)
        # Published before the lock is released: a worker that waited finds it there.
        if artifact_dir is not None and not published():
            artifact_id = publish_teacher(teacher, artifact_dir, study)
            set_study_attr(study, ARTIFACTS_ATTR, {**study_attr(study, ARTIFACTS_ATTR, {}),
                                                   key: artifact_id})
            log(f"teacher {key} published to the artifact store {artifact_dir}")
    return teacher


def _teacher_under_lock(plan, data, study, cache_dir, artifact_dir, device, key, log,
                        stop) -> Teacher:
    teacher = get_teacher(plan, data, cache_dir, device, log=log, train_if_missing=False)
    if teacher is not None:  # trained by a worker on this machine while we waited
        return teacher
    artifact_id = study_attr(study, ARTIFACTS_ATTR, {}).get(key)
    if artifact_id is not None and artifact_dir is not None:
        teacher = fetch_teacher(artifact_id, artifact_dir, cache_dir, key, data, device)
        log(f"teacher {key} fetched from the artifact store {artifact_dir}: training nothing")
        return teacher
    trained_by = study_attr(study, TRAINED_BY_ATTR, {}).get(key)
    if trained_by and trained_by.split(":")[0] != socket.gethostname():
        where = (f"artifact {artifact_id}, but this worker has no artifact store"
                 if artifact_id else "no artifact store was configured")
        raise CacheError(
            f"teacher {key} was trained by worker {trained_by} ({where}); give every worker "
            "the same --artifact-dir (env KDSEARCH_ARTIFACT_DIR) or a shared --cache-dir, "
            "rather than training it again")
    teacher = get_teacher(plan, data, cache_dir, device, log=log, stop=stop)
    assert teacher is not None
    set_study_attr(study, TRAINED_BY_ATTR, {**study_attr(study, TRAINED_BY_ATTR, {}),
                                            key: worker_id()})
    return teacher

