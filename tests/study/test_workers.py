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
from kdsearch.study.workers import THREADS_ENV, threads_per_worker, worker_args, worker_env
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
    argv = worker_args("smoke", opts, seed=7)
    assert not any("hunter2" in a for a in argv)
    flags = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert flags == {"--study-name": "s", "--n-trials": "5", "--device": "cpu",
                     "--cache-dir": "/c", "--data-dir": "/d",
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
    assert "starting 2 workers" in proc.stderr
    assert proc.stdout.count("Pareto front of") == 1  # printed once, by the parent
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{db}")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 4
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
        drawn = [t for t in study.trials if "failed_trial" not in t.system_attrs]  # not retries
        assert len(drawn) >= 6
        keys = [tuple(sorted(t.params.items())) for t in drawn]
        assert len(set(keys)) == len(keys), keys
        # One stream per process, never shared (0, 1, 2: the order they joined the study).
        stream_of = {(t.user_attrs["worker"], t.user_attrs["sampler_stream"]) for t in drawn}
        workers = {w for w, _ in stream_of}
        streams = {s for _, s in stream_of}
        assert len(stream_of) == len(workers) == len(streams) and streams <= {0, 1, 2}
