"""Shared fixtures: tiny studies on synthetic data, each in its own temporary folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("KDSEARCH_DATA_DIR", "/nonexistent-kdsearch-data")  # tests never download

TINY_STUDY = """
description = "tiny test study"
seed = 0

[data]
dataset = "synthetic"
val_size = 100
synthetic = {{ n_train = 400, n_test = 100, channels = 1, height = 8, width = 8, num_classes = 3, noise = 1.5 }}

[teacher]
family = "mlp"
hidden = [32]

[teacher.train]
epochs = 2
batch_size = 64
lr = 0.003

[student]
family = "{family}"
depth = {{ low = 1, high = 2 }}
width = {{ choices = [4, 8] }}
{extra}
temperature = {{ low = 1.0, high = 10.0, log = true }}
alpha = {{ low = 0.0, high = 1.0 }}

[student.train]
epochs = 2
batch_size = 64
lr = 0.003

[search]
n_trials = {n_trials}
"""


def tiny_study_text(family: str = "cnn", n_trials: int = 2) -> str:
    extra = "kernel = { choices = [3, 5] }\nconvs_per_block = 1\ndense = 0" if family == "cnn" else ""
    return TINY_STUDY.format(family=family, extra=extra, n_trials=n_trials)


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_study_text())
    return path
