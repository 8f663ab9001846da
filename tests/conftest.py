"""Fixtures shared by every test; the helpers themselves live in tests/helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("KDSEARCH_DATA_DIR", "/nonexistent-kdsearch-data")  # tests never download
# As the CLI and the benchmarks do, before anything loads torch's OpenMP: on a machine whose
# other cores are busy, spinning OpenMP threads made the in-process runs of the tests up to 6x
# slower (the smoke study: 51 s, 8 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
