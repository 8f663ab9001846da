"""Fault drill: several workers on one PostgreSQL study; one SIGKILLed, one SIGTERMed mid-trial.

    python benchmarks/fault_drill.py [--workers 3] [--trials 12] [--server URL] [--keep]

Creates a scratch database on the server, starts `--workers` `kdsearch run-study` processes
on one study (each with its own teacher cache, as on separate machines, and one shared
artifact store), then, while trials run: SIGKILLs one worker mid-trial, SIGTERMs another
mid-trial, and restarts both. Heartbeats are short (1 s, grace 4 s) so the killed worker's
trial is failed and retried within seconds. When every worker has exited, it checks the
study from the database and prints its final state, then last:

    trials_lost=<n> stuck_running=<m> duplicates=<k>

lost: a failed trial whose retry never finished, or finished trials short of the target;
stuck_running: trials still RUNNING; duplicates: finished trials beyond the target, or two
finished retries of one failed trial. Exit status 0 only if all three are 0 and every other
check passes. The scratch database is dropped afterwards (unless --keep).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import psycopg  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from kdsearch.study.storage import redact  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# The smoke study's data with MLP students trained for more epochs: a trial lasts a few
# seconds on a loaded 2-core machine, long enough to be caught mid-trial.
DRILL_STUDY = """
description = "fault drill: synthetic 8x8 images, MLP students of a few seconds each"
seed = 0

[data]
dataset = "synthetic"
val_size = 300
[data.synthetic]
n_train = 1500
n_test = 300
num_classes = 4
noise = 2.5

[teacher]
family = "mlp"
hidden = [64]

[teacher.train]
epochs = 3
batch_size = 64
lr = 0.003

[student]
family = "mlp"
depth = { low = 1, high = 2 }
width = { choices = [8, 16, 32] }

[student.train]
epochs = EPOCHS
batch_size = 64
lr = 0.003

