"""Several `kdsearch run-study` workers on one study, started with docker-compose's command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.helpers import BACKENDS, REPO, scratch_storage, tiny_study

ROOT = REPO


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _interpolate(text: str, env: dict[str, str]) -> str:
    """docker compose's ${VAR:-default} substitution."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1]) or (m[2] or ""), text)


def worker_command(env: dict[str, str]) -> list[str]:
    """The compose file's worker command, as compose would run it with `env`."""
    return [_interpolate(part, env) for part in compose()["services"]["worker"]["command"]]


def test_compose_file_describes_the_deployment():
    services = compose()["services"]
    assert set(services) >= {"postgres", "dashboard", "worker"}
    assert "ports" not in services["postgres"]  # the database is never published
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    assert all(str(p).startswith("127.0.0.1:") for p in services["dashboard"]["ports"])
    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker  # scalable: --scale worker=N
    assert worker_command({}) == ["kdsearch", "run-study", "smoke"]
    env = {k: _interpolate(str(v), {}) for k, v in worker["environment"].items()}
    assert env["KDSEARCH_STORAGE"].startswith("postgresql+psycopg://kdsearch:")
    assert env["KDSEARCH_STORAGE"].endswith("@postgres:5432/kdsearch")
    mounts = {_interpolate(v, {}).split(":")[1] for v in worker["volumes"]}
    dirs = {env[f"KDSEARCH_{k}_DIR"] for k in ("DATA", "CACHE", "ARTIFACT")}
    assert dirs <= mounts
    dash = services["dashboard"]["command"]
    assert dash[0] == "optuna-dashboard" and dash[-1] == compose()["x-storage"]
    assert (ROOT / "Dockerfile").is_file()


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    assert cmd[0] == "kdsearch"
    argv = [sys.executable, "-m", "kdsearch.cli", *cmd[1:]]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            cwd=log.parent)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_three_workers_one_teacher_exact_target(backend, tmp_path):
    target = 6
    study = tiny_study(tmp_path, epochs=2, n_trials=target)
    with scratch_storage(backend, tmp_path) as url:
        cmd = worker_command({"KDSEARCH_STUDY": str(study)})
        assert cmd == ["kdsearch", "run-study", str(study)]
        procs, logs = [], []
        for i in range(3):
            # Separate caches, as on separate machines; one shared artifact store.
            env = {**os.environ, "PYTHONPATH": str(ROOT), "KDSEARCH_STORAGE": url,
                   "KDSEARCH_CACHE_DIR": str(tmp_path / f"cache{i}"),
                   "KDSEARCH_ARTIFACT_DIR": str(tmp_path / "artifacts"),
                   "KDSEARCH_HEARTBEAT": "2"}
            logs.append(tmp_path / f"worker{i}.log")
            procs.append(_start(cmd, env, logs[-1]))
        codes = [p.wait(timeout=300) for p in procs]
        texts = [log.read_text() for log in logs]
        assert codes == [0, 0, 0], texts
        assert not any("database is locked" in t or "Traceback" in t for t in texts), texts
        trained = [t for t in texts if re.search(r"^training teacher", t, re.M)]
        assert len(trained) == 1, texts  # one worker trained it ...
        fetched = sum("fetched from the artifact store" in t for t in texts)
        assert fetched == 2, texts  # ... and the other two fetched it
        s = optuna.load_study(study_name="tiny", storage=url)
        states = [t.state for t in s.trials]
        assert sum(st in (TrialState.COMPLETE, TrialState.PRUNED) for st in states) == target
        assert TrialState.RUNNING not in states
        assert len({t.user_attrs.get("worker") for t in s.trials}) >= 2  # the work was shared
