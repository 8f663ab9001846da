"""Fixtures shared by every test; the helpers themselves live in tests/helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("KDSEARCH_DATA_DIR", "/nonexistent-kdsearch-data")  # tests never download

