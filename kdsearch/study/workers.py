"""`run-study --workers N`: N worker processes against one storage, the cores divided among them.

The parent prepares what all workers share (data cache, teacher cache, the study row in
storage) once, with every core, so that no worker waits for a teacher another is training;
then it starts N copies of the same `run-study` command, each with `cores // N` torch
threads. Each takes its own sampler stream from a counter in the
database when it joins the study (`identity.create_study`), so workers never draw the same
students, whether started here or separately (`docker compose up --scale worker=4`). Each
worker stops when the study holds the target number of finished trials. The parent waits for
all of them and prints the Pareto table once.

Why processes and not threads: a trial is a Python loop around small tensor operations, so
threads would serialise on the GIL; separate processes also keep a crashed worker from
taking the others down (its trial is marked FAIL by the storage heartbeat and re-run).
"""

from __future__ import annotations

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
    than a 1-thread one (the CLI sets OMP_WAIT_POLICY=PASSIVE for that reason).
    """
    return max(1, (cores or available_cores()) // max(1, workers))


def worker_args(study: str, opts: Options, seed: int | None) -> list[str]:
    """The `run-study` command line for one worker: every option of the parent's.

    The storage URL travels in the environment (KDSEARCH_STORAGE), never on a command line
    where `ps` would show its password; heartbeat settings travel there too, as the parent
    read them.
    """
    argv = [sys.executable, "-m", "kdsearch.cli", "run-study", study,
            "--study-name", opts.study_name, "--n-trials", str(opts.n_trials),
            "--device", opts.device, "--cache-dir", str(opts.cache_dir)]
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


def run_workers(study_arg: str, spec: StudySpec, opts: Options, seed: int | None,
                environ: Mapping[str, str], log: Callable[[str], None]) -> int:
    """Prepare once, run `opts.workers` workers to the study's target, return the worst exit
    code.

    The parent takes the same route to the teacher as every worker (`runner.prepare`), so the
    teacher is trained once, under the study's lock, and published when an artifact store is
    given.
    """
    from kdsearch.study.runner import prepare

    prepare(spec, opts, log)  # the workers load their own data; the parent only waits
    n = opts.workers
    threads = threads_per_worker(n)
    log(f"starting {n} workers with {threads} torch thread{'s' * (threads > 1)} each")
    env = worker_env(environ, opts, threads)
    procs = [subprocess.Popen(worker_args(study_arg, opts, seed), env=env,
                              stdout=subprocess.DEVNULL) for _ in range(n)]
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
