"""Settings are resolved once, at the command line; nothing below it reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kdsearch.errors import UsageError
from kdsearch.options import DEFAULT_STORAGE, Heartbeats, from_environment
from tests.helpers import REPO


def test_defaults_without_environment(tmp_path):
    env = from_environment({"XDG_CACHE_HOME": str(tmp_path)})
    assert env.storage == DEFAULT_STORAGE
    assert env.cache_dir == tmp_path / "kdsearch"
    assert env.data_home == tmp_path / "kdsearch" / "data"
    assert env.heartbeats == Heartbeats(20, 60)
    assert not env.offline and env.threads is None and env.artifact_dir is None


def test_every_variable_is_read(tmp_path):
    env = from_environment({
        "KDSEARCH_STORAGE": "postgresql+psycopg://u@h/db", "KDSEARCH_DATA_DIR": str(tmp_path / "d"),
        "KDSEARCH_CACHE_DIR": str(tmp_path / "c"), "KDSEARCH_OFFLINE": "1",
        "KDSEARCH_THREADS": "3", "KDSEARCH_ARTIFACT_DIR": str(tmp_path / "a"),
        "KDSEARCH_HEARTBEAT": "2"})
    assert env.storage == "postgresql+psycopg://u@h/db"
    assert (env.data_home, env.cache_dir, env.artifact_dir) == (
        tmp_path / "d", tmp_path / "c", tmp_path / "a")
    assert env.offline and env.threads == 3
    assert env.heartbeats == Heartbeats(2, 6)  # grace: three heartbeats by default


@pytest.mark.parametrize("env, message", [
    ({"KDSEARCH_HEARTBEAT": "soon"}, "KDSEARCH_HEARTBEAT: expected a whole number"),
    ({"KDSEARCH_HEARTBEAT": "10", "KDSEARCH_GRACE": "5"}, "must exceed"),
    ({"KDSEARCH_THREADS": "0"}, "KDSEARCH_THREADS: expected a positive integer"),
    ({"KDSEARCH_OFFLINE": "maybe"}, "KDSEARCH_OFFLINE: expected 1 or 0"),
])
def test_nonsense_is_one_line(env, message):
    with pytest.raises(UsageError, match=message) as e:
        from_environment(env)
    assert "\n" not in str(e.value)


def _reads_environment(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            return True
    return False


@pytest.mark.slow
def test_nothing_below_the_command_line_reads_the_environment():
    readers = sorted(str(p.relative_to(REPO)) for p in (REPO / "kdsearch").rglob("*.py")
                     if _reads_environment(p))
    # __init__.py only sets OMP_WAIT_POLICY before torch loads (for the CLI and notebooks)
    assert readers == ["kdsearch/__init__.py", "kdsearch/cli.py"]
