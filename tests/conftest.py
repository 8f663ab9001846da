"""Fixtures shared by every test; the helpers themselves live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import tiny_study_text

os.environ.setdefault("KDSEARCH_DATA_DIR", "/nonexistent-kdsearch-data")  # tests never download


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_study_text())
    return path
