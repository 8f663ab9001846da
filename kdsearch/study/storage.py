"""Study storage: an Optuna RDBStorage URL (SQLite by default, PostgreSQL for many machines).

Passwords never leave this module: every message shows the URL with the password masked.
"""

from __future__ import annotations

import os
import re

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine

from kdsearch.errors import StorageError
from kdsearch.search.baselines import ATTR as BASELINE_ATTR
from kdsearch.study.locks import db_lock

DEFAULT_STORAGE = "sqlite:///kdsearch.db"
HEARTBEAT_INTERVAL = 20  # seconds between a running trial's heartbeats (env KDSEARCH_HEARTBEAT)
GRACE_PERIOD = 3 * HEARTBEAT_INTERVAL  # a trial silent this long is marked FAIL and retried
# (env KDSEARCH_GRACE; default three heartbeats)
MAX_RETRY = 3  # a trial whose workers keep dying is retried at most this many times
SQLITE_BUSY_TIMEOUT = 60  # seconds a SQLite writer waits for the file lock before failing


def storage_url(arg: str | None) -> str:
    return arg or os.environ.get("KDSEARCH_STORAGE") or DEFAULT_STORAGE


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
    keep = {k: v for k, v in trial.user_attrs.items() if k == BASELINE_ATTR}  # still hand-picked
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=keep, system_attrs={**trial.system_attrs,
                      "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                      "retry_history": history}))


def _env_seconds(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise StorageError(f"{name}: expected a whole number of seconds, found {text!r}") from None
    if not 1 <= value <= 86_400:
        raise StorageError(f"{name}: expected seconds in [1, 86400], found {value}")
    return value


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, from the environment or the defaults."""
    interval = _env_seconds("KDSEARCH_HEARTBEAT", HEARTBEAT_INTERVAL)
    grace = _env_seconds("KDSEARCH_GRACE", 3 * interval)
    if grace <= interval:
        raise StorageError(f"KDSEARCH_GRACE ({grace} s) must exceed KDSEARCH_HEARTBEAT "
                           f"({interval} s), or live trials would be failed")
    return interval, grace


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


def open_storage(url: str, heartbeat: bool = True) -> RDBStorage:
    """Open (creating tables if needed) the storage at `url`; one-line errors, no password."""
    kwargs: dict = {}
    sqlite = url.startswith("sqlite")
    if sqlite:
        # Several local processes share one SQLite file: wait for locks instead of failing.
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    elif url.startswith("postgresql"):
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"connect_timeout": 10}
    hb = {}
    if heartbeat:
        interval, grace = heartbeat_settings()
        hb = dict(heartbeat_interval=interval, grace_period=grace,
                  heartbeat_stale_trial_callback=retry_failed_trial)
    try:
        # Workers starting together would all create the tables; Optuna's table creation is
        # not safe against that ("UNIQUE constraint failed: alembic_version"), so take turns.
        lock_engine = create_engine(url, **kwargs)
        try:
            with db_lock(lock_engine, url, "kdsearch:create-tables"):
                storage = RDBStorage(url, engine_kwargs=kwargs, **hb)
        finally:
            lock_engine.dispose()
        if sqlite:
            with storage.engine.connect() as conn:  # WAL persists in the file: readers never block
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            _sqlite_immediate_transactions(storage.engine)
    except ImportError as e:
        raise StorageError(f"storage {redact(url)}: missing database driver ({e.name or e})") from None
    except Exception as e:  # sqlalchemy / driver errors: connection refused, bad password, bad URL
        raise StorageError(f"cannot open storage {redact(url)}: {_scrub(str(e), url)}") from None
    return storage


def load_study(url: str, study_name: str) -> optuna.Study:
    storage = open_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(
            f"no study '{study_name}' in {redact(url)} (studies there: {', '.join(names) or 'none'})"
        ) from None
