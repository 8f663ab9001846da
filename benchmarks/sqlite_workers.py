"""Several local workers on one SQLite file: does any hit "database is locked"?

    python benchmarks/sqlite_workers.py [--workers 6] [--trials 30]

Starts the workers on a scratch SQLite study (tiny synthetic study, short trials, so the
database is written to as often as possible), waits, and prints the finished-trial count,
the exit codes and the number of "database is locked" lines in the workers' logs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import optuna  # noqa: E402
from _backends import tiny_study  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--trials", type=int, default=30)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kd_sqlite_"))
    study = tiny_study(work, epochs=1, n_trials=args.trials)
    url = f"sqlite:///{work / 'study.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KDSEARCH_STORAGE": url,
           "KDSEARCH_CACHE_DIR": str(work / "cache"), "KDSEARCH_THREADS": "1",
           "KDSEARCH_HEARTBEAT": "1", "KDSEARCH_GRACE": "5"}
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "kdsearch.cli", "run-study", str(study)],
                              env=env, stdout=subprocess.DEVNULL,
                              stderr=(work / f"w{i}.log").open("w"))
             for i in range(args.workers)]
    codes = [proc.wait(timeout=900) for proc in procs]
    seconds = time.monotonic() - start
    logs = "".join((work / f"w{i}.log").read_text() for i in range(args.workers))
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    print(f"workers={args.workers} target={args.trials} finished={finished} "
          f"trials_total={len(trials)} exit_codes={codes} seconds={seconds:.1f} "
          f"database_is_locked={logs.count('database is locked')} "
          f"tracebacks={logs.count('Traceback')}")
    return 0 if finished == args.trials and set(codes) == {0} and "locked" not in logs else 1


if __name__ == "__main__":
    sys.exit(main())
