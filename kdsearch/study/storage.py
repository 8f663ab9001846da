"""Study storage: an Optuna RDBStorage URL (SQLite by default, PostgreSQL for many machines).

Passwords never leave this module: every message shows the URL with the password masked.
"""

from __future__ import annotations

import re
import time

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine

from kdsearch.errors import StorageError
from kdsearch.options import Heartbeats
from kdsearch.record import KEEP_ON_RETRY
from kdsearch.study.locks import db_lock

MAX_RETRY = 3  # a trial whose workers keep dying is retried at most this many times
SQLITE_BUSY_TIMEOUT = 60  # seconds a SQLite writer waits for the file lock before failing


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def mask_urls(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return re.sub(r"(://[^:/@\s'\"]*:)[^@\s'\"]*@", r"\1***@", text)


def _scrub(text: str, url: str) -> str:
    """Remove the password of `url` from a driver's error text, wherever it appears."""
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = None
    line = text.strip().splitlines()[0] if text.strip() else type(text).__name__
    line = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", line)
    return line.replace(str(password), "***") if password else line


def retry_failed_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial again with its parameters, at most MAX_RETRY times.

    Like Optuna's RetryHeartbeatStaleTrialCallback (same system attrs, so its
    `retried_trial_number` works), but the retry starts with no user attrs but its baseline
    label: the dead attempt's partial curve, worker and stop reason do not belong to it.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return
    keep = {k: v for k, v in trial.user_attrs.items() if k in KEEP_ON_RETRY}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=keep, system_attrs={**trial.system_attrs,
                      "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                      "retry_history": history}))


def _sqlite_immediate_transactions(engine) -> None:
    """Make every SQLite transaction take the write lock up front (BEGIN IMMEDIATE).

    With pysqlite's default deferred transactions, a worker that read and then tries to
    write can get "database is locked" at once, without waiting out the busy timeout (the
    lock upgrade cannot wait: Optuna issues #820, #4994). Taking the lock at BEGIN makes
    every writer queue behind the busy timeout instead; the SQLAlchemy recipe for pysqlite.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy, not pysqlite, emit BEGIN
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT * 1000}")

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna created the tables lack the hooks


class NoStudiesError(StorageError):
    """A storage, opened read-only, that holds no Optuna tables (or no SQLite file) yet, or
    whose tables another process is creating right now."""


def _no_studies(url: str) -> NoStudiesError:
    return NoStudiesError(f"no kdsearch studies in {redact(url)} (run 'kdsearch run-study' "
                          "with this --storage first)")


def _sqlite_has_tables(url: str) -> bool:
    """Whether the SQLite file at `url` exists and holds Optuna's tables; read without
    creating, writing or locking anything (opening a missing file would create it). Whether
    they are fully created is `_tables_ready`'s to say, for every back-end."""
    import sqlite3
    from pathlib import Path

    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return False
    path = Path(database)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                "AND name = 'studies'").fetchone() is not None
        finally:
            conn.close()
    except sqlite3.DatabaseError:  # not a database at all: RDBStorage names the problem
        return True


# Optuna stamps `alembic_version` last when it creates its tables. Until that row exists
# another process is still creating them (under open_storage's lock), and an RDBStorage opened
# here would stamp it too: the "UNIQUE constraint failed: alembic_version" race that a
# read-only probe lost to a worker creating the tables beside it.
_STAMPED = "SELECT 1 FROM alembic_version LIMIT 1"


def _tables_ready(engine) -> bool:
    """Optuna's tables exist and carry their alembic stamp: nobody is creating them now."""
    from sqlalchemy import inspect, text

    found = inspect(engine)
    if not (found.has_table("studies") and found.has_table("alembic_version")):
        return False
    with engine.connect() as conn:
        return conn.execute(text(_STAMPED)).first() is not None


