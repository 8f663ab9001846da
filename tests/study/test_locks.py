"""Database locks: exclusive across connections, released when the holder dies."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import create_engine

from kdsearch.study.locks import db_lock
from tests.helpers import BACKENDS, REPO, scratch_storage

ROOT = REPO


@pytest.mark.parametrize("backend", BACKENDS)
def test_lock_is_exclusive_and_waits(backend, tmp_path):
    with scratch_storage(backend, tmp_path) as url:
        engines = [create_engine(url), create_engine(url)]
        order: list[str] = []
        waited = threading.Event()
        with db_lock(engines[0], url, "x"):
            def other() -> None:
                with db_lock(engines[1], url, "x", on_wait=waited.set):
                    order.append("second")

            t = threading.Thread(target=other)
            t.start()
            assert waited.wait(120), "the second holder did not find the lock taken"
            time.sleep(0.5)
            order.append("first released")
        t.join(120)
        assert order == ["first released", "second"]
        with db_lock(engines[0], url, "y"), db_lock(engines[1], url, "z"):
            pass  # different names do not contend
        for e in engines:
            e.dispose()


_HOLD = """
import sys, time
from sqlalchemy import create_engine
from kdsearch.study.locks import db_lock

from tests.helpers import REPO
url = sys.argv[1]
with db_lock(create_engine(url), url, "held"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_lock_released_when_holder_is_killed(backend, tmp_path):
    with scratch_storage(backend, tmp_path) as url:
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, url], stdout=subprocess.PIPE,
                                text=True, env={"PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdout.readline().strip() == "locked"
            engine = create_engine(url)
            busy = threading.Event()
            got = threading.Event()

            def take() -> None:
                with db_lock(engine, url, "held", on_wait=busy.set):
                    got.set()

            t = threading.Thread(target=take, daemon=True)
            t.start()
            assert busy.wait(120)  # hang guards only: events, not durations
            proc.kill()  # SIGKILL: no cleanup code runs in the holder
            assert got.wait(120), "lock not released after its holder was killed"
            t.join(120)
            engine.dispose()
        finally:
            proc.kill()
            proc.wait()
