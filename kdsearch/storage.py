"""Study storage: an Optuna RDBStorage URL (SQLite by default, PostgreSQL for many machines).

Passwords never leave this module: every message shows the URL with the password masked.
"""

from __future__ import annotations

import os
import re

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from kdsearch.errors import StorageError

DEFAULT_STORAGE = "sqlite:///kdsearch.db"
HEARTBEAT_INTERVAL = 20  # seconds between a running trial's heartbeats
GRACE_PERIOD = 60  # a trial silent this long is marked FAIL and re-queued


def storage_url(arg: str | None) -> str:
    return arg or os.environ.get("KDSEARCH_STORAGE") or DEFAULT_STORAGE


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


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


def open_storage(url: str, heartbeat: bool = True) -> RDBStorage:
    """Open (creating tables if needed) the storage at `url`; one-line errors, no password."""
    kwargs: dict = {}
    if url.startswith("sqlite"):
        # Several local processes share one SQLite file: wait for locks instead of failing.
        kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"connect_timeout": 10}
    hb = {}
    if heartbeat:
        hb = dict(heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    try:
        storage = RDBStorage(url, engine_kwargs=kwargs, **hb)
    except ImportError as e:
        raise StorageError(f"storage {redact(url)}: missing database driver ({e.name or e})") from None
    except Exception as e:  # sqlalchemy / driver errors: connection refused, bad password, bad URL
        raise StorageError(f"cannot open storage {redact(url)}: {_scrub(str(e), url)}") from None
    if url.startswith("sqlite"):
        with storage.engine.connect() as conn:  # WAL persists in the file: readers stop blocking writers
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
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
