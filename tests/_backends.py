"""Storage back-ends for tests: a scratch SQLite file, and a scratch database on the real
PostgreSQL server (env KDSEARCH_TEST_PG, default the local trust-auth server).

The PostgreSQL tests never skip in CI (env CI set): an unreachable server fails them there.
Outside CI they skip with the reason, so a laptop without PostgreSQL can still run the suite.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_SERVER = os.environ.get("KDSEARCH_TEST_PG",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def _admin_conninfo() -> str:
    from sqlalchemy.engine import make_url

    u = make_url(PG_SERVER)
    parts = {"host": u.host or "127.0.0.1", "port": u.port or 5432,
             "user": u.username or "postgres", "dbname": u.database or "postgres",
             "password": u.password, "connect_timeout": 5}
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


def pg_available() -> str | None:
    """None if the server answers, else why not."""
    import psycopg

    try:
        psycopg.connect(_admin_conninfo(), autocommit=True).close()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def require_pg() -> None:
    why = pg_available()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL at {PG_SERVER} unreachable in CI ({why}); .ci/run starts it")
    pytest.skip(f"PostgreSQL at {PG_SERVER} unreachable ({why}); set CI=1 to make this fail")


@contextmanager
def scratch_pg(prefix: str = "kd_test"):
    """A fresh database on the server, dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    require_pg()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_SERVER).set(drivername="postgresql+psycopg", database=name) \
            .render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin_conninfo(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_storage(kind: str, tmp_path: Path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
    else:
        with scratch_pg() as url:
            yield url


TINY_STUDY = """
description = "tests: a few-second study"
seed = 0

[data]
dataset = "synthetic"
val_size = 100
[data.synthetic]
n_train = 400
n_test = 100
num_classes = 3
noise = 1.0

[teacher]
family = "mlp"
hidden = [32]

[teacher.train]
epochs = 1
batch_size = 64

[student]
family = "mlp"
depth = { low = 1, high = 2 }
width = { choices = [4, 8, 16] }

[student.train]
epochs = EPOCHS
batch_size = 32

[search]
n_trials = N_TRIALS
sampler = "random"
"""


def tiny_study(folder: Path, epochs: int = 2, name: str = "tiny", n_trials: int = 3) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_STUDY.replace("EPOCHS", str(epochs)).replace("N_TRIALS", str(n_trials)))
    return path
