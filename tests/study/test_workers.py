"""`run-study --workers N`: cores shared out, secrets kept off command lines, one storage."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from kdsearch.study.workers import THREADS_ENV, threads_per_worker, torch_threads, worker_args, worker_env
from tests.helpers import REPO

REPO = REPO


def test_threads_are_divided_never_below_one():
    assert threads_per_worker(1, cores=16) == 16
    assert threads_per_worker(4, cores=16) == 4
    assert threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(4, cores=2) == 1


def test_worker_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert torch_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "nonsense")
    assert torch_threads() >= 1


def test_storage_url_travels_in_the_environment_not_argv():
    args = argparse.Namespace(
        study="smoke",
        study_name="s",
        data_dir=None,
        cache_dir=Path("/c"),
        seed=None,
        n_trials=5,
        timeout=None,
        device="cpu",
    )
    url = "postgresql://kd:hunter2@db/kd"
    argv = worker_args(args, 1)
    assert not any("hunter2" in a for a in argv)
    assert argv[argv.index("--worker-index") + 1] == "1"
    assert argv[argv.index("--n-trials") + 1] == "5"
    env = worker_env(url, 2)
    assert env["KDSEARCH_STORAGE"] == url and env[THREADS_ENV] == "2"


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