def open_storage(url: str, heartbeats: Heartbeats | None = Heartbeats(),
                 read_only: bool | None = None) -> RDBStorage:
    """Open the storage at `url` (creating its tables if needed); one-line errors, no password.

    Without `heartbeats` no trial is ever failed as stale. Read-only (by default: without
    heartbeats, as `best`, `export` and `dashboard` open it) never writes to the storage: a
    storage without Optuna's tables, or an SQLite file that does not exist, is refused with
    one line instead of being created.
    """
    if read_only is None:
        read_only = heartbeats is None
    kwargs: dict = {}
    sqlite = url.startswith("sqlite")
    if sqlite:
        # Several local processes share one SQLite file: wait for locks instead of failing.
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    elif url.startswith("postgresql"):
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"connect_timeout": 10}
    hb = {}
    if heartbeats is not None:
        hb = dict(heartbeat_interval=heartbeats.interval, grace_period=heartbeats.grace,
                  heartbeat_stale_trial_callback=retry_failed_trial)
    if read_only and sqlite and not _sqlite_has_tables(url):
        raise _no_studies(url)
    for attempt in range(1, 6):
        try:
            return _open(url, kwargs, hb, read_only, sqlite)
        except _Locked:
            # Optuna's own set-up reads then writes in a deferred transaction, before kdsearch's
            # BEGIN IMMEDIATE is installed: beside a busy worker the upgrade can fail at once
            # instead of waiting. Rare (seen under load with three workers); try again.
            if attempt == 5:
                raise StorageError(f"cannot open storage {redact(url)}: the SQLite file stayed "
                                   "locked by other processes") from None
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


class _Locked(Exception):
    """An SQLite file found locked while the storage was being opened."""


def _open(url: str, kwargs: dict, hb: dict, read_only: bool, sqlite: bool) -> RDBStorage:
    try:
        if read_only:
            storage = _open_read_only(url, kwargs, hb)
        else:
            # Workers starting together would all create the tables; Optuna's table creation
            # is not safe against that ("UNIQUE constraint failed: alembic_version"), so take
            # turns.
            lock_engine = create_engine(url, **kwargs)
            try:
                with db_lock(lock_engine, url, "kdsearch:create-tables"):
                    storage = RDBStorage(url, engine_kwargs=kwargs, **hb)
                    if sqlite:  # in the same turn: the first switch to WAL needs the file alone
                        with storage.engine.connect() as conn:  # WAL persists: readers never block
                            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            finally:
                lock_engine.dispose()
            if sqlite:
                _sqlite_immediate_transactions(storage.engine)
    except StorageError:
        raise
    except ImportError as e:
        raise StorageError(f"storage {redact(url)}: missing database driver ({e.name or e})") from None
    except Exception as e:  # sqlalchemy / driver errors: connection refused, bad password, bad URL
        if sqlite and "database is locked" in str(e):
            raise _Locked() from None
        raise StorageError(f"cannot open storage {redact(url)}: {_scrub(str(e), url)}") from None
    return storage


def _open_read_only(url: str, kwargs: dict, hb: dict) -> RDBStorage:
    """RDBStorage on existing tables only: checked first, never created."""
    engine = create_engine(url, **kwargs)
    try:
        ready = _tables_ready(engine)
    finally:
        engine.dispose()
    if not ready:
        raise _no_studies(url)
    return RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True, **hb)


def probe_storage(url: str) -> RDBStorage | None:
    """The storage at `url`, read-only, or None if it is reachable but holds nothing yet.

    `run-study` asks this before it loads any data, so that an unreachable database, or a
    stored study it may not join, ends the run at once; and it writes nothing, so that a run
    refused later (bad data) leaves no database behind.
    """
    try:
        return open_storage(url, heartbeats=None, read_only=True)
    except NoStudiesError:
        pass
    if url.startswith("sqlite"):
        from pathlib import Path

        from sqlalchemy.engine import make_url

        folder = Path(make_url(url).database or ".").parent
        if not folder.is_dir():
            raise StorageError(f"cannot open storage {redact(url)}: folder {folder} does not "
                               "exist") from None
    return None


def load_study(url: str, study_name: str) -> optuna.Study:
    """A stored study, for reading (best, export, compress): one line, and nothing written,
    for a storage without it. (report.rows refuses a study that kdsearch did not make.)"""
    storage = open_storage(url, heartbeats=None)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(
            f"no study '{study_name}' in {redact(url)} (studies there: {', '.join(names) or 'none'})"
        ) from None
    return study
