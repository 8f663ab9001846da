"""The repository's root holds what a newcomer needs and nothing else.

A stray file (a tracked, empty `std.out` was one) is refused here: a new root entry has to be
added to ROOT on purpose, with the review that comes with it.
"""

import shutil
import subprocess

import pytest

from tests.helpers import REPO

ROOT = {
    ".ci", ".gitignore", "Dockerfile", "README.md", "benchmarks", "docker-compose.yml", "docs",
    "examples", "kdsearch", "pyproject.toml", "studies", "teachers", "tests",
}


def _git(*args: str) -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing tracked to check")
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line]


def test_only_known_entries_are_tracked_at_the_root():
    tracked = {path.split("/")[0] for path in _git("ls-files")}
    assert tracked - ROOT == set(), "stray root entries: add them to ROOT on purpose, or move them"
    assert {"README.md", "pyproject.toml", "kdsearch", "tests"} <= tracked


def test_nothing_untracked_and_unignored_waits_at_the_root():
    """What `git add -A` would pick up at the root (a run's output, a log) must be ignored or
    known: `*.db` and the test artifacts are in .gitignore."""
    stray = {path.split("/")[0] for path in _git("ls-files", "--others", "--exclude-standard")}
    assert stray - ROOT == set()
