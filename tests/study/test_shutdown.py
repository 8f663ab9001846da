"""Ctrl-C / SIGTERM: stop at an epoch boundary, record the trial, exit 130 / 143, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kdsearch.cli import _command_line
from tests.helpers import REPO, tiny_study

ROOT = REPO


def _run(study: Path, url: str, cache: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kdsearch.cli", "run-study", str(study), "--storage", url,
         "--cache-dir", str(cache)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _wait_mid_trial(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until a trial is RUNNING with at least one epoch behind it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            trials = optuna.load_study(study_name="tiny", storage=url).trials
        except KeyError:
            trials = []
        if any(t.state == TrialState.RUNNING and t.user_attrs.get("val_curve") for t in trials):
            return
        time.sleep(0.2)
    raise AssertionError("no trial got past its first epoch")


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_stops_at_epoch_boundary_and_resume_finishes(sig, code, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = tiny_study(tmp_path, epochs=400, n_trials=1)  # one trial of several seconds
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = _run(study, url, tmp_path / "cache")
    _wait_mid_trial(url, proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    stop_seconds = time.monotonic() - sent
    assert proc.returncode == code, err
    assert stop_seconds < 10, f"took {stop_seconds:.1f} s to stop"
    assert "Traceback" not in err
    assert f"kdsearch: stopped by {sig.name}: trial 0 marked FAIL" in err
    assert f"to resume: kdsearch run-study {study} --storage {url}" in err
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["stopped_reason"] == f"interrupted by {sig.name}"
    assert 1 <= len(trials[0].user_attrs["val_curve"]) < 400
    if sig == signal.SIGTERM:  # resuming runs the queued retry with the same parameters
        again = _run(study, url, tmp_path / "cache")
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        trials = optuna.load_study(study_name="tiny", storage=url).trials
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
        assert trials[1].params == trials[0].params


def test_command_line_masks_password():
    line = _command_line(["run-study", "smoke", "--storage",
                            "postgresql+psycopg://kd:hunter2@db:5432/kd", "--n-trials", "5"])
    assert "hunter2" not in line
    assert line == ("kdsearch run-study smoke --storage 'postgresql+psycopg://kd:***@db:5432/kd' "
                    "--n-trials 5")
    assert "hunter2" not in _command_line(["run-study", "x", "--storage=postgresql://a:hunter2@h/d"])
