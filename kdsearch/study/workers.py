"""`run-study --workers N`: N worker processes against one storage, the cores divided among them.

The parent prepares what all workers share (data cache, teacher cache, the study row in
storage) once, with every core, so that no worker waits for a teacher another is training;
then it starts N copies of the same `run-study` command (never more than the trials left),
each with `cores // N` torch threads and a label (w1, w2, ...) on its lines. Each takes its
own sampler stream from a counter in the database when it joins the study
(`identity.create_study`), so workers never draw the same students, whether started here or
separately (`docker compose up --scale worker=4`). Each worker stops when the study holds the
target number of finished trials. The parent waits for all of them and prints the closing
summary and the Pareto table once.

Why processes and not threads: a trial is a Python loop around small tensor operations, so
threads would serialise on the GIL; separate processes also keep a crashed worker from
taking the others down (its trial is marked FAIL by the storage heartbeat and re-run).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping

from kdsearch.options import Options, available_cores
from kdsearch.spec import StudySpec

THREADS_ENV = "KDSEARCH_THREADS"


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of `workers` processes: the cores shared out, at least one.

    Oversubscribing cores is far worse than leaving one idle: with other busy processes on two
    cores, a 2-thread training loop with spinning OpenMP threads measured up to 10x slower
    than a 1-thread one (importing kdsearch sets OMP_WAIT_POLICY=PASSIVE for that reason).
    """
    return max(1, (cores or available_cores()) // max(1, workers))


def worker_args(study: str, opts: Options, seed: int | None, label: str = "w1") -> list[str]:
    """The `run-study` command line for one worker: every option of the parent's, and the
    worker's `label` (w1, w2, ...), which names it on its lines.

    The storage URL travels in the environment (KDSEARCH_STORAGE), never on a command line
    where `ps` would show its password; heartbeat settings travel there too, as the parent
    read them.
    """
    argv = [sys.executable, "-m", "kdsearch.cli", "run-study", study,
            "--study-name", opts.study_name, "--n-trials", str(opts.n_trials),
            "--device", opts.device, "--cache-dir", str(opts.cache_dir), "--worker", label]
    for flag, value in (
        ("--data-dir", opts.data_dir),
        ("--seed", seed),
        ("--timeout", opts.timeout),
        ("--artifact-dir", opts.artifact_dir),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def worker_env(environ: Mapping[str, str], opts: Options, threads: int) -> dict[str, str]:
    """The parent's environment, with the settings a worker must share with it."""
    env = dict(environ)
    env.update({
        "KDSEARCH_STORAGE": opts.storage,
        "KDSEARCH_DATA_DIR": str(opts.data_home),
        "KDSEARCH_HEARTBEAT": str(opts.heartbeats.interval),
        "KDSEARCH_GRACE": str(opts.heartbeats.grace),
        "KDSEARCH_OFFLINE": "1" if opts.offline else "0",
        THREADS_ENV: str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TQDM_DISABLE": "1",  # N progress bars on one terminal garble each other
    })
    return env


def worker_plan(workers: int, left: int, cores: int) -> tuple[int, str | None]:
    """How many workers to start for `left` trials on `cores` cores, and a warning or None.

    Never more workers than trials left: an extra one would load the data and the teacher
    only to find nothing to claim. More workers than cores is allowed (a study may wait on a
    database more than on arithmetic), but named: each worker gets one thread and they share
    the cores.
    """
    n = max(0, min(workers, left))
    if n > cores:
        return n, (f"warning: {n} workers on {cores} core{'s' * (cores > 1)}: they share the "
                   f"cores, one torch thread each; --workers {cores} runs each trial faster")
    return n, None


def trials_left(spec: StudySpec, opts: Options) -> int:
    """The trials the study still needs, read without writing anything (no study: all)."""
    import optuna

    from kdsearch.study.identity import check_stored
    from kdsearch.study.runner import finished_count
    from kdsearch.study.storage import probe_storage

    stored = probe_storage(opts.storage)
    if stored is None:
        return opts.n_trials
    check_stored(spec, opts, stored)  # a changed study file: refused as a lone worker would be
    try:
        study = optuna.load_study(study_name=opts.study_name, storage=stored)
    except KeyError:
        return opts.n_trials
    return max(0, opts.n_trials - finished_count(study))


def run_workers(study_arg: str, spec: StudySpec, opts: Options, seed: int | None,
                environ: Mapping[str, str], log: Callable[[str], None]) -> int:
    """Prepare once, run up to `opts.workers` workers to the study's target, return the worst
    exit code.

    The parent takes the same route to the teacher as every worker (`runner.prepare`), so the
    teacher is trained once, under the study's lock, and published when an artifact store is
    given. The workers run in their own process group: a Ctrl-C at the terminal reaches the
    parent alone, which hands each signal on once, so a first Ctrl-C is a first one for every
    worker too (stop after this epoch) and a second one stops them at once.
    """
    from kdsearch.study.runner import finished_count, prepare
    from kdsearch.study.shutdown import Shutdown, ShutdownRequested

    if trials_left(spec, opts) == 0:  # before the data loads: nothing to prepare for
        log(f"study '{opts.study_name}': the target of {opts.n_trials} finished trials is "
            "reached; starting no workers (raise --n-trials to add more)")
        return 0
    shutdown = Shutdown()
    with shutdown.installed():
        prepared = prepare(spec, opts, log, stop=shutdown)  # the workers load their own data
    left = max(0, opts.n_trials - finished_count(prepared.study))
    n, warning = worker_plan(opts.workers, left, available_cores())
    if warning:
        log(warning)
    if n == 0:
        log(f"study '{opts.study_name}': the target of {opts.n_trials} finished trials is "
            "reached; starting no workers (raise --n-trials to add more)")
        return 0
    threads = threads_per_worker(n)
    log(f"starting {n} worker{'s' * (n > 1)} for {left} trial{'s' * (left > 1)} left, with "
        f"{threads} torch thread{'s' * (threads > 1)} each"
        + (f" (--workers {opts.workers}: no more workers than trials)" if n < opts.workers
           else ""))
    env = worker_env(environ, opts, threads)
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def hand_on(signum: int, _frame) -> None:  # only passes the signal on: no raise here
        received.append(signum)
        for p in procs:
            if p.returncode is None:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    old = {s: signal.signal(s, hand_on) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(1, n + 1):
            if received:  # stopped before all had started: start no more
                break
            procs.append(subprocess.Popen(worker_args(study_arg, opts, seed, f"w{i}"), env=env,
                                          stdout=subprocess.DEVNULL, process_group=0))
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if received:
        raise ShutdownRequested(received[0], "the workers stopped; their running trials are "
                                "marked FAIL and queued for retry")
    bad = [c for c in codes if c != 0]
    if bad:
        log(f"{len(bad)} of {n} workers exited with an error (exit codes {sorted(set(bad))})")
    return max(codes, key=abs) if bad else 0