[search]
n_trials = N_TRIALS
sampler = "tpe"
"""


def admin_conninfo(server: str) -> str:
    u = make_url(server)
    parts = {"host": u.host or "127.0.0.1", "port": u.port or 5432,
             "user": u.username or "postgres", "dbname": u.database or "postgres",
             "password": u.password, "connect_timeout": 5}
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


class Drill:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="kd_drill_"))
        self.db = f"kd_drill_{uuid.uuid4().hex[:8]}"
        self.url = make_url(args.server).set(drivername="postgresql+psycopg", database=self.db) \
            .render_as_string(hide_password=False)
        self.study_file = self.work / "drill.toml"
        self.study_file.write_text(DRILL_STUDY.replace("EPOCHS", str(args.epochs))
                                   .replace("N_TRIALS", str(args.trials)))
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def start(self, slot: int) -> subprocess.Popen:
        name = f"w{len(self.procs)}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KDSEARCH_STORAGE": self.url,
               "KDSEARCH_CACHE_DIR": str(self.work / f"cache{slot}"),
               "KDSEARCH_ARTIFACT_DIR": str(self.work / "artifacts"),
               "KDSEARCH_HEARTBEAT": "1", "KDSEARCH_GRACE": "4",
               "KDSEARCH_THREADS": str(self.args.threads)}
        log = self.work / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "kdsearch.cli", "run-study",
                                 str(self.study_file)], env=env, stdout=subprocess.DEVNULL,
                                stderr=log.open("w"))
        self.procs.append((name, proc, log))
        self.say(f"started {name} (pid {proc.pid}, cache slot {slot})")
        return proc

    def study(self) -> optuna.Study | None:
        try:
            return optuna.load_study(study_name="drill", storage=self.url)
        except KeyError:
            return None

    def wait_mid_trial(self, proc: subprocess.Popen, timeout: float = 600) -> int:
        """The number of a trial `proc` is running, once it has an epoch behind it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"worker {proc.pid} exited ({proc.returncode}) before the fault")
            study = self.study()
            for t in study.get_trials(deepcopy=False) if study else []:
                # Mid-trial: at least one epoch done and at most half of them.
                if (t.state == TrialState.RUNNING
                        and 1 <= len(t.user_attrs.get("val_curve", [])) <= self.args.epochs // 2
                        and str(t.user_attrs.get("worker", "")).endswith(f":{proc.pid}")):
                    return t.number
            time.sleep(0.2)
        raise SystemExit(f"worker {proc.pid} never got mid-trial")

    def run(self) -> int:
        with psycopg.connect(admin_conninfo(self.args.server), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db}"')
        self.say(f"scratch database {redact(self.url)}; study {self.args.trials} trials, "
                 f"{self.args.workers} workers")
        status = 1
        try:
            status = self._drill()
            return status
        finally:
            for _, proc, _ in self.procs:  # a drill that broke off leaves no worker behind
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if self.args.keep:
                print(f"kept database {self.db} and folder {self.work}")
            else:
                with psycopg.connect(admin_conninfo(self.args.server), autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
                if status == 0:
                    shutil.rmtree(self.work, ignore_errors=True)
                else:
                    print(f"worker logs kept in {self.work}")

    def _drill(self) -> int:
        workers = [self.start(i) for i in range(self.args.workers)]
        victim_kill, victim_term = workers[0], workers[1]

        killed = self.wait_mid_trial(victim_kill)
        victim_kill.kill()
        victim_kill.wait()
        self.say(f"SIGKILL worker pid {victim_kill.pid} in trial {killed}")

        termed = self.wait_mid_trial(victim_term)
        sent = time.monotonic()
        victim_term.send_signal(signal.SIGTERM)
        term_code = victim_term.wait(timeout=120)
        self.say(f"SIGTERM worker pid {victim_term.pid} in trial {termed}: exit {term_code} "
                 f"after {time.monotonic() - sent:.1f} s")

        self.start(0)
        self.start(1)
        deadline = time.monotonic() + self.args.timeout
        for _, proc, _ in self.procs:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        self.say("all workers exited")
        return self.report(killed, termed, term_code)

    def report(self, killed: int, termed: int, term_code: int) -> int:
        study = self.study()
        assert study is not None
        trials = study.get_trials(deepcopy=False)
        target = self.args.trials
        states = Counter(t.state.name for t in trials)
        finished = [t for t in trials if t.state in FINISHED]

        def origin(t) -> int:
            return t.system_attrs.get("failed_trial", t.number)

        finished_by_origin = Counter(origin(t) for t in finished)
        failed = [t for t in trials if t.state == TrialState.FAIL]
        lost = sum(1 for t in failed if finished_by_origin[origin(t)] == 0)
        lost += max(0, target - len(finished))
        duplicates = sum(n - 1 for n in finished_by_origin.values() if n > 1)
        duplicates += max(0, len(finished) - target)
        stuck = states.get("RUNNING", 0)

        print("\nfinal state of study 'drill':")
        print(f"{'trial':>5} {'state':9} {'retry of':>8} {'worker':>22}  reason")
        for t in trials:
            retry = t.system_attrs.get("failed_trial")
            print(f"{t.number:>5} {t.state.name:9} {'' if retry is None else retry:>8} "
                  f"{str(t.user_attrs.get('worker', '')):>22}  "
                  f"{t.user_attrs.get('stopped_reason', '')}")
        print("states: " + ", ".join(f"{k}={v}" for k, v in sorted(states.items())))
        codes = {name: proc.returncode for name, proc, _ in self.procs}
        print("exit codes: " + ", ".join(f"{k}={v}" for k, v in codes.items()))
        logs = [log.read_text() for _, _, log in self.procs]
        trained = sum(len(re.findall(r"^training teacher", text, re.M)) for text in logs)
        fetched = sum("fetched from the artifact store" in text for text in logs)
        tracebacks = sum("Traceback" in text for text in logs)
        print(f"teacher trainings={trained} fetched_from_artifact_store={fetched} "
              f"tracebacks={tracebacks}")

        checks = {
            "SIGKILLed trial FAIL": study.trials[killed].state == TrialState.FAIL,
            "SIGTERMed trial FAIL": study.trials[termed].state == TrialState.FAIL,
            "SIGTERM exit code 143": term_code == 143,
            "other workers exit 0": all(c == 0 for n, c in codes.items() if n not in ("w0", "w1")),
            "teacher trained once": trained == 1,
            "no tracebacks": tracebacks == 0,
            "finished == target": len(finished) == target,
        }
        for name, ok in checks.items():
            print(f"check {name}: {'ok' if ok else 'FAILED'}")
        print(f"trials_lost={lost} stuck_running={stuck} duplicates={duplicates}")
        return 0 if (lost == stuck == duplicates == 0 and all(checks.values())) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=40, help="per student trial")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--server", default=os.environ.get(
        "KDSEARCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL to create the scratch database on")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the target")
    p.add_argument("--keep", action="store_true", help="keep the scratch database and logs")
    args = p.parse_args()
    if args.workers < 3:
        p.error("--workers must be at least 3 (one killed, one terminated, one carrying on)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return Drill(args).run()


if __name__ == "__main__":
    sys.exit(main())
