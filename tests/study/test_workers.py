"""`run-study --workers N`: cores shared out, secrets kept off command lines, one storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kdsearch.options import Heartbeats, Options
from kdsearch.study.workers import (
    THREADS_ENV,
    threads_per_worker,
    worker_args,
    worker_env,
    worker_plan,
)
from tests.helpers import BACKENDS, REPO, cli_argv, cli_env, scratch_storage, tiny_study

REPO = REPO


def test_threads_are_divided_never_below_one():
    assert threads_per_worker(1, cores=16) == 16
    assert threads_per_worker(4, cores=16) == 4
    assert threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(4, cores=2) == 1


def test_workers_get_every_option_and_the_storage_url_only_in_the_environment():
    url = "postgresql://kd:hunter2@db/kd"
    opts = Options(storage=url, study_name="s", n_trials=5, timeout=30.0, data_dir=Path("/d"),
                   cache_dir=Path("/c"), device="cpu", artifact_dir=Path("/a"),
                   heartbeats=Heartbeats(4, 12), offline=True, workers=2)
    argv = worker_args("smoke", opts, seed=7, label="w2")
    assert not any("hunter2" in a for a in argv)
    flags = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert flags == {"--study-name": "s", "--n-trials": "5", "--device": "cpu",
                     "--cache-dir": "/c", "--data-dir": "/d", "--worker": "w2",
                     "--seed": "7", "--timeout": "30.0", "--artifact-dir": "/a"}
    # Every flag of run-study but --workers itself reaches the workers.
    from kdsearch.cli import build_parser

    run_study = build_parser()._subparsers._group_actions[0].choices["run-study"]
    offered = {s for a in run_study._actions for s in a.option_strings if s.startswith("--")}
    assert offered - set(flags) == {"--help", "--storage", "--workers"}
    env = worker_env({"PATH": "/bin"}, opts, 2)
    assert env["KDSEARCH_STORAGE"] == url and env[THREADS_ENV] == "2" and env["PATH"] == "/bin"
    assert (env["KDSEARCH_HEARTBEAT"], env["KDSEARCH_GRACE"], env["KDSEARCH_OFFLINE"]) == (
        "4", "12", "1")


def test_no_more_workers_than_trials_left_and_a_warning_past_the_cores():
    assert worker_plan(4, left=10, cores=8) == (4, None)
    assert worker_plan(4, left=3, cores=8) == (3, None)  # a fourth would find nothing to run
    assert worker_plan(4, left=0, cores=8) == (0, None)
    n, warning = worker_plan(3, left=10, cores=2)
    assert n == 3 and warning.startswith("warning: 3 workers on 2 cores") and \
        "--workers 2" in warning
    assert worker_plan(3, left=2, cores=2) == (2, None)  # capped first: within the cores


@pytest.mark.slow
def test_two_workers_fill_one_study(tmp_path):
    study_file = tmp_path / "w.toml"
    text = (REPO / "studies" / "smoke.toml").read_text().replace("epochs = 3", "epochs = 1")
    study_file.write_text(text)
    db = tmp_path / "w.db"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdsearch.cli",
            "run-study",
            str(study_file),
            "--storage",
            f"sqlite:///{db}",
            "--cache-dir",
            str(tmp_path / "c"),
            "--n-trials",
            "4",
            "--workers",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "starting 2 workers for 4 trials left" in proc.stderr
    assert proc.stdout.count("Pareto front of") == 1  # printed once, by the parent
    assert proc.stderr.count("run-study 'w' done in") == 1  # one closing summary for the run
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{db}")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4  # the target is exact across workers
    # Each trial line names its worker, and says every finished trial once.
    lines = [line for line in proc.stderr.splitlines() if " trial " in line and
             line.startswith(("[w1] trial", "[w2] trial"))]
    assert sorted(int(line.split()[2]) for line in lines) == sorted(t.number for t in finished)
    assert not any(line.startswith("trial ") for line in proc.stderr.splitlines())

    # The study is complete: say so and start no worker, however many are asked for.
    argv = list(proc.args)
    argv[argv.index("--workers") + 1] = "5"
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "the target of 4 finished trials is reached; starting no workers" in again.stderr
    assert "starting 5" not in again.stderr and "[w1]" not in again.stderr
    # Workers started together must not draw the same first student (their seeds differ).
    first_two = [t.params for t in sorted(study.trials, key=lambda t: t.number)[:2]]
    assert first_two[0] != first_two[1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_started_separately_never_draw_the_same_student(backend, tmp_path):
    """What `docker compose up --scale worker=3` does: three identical `run-study`
    processes on one storage. Each takes its own sampler stream from the database."""
    study_file = tiny_study(tmp_path, epochs=1, n_trials=6)
    with scratch_storage(backend, tmp_path) as url:
        env = cli_env({"KDSEARCH_STORAGE": url, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
                       "KDSEARCH_THREADS": "1"})
        procs = [subprocess.Popen(cli_argv("run-study", study_file, "--cache-dir", tmp_path / "c",
                                           "--device", "cpu"), env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [e[-800:] for e in errors]
        study = optuna.load_study(study_name="tiny", storage=url)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 6  # the study-wide target, exact
        drawn = [t for t in study.trials if "failed_trial" not in t.system_attrs]  # not retries
        assert len(drawn) >= 6  # and any trial of a worker stopped for silence (then retried)
        keys = [tuple(sorted(t.params.items())) for t in drawn]
        assert len(set(keys)) == len(keys), keys
        # One stream per process, never shared (0, 1, 2: the order they joined the study).
        stream_of = {(t.user_attrs["worker"], t.user_attrs["sampler_stream"]) for t in drawn}
        workers = {w for w, _ in stream_of}
        streams = {s for _, s in stream_of}
        assert len(stream_of) == len(workers) == len(streams) and streams <= {0, 1, 2}


@pytest.mark.slow
def test_ctrl_c_at_the_parent_stops_every_worker_once_and_says_how_to_resume(tmp_path):
    """The workers run in their own process group: the parent hands the signal on once, so a
    first Ctrl-C is a first one for each worker (stop after this epoch), not a second."""
    import signal
    import time

    study_file = tiny_study(tmp_path, epochs=400, n_trials=2)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    proc = subprocess.Popen(cli_argv("run-study", study_file, "--storage", url, "--cache-dir",
                                     tmp_path / "c", "--device", "cpu", "--workers", "2"),
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300  # a hang guard: the event is two trials under way
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        try:
            trials = optuna.load_study(study_name="tiny", storage=url).trials
        except KeyError:
            trials = []
        if sum(t.state == TrialState.RUNNING and bool(t.user_attrs.get("val_curve"))
               for t in trials) == 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    for w in ("w1", "w2"):  # each heard one signal, a first one, and said so in its name
        assert f"[{w}] kdsearch: SIGINT: stopping trial " in err, err
        assert f"[{w}] kdsearch: SIGINT again" not in err
        assert f"[{w}] kdsearch: stopped by SIGINT: trial " in err
    assert "kdsearch: stopped by SIGINT: the workers stopped" in err
    assert err.count("kdsearch: to resume: kdsearch run-study") == 1  # the parent's, once
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=url).trials]
    assert sorted(states, key=lambda s: s.name) == [TrialState.FAIL, TrialState.FAIL,
                                                    TrialState.WAITING, TrialState.WAITING]
