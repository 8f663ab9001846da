"""`run-study --workers N`: N worker processes against one storage, the cores divided among them.

The parent prepares what all workers share (data cache, teacher cache, the study row in
storage) once, with every core, so that no worker waits for a teacher another is training;
then it starts N copies of the same `run-study` command, each with `cores // N` torch
threads and its own worker index (which offsets the sampler's seed, so that workers started
together do not draw the same students). Each worker stops when the study holds the target
number of finished trials. The parent waits for all of them and prints the Pareto table once.

Why processes and not threads: a trial is a Python loop around small tensor operations, so
threads would serialise on the GIL; separate processes also keep a crashed worker from
taking the others down (its trial is marked FAIL by the storage heartbeat and re-run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

THREADS_ENV = "KDSEARCH_THREADS"


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of `workers` processes: the cores shared out, at least one."""
    return max(1, (cores or available_cores()) // max(1, workers))


def torch_threads() -> int:
    """Threads this process should use: `KDSEARCH_THREADS` when a parent set it, else all cores.

    Oversubscribing cores is far worse than leaving one idle: with other busy processes on two
    cores, a 2-thread training loop with spinning OpenMP threads measured up to 10x slower
    than a 1-thread one (the CLI sets OMP_WAIT_POLICY=PASSIVE for that reason).
    """
    value = os.environ.get(THREADS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else available_cores()


def worker_args(args, worker: int) -> list[str]:
    """The `run-study` command line for one worker, from the parent's parsed arguments.

    The storage URL travels in the environment (KDSEARCH_STORAGE), never on a command line
    where `ps` would show its password.
    """
    argv = [
        sys.executable,
        "-m",
        "kdsearch.cli",
        "run-study",
        args.study,
        "--device",
        args.device,
        "--worker-index",
        str(worker),
    ]
    for flag, value in (
        ("--study-name", args.study_name),
        ("--data-dir", args.data_dir),
        ("--cache-dir", args.cache_dir),
        ("--seed", args.seed),
        ("--n-trials", args.n_trials),
        ("--timeout", args.timeout),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def worker_env(storage: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KDSEARCH_STORAGE": storage,
            THREADS_ENV: str(threads),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TQDM_DISABLE": "1",
        }
    )  # N progress bars on one terminal garble each other
    return env


def run_workers(args, spec, opts, n: int, log: Callable[[str], None]) -> int:
    """Prepare once, run `n` workers to the study's target, return the worst exit code."""
    from kdsearch.study.runner import open_study, prepare

    data, teacher = prepare(spec, opts, log)
    study = open_study(spec, opts, teacher)
    del data, teacher, study  # the workers load their own; the parent only waits

    threads = threads_per_worker(n)
    log(f"starting {n} workers with {threads} torch thread{'s' * (threads > 1)} each")
    env = worker_env(opts.storage, threads)
    procs = [
        subprocess.Popen(worker_args(args, i), env=env, stdout=subprocess.DEVNULL) for i in range(n)
    ]
    codes = []
    try:
        for p in procs:
            codes.append(p.wait())
    except KeyboardInterrupt:  # the terminal sent SIGINT to the workers too: let them finish
        codes = [p.wait() for p in procs]
        raise
    bad = [c for c in codes if c != 0]
    if bad:
        log(f"{len(bad)} of {n} workers exited with an error (exit codes {sorted(set(bad))})")
    return max(codes, key=abs) if bad else 0
