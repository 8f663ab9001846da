"""Locks held in the study's database, so that workers on different machines agree.

PostgreSQL: a session-level advisory lock on a dedicated connection; the server drops it
when that connection dies, so a SIGKILLed holder never leaves it taken. SQLite lives in one
file on one machine: an flock on a file beside it does the same job, and the kernel drops it
when the holder dies. Other databases fall back to that file lock, next to the teacher cache
(one machine only).
"""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

POLL_SECONDS = 0.2

_memory_locks: dict[str, threading.Lock] = {}


def _pg_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _wait(try_once: Callable[[], bool], on_wait: Callable[[], None] | None,
          poll: Callable[[], None] | None = None) -> None:
    waited = False
    while not try_once():
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        time.sleep(POLL_SECONDS)  # a poll, not a blocking call: Ctrl-C stays responsive
        if poll is not None:
            poll()  # may raise to give up waiting (a stop), between two tries


@contextmanager
def _pg_lock(engine: Engine, name: str, on_wait: Callable[[], None] | None,
             poll: Callable[[], None] | None = None) -> Iterator[None]:
    key = _pg_key(name)
    conn = engine.connect()
    locked = False

    def try_once() -> bool:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()  # the lock is session-level: it outlives the transaction
        return got

    try:
        _wait(try_once, on_wait, poll)
        locked = True
        yield
    finally:
        try:
            if not locked:
                raise RuntimeError("interrupted while taking the lock")
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
            conn.close()
        except BaseException:
            # Closing the session is what releases a lock in an unknown state; a pooled
            # connection would keep it.
            conn.invalidate()
            conn.close()


@contextmanager
def _file_lock(path: Path, on_wait: Callable[[], None] | None,
               poll: Callable[[], None] | None = None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        def try_once() -> bool:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        _wait(try_once, on_wait, poll)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def db_lock(engine: Engine, url: str, name: str,
            on_wait: Callable[[], None] | None = None,
            poll: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock `name` in the database at `url` (whose engine is `engine`).

    `on_wait()` is called once if the lock is taken by someone else, before waiting; `poll()`
    between tries, and may raise to give up (a Ctrl-C while another worker trains a teacher).
    """
    slug = hashlib.sha256(name.encode()).hexdigest()[:16]
    if engine.dialect.name == "postgresql":
        with _pg_lock(engine, name, on_wait, poll):
            yield
        return
    database = make_url(url).database if engine.dialect.name == "sqlite" else None
    if engine.dialect.name == "sqlite" and (not database or database == ":memory:"):
        lock = _memory_locks.setdefault(slug, threading.Lock())  # one process sees the DB
        _wait(lambda: lock.acquire(blocking=False), on_wait, poll)
        try:
            yield
        finally:
            lock.release()
        return
    if database:
        db = Path(database).expanduser().resolve()  # one hidden folder of lock files beside it
        path = db.with_name(f".{db.name}.kdsearch-locks") / f"{slug}.lock"
    else:
        path = Path(tempfile.gettempdir()) / f"kdsearch-{slug}.lock"
    with _file_lock(path, on_wait, poll):
        yield
