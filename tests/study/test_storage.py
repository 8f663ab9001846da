"""Storage: both back-ends open, heartbeats are configurable, passwords never leak."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kdsearch.errors import StorageError
from kdsearch.options import Heartbeats
from kdsearch.study.storage import open_storage, redact
from tests.helpers import (
    BACKENDS,
    PG_SERVER,
    REPO,
    require_pg,
    scratch_pg,
    scratch_storage,
    tiny_study,
)

ROOT = REPO
SECRET = "s3cr3t-Pa55"


def test_redact_masks_password_in_every_form():
    assert SECRET not in redact(f"postgresql+psycopg://bob:{SECRET}@db.example:5432/kd")
    assert "bob" in redact(f"postgresql+psycopg://bob:{SECRET}@db.example:5432/kd")
    assert SECRET not in redact(f"--storage=postgresql://bob:{SECRET}@h/db")  # not a URL: regex
    assert redact("sqlite:///kd.db") == "sqlite:///kd.db"


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_storage_with_heartbeats(backend, tmp_path):
    with scratch_storage(backend, tmp_path) as url:
        storage = open_storage(url, Heartbeats(2, 6))
        assert storage.get_heartbeat_interval() == 2
        assert storage.grace_period == 6
        storage.engine.dispose()


def _pg_url(user: str, password: str, host: str = "127.0.0.1", port: int = 5432,
            db: str = "test") -> str:
    return f"postgresql+psycopg://{user}:{password}@{host}:{port}/{db}"


@pytest.mark.parametrize("url", [
    _pg_url("postgres", SECRET, port=1),  # nothing listens: connection refused
    _pg_url("postgres", SECRET, host="203.0.113.1"),  # TEST-NET-3: unroutable, times out
], ids=["refused", "unroutable"])
def test_unreachable_database_is_one_line_without_password(url):
    with pytest.raises(StorageError) as err:
        open_storage(url)
    text = str(err.value)
    assert SECRET not in text and "***" in text and "\n" not in text
    assert text.startswith("cannot open storage postgresql+psycopg://postgres:***@")


def test_rejected_login_is_one_line_without_password():
    # The local server trusts every password, so the rejection exercised here is an unknown
    # role; the driver's message goes through the same scrubbing either way.
    require_pg()
    with pytest.raises(StorageError) as err:
        open_storage(_pg_url("no_such_role_kd", SECRET))
    text = str(err.value)
    assert SECRET not in text and "no_such_role_kd" in text and "\n" not in text


@pytest.mark.slow
def test_cli_bad_database_is_one_line_exit_2(tmp_path):
    study = tiny_study(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "kdsearch.cli", "run-study", str(study), "--cache-dir",
         str(tmp_path / "c"), "--storage", _pg_url("kd", SECRET, port=1)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kdsearch: error:")]
    assert len(errors) == 1 and "cannot open storage" in errors[0]


def test_pg_server_url_is_postgresql():
    assert PG_SERVER.startswith("postgresql")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_creating_the_tables_together(backend, tmp_path):
    """Found by the three-worker test: Optuna's table creation races ("UNIQUE constraint
    failed: alembic_version"); open_storage takes turns under a database lock."""
    import threading

    with scratch_storage(backend, tmp_path) as url:
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_one() -> None:
            barrier.wait()
            try:
                open_storage(url).engine.dispose()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)  # a hang guard
        assert not errors, errors


def test_read_only_opening_never_creates_a_sqlite_file_or_its_tables(tmp_path):
    from kdsearch.study.storage import load_study

    missing, empty = tmp_path / "missing.db", tmp_path / "empty.db"
    empty.touch()
    for path in (missing, empty):
        with pytest.raises(StorageError, match=r"no kdsearch studies in sqlite:///"):
            load_study(f"sqlite:///{path}", "tiny")
    assert not missing.exists() and empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]  # no -wal, no lock files


def test_read_only_opening_never_creates_postgresql_tables():
    from sqlalchemy import create_engine, inspect

    from kdsearch.study.storage import load_study

    with scratch_pg() as url:
        with pytest.raises(StorageError, match="no kdsearch studies in postgresql"):
            load_study(url, "tiny")
        engine = create_engine(url)
        assert inspect(engine).get_table_names() == []
        engine.dispose()


def test_an_sqlite_file_found_locked_while_opening_is_tried_again_then_one_line(monkeypatch, tmp_path):
    """Optuna's set-up can meet a lock it does not wait for (three workers under load): the
    open is tried again, and a file that stays locked ends in one line."""
    from kdsearch.errors import StorageError
    from kdsearch.study import storage as st

    calls = []

    def locked_twice(*args):
        calls.append(args)
        if len(calls) <= 2:
            raise st._Locked()
        return "storage"

    monkeypatch.setattr(st, "_open", locked_twice)
    monkeypatch.setattr(st.time, "sleep", lambda s: None)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    assert st.open_storage(url) == "storage" and len(calls) == 3

    def always_locked(*args):
        raise st._Locked()

    monkeypatch.setattr(st, "_open", always_locked)
    with pytest.raises(StorageError, match="stayed locked by other processes") as e:
        st.open_storage(url)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_opening_leaves_tables_being_created_to_their_creator(backend, tmp_path):
    """Found by three `run-study` processes started together: a read-only probe opened the
    tables while another process was creating them (before Optuna's alembic stamp, its last
    step) and stamped them too ("UNIQUE constraint failed: alembic_version"). Tables without
    the stamp are someone else's work in progress: no studies yet, and nothing written."""
    from sqlalchemy import create_engine, text

    from kdsearch.study.storage import NoStudiesError, load_study, probe_storage

    with scratch_storage(backend, tmp_path) as url:
        open_storage(url).engine.dispose()  # the tables, stamped
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM alembic_version"))  # as they are before the stamp
        assert probe_storage(url) is None
        with pytest.raises(NoStudiesError):
            load_study(url, "tiny")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar() == 0
        engine.dispose()
        open_storage(url).engine.dispose()  # the creator's own turn stamps them
        assert probe_storage(url) is not None
