"""Tiny study files and runs shared by the dashboard, plots, sweep and compress tests.

Everything here trains on synthetic 8x8 images in a second or two on one CPU core.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"

TINY_DATA = """
[data]
dataset = "synthetic"
val_size = 200

[data.synthetic]
n_train = 800
n_test = 200
num_classes = 4
noise = 2.5

[teacher]
family = "cnn"
convs = [{ channels = 8, kernel = 3, padding = "same", pool = true }]
dense = [32]

[teacher.train]
epochs = 3
batch_size = 64
lr = 0.003
"""

TINY_SEARCH = TINY_DATA + """
[student]
family = "cnn"
depth = { low = 1, high = 2 }
convs_per_block = 1
width = { choices = [2, 4] }
kernel = { choices = [3, 5] }
dense = { choices = [0, 16] }

[student.train]
epochs = 2
batch_size = 64
lr = 0.003

[search]
n_trials = 5
sampler = "random"
"""


def write_study(folder: Path, name: str, body: str, description: str = "a tiny test study") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'description = "{description}"\nseed = 0\n{body}')
    return path


def kdsearch(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process with this checkout first on the path."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "kdsearch.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdsearch {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc
