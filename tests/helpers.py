"""The one helper module of the tests: tiny studies, scratch storages and CLI runs.

Tiny studies train on synthetic 8x8 images in a second or two on one CPU core. Storage
back-ends: a scratch SQLite file, and a scratch database on the real PostgreSQL server (env
KDSEARCH_TEST_PG, default the local trust-auth server). The PostgreSQL tests never skip in CI
(env CI set): an unreachable server fails them there. Outside CI they skip with the reason, so a
laptop without PostgreSQL can still run the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


def cli_argv(*args: str) -> list[str]:
    """The command line of the CLI in a fresh interpreter."""
    return [sys.executable, "-m", "kdsearch.cli", *map(str, args)]


def cli_env(extra: dict | None = None) -> dict:
    """The environment for a CLI process: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


# Storage back-ends

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


# Tiny studies

# The tiny MLP study, table by table: every tiny study of the tests is this with tables swapped.
TINY_TABLES = {
    "data": 'dataset = "synthetic"\nval_size = 100\n'
            "synthetic = { n_train = 400, n_test = 100, num_classes = 3, noise = 1.0 }",
    "teacher": 'family = "mlp"\nhidden = [32]',
    "teacher.train": "epochs = 1\nbatch_size = 64",
    "student": 'family = "mlp"\ndepth = { low = 1, high = 2 }\nwidth = { choices = [4, 8, 16] }',
    "student.train": "epochs = 2\nbatch_size = 32",
    "search": 'n_trials = 3\nsampler = "random"',
}


def study_text(description: str | None = "tests: a few-second study", seed: int | None = 0,
               **tables: str | None) -> str:
    """The one builder of tiny study files: TINY_TABLES with tables replaced by keyword
    (`student_train=` is [student.train], `search_early_stopping=` [search.early_stopping]),
    new ones added, and a table given as None left out. Trains in a second or two."""
    merged = dict(TINY_TABLES)
    for key, body in tables.items():
        merged[key.replace("_", ".", 1) if key not in merged else key] = body
    head = (f'description = "{description}"\n' if description is not None else "") + \
        (f"seed = {seed}\n" if seed is not None else "")
    return head + "".join(f"\n[{name}]\n{body.strip()}\n" for name, body in merged.items()
                          if body is not None)


def mlp_study_text(epochs: int = 2, n_trials: int = 3, **tables: str | None) -> str:
    """The tiny MLP study with its student's epochs and the trial count set, batches of 32;
    `tables` go on to study_text."""
    return study_text(**{"student_train": f"epochs = {epochs}\nbatch_size = 32",
                         "search": f'n_trials = {n_trials}\nsampler = "random"', **tables})


def tiny_study(folder: Path, epochs: int = 2, name: str = "tiny", n_trials: int = 3,
               objectives: list[str] | None = None) -> Path:
    """mlp_study_text as a file; `objectives` sets `[search] objectives` (default: left out)."""
    path = folder / f"{name}.toml"
    text = mlp_study_text(epochs=epochs, n_trials=n_trials)
    if objectives is not None:  # [search] is the file's last table
        text += "objectives = [" + ", ".join(f'"{o}"' for o in objectives) + "]\n"
    path.write_text(text)
    return path


def tiny_study_text(family: str = "cnn", n_trials: int = 2, **tables: str | None) -> str:
    """A tiny study of conv (or MLP) students on 1x8x8 images, distilled with a searched T and
    alpha, sampled by TPE; `tables` go on to study_text."""
    extra = "kernel = { choices = [3, 5] }\nconvs_per_block = 1\ndense = 0\n" if family == "cnn" else ""
    return study_text(**{
        "description": "tiny test study",
        "data": 'dataset = "synthetic"\nval_size = 100\nsynthetic = { n_train = 400, n_test = 100, '
                "channels = 1, height = 8, width = 8, num_classes = 3, noise = 1.5 }",
        "teacher_train": "epochs = 2\nbatch_size = 64\nlr = 0.003",
        "student": f'family = "{family}"\ndepth = {{ low = 1, high = 2 }}\n'
                   f"width = {{ choices = [4, 8] }}\n{extra}"
                   "temperature = { low = 1.0, high = 10.0, log = true }\nalpha = { low = 0.0, high = 1.0 }",
        "student_train": "epochs = 2\nbatch_size = 64\nlr = 0.003",
        "search": f"n_trials = {n_trials}",
        **tables})


# The conv study's tables: 800 noisier 8x8 images of 4 classes and a one-conv teacher trained 3
# epochs, for the tests that need a conv teacher: study_text(**CNN_TABLES, student=..., ...).
CNN_TABLES = {
    "data": 'dataset = "synthetic"\nval_size = 200\n'
            "synthetic = { n_train = 800, n_test = 200, num_classes = 4, noise = 2.5 }",
    "teacher": 'family = "cnn"\nconvs = [{ channels = 8, kernel = 3, padding = "same", pool = true }]\n'
               "dense = [32]",
    "teacher_train": "epochs = 3\nbatch_size = 64\nlr = 0.003",
}
# The same with a searched conv student, 5 random trials of 2 epochs.
CNN_SEARCH_TABLES = {
    **CNN_TABLES,
    "student": 'family = "cnn"\ndepth = { low = 1, high = 2 }\nconvs_per_block = 1\n'
               "width = { choices = [2, 4] }\nkernel = { choices = [3, 5] }\n"
               "dense = { choices = [0, 16] }",
    "student_train": "epochs = 2\nbatch_size = 64\nlr = 0.003",
    "search": 'n_trials = 5\nsampler = "random"',
}

RESNET_TEACHER = 'family = "resnet"\nblocks = [1, 1]\nbase_width = 8'
STAGED_RESNET = """family = "resnet"
stages = { low = 1, high = 2 }
blocks = 1
base_width = { choices = [4, 6] }
width_growth = 2.0
kernel = 3
shortcut = { choices = ["A", "B"] }"""
STAGED_CHOICE = """family = { choices = ["resnet", "mobilenet"] }

[student.resnet]
stages = 2
blocks = { low = 1, high = 2 }
base_width = 4
width_growth = 1.5
kernel = 3

[student.mobilenet]
stages = 2
blocks = 1
base_width = { choices = [4, 8] }
width_growth = 2.0
kernel = { choices = [3, 5] }
expansion = { choices = [2, 4] }"""


def tiny_staged_study_text(student: str = STAGED_RESNET, n_trials: int = 2, **tables) -> str:
    """A tiny study of the residual families on CNN_TABLES' data: a resnet teacher, resnet (or,
    with STAGED_CHOICE, resnet-or-mobilenet) students trained with SGD, onecycle, label smoothing
    and a searched lr. `tables` go on to study_text."""
    return study_text(**{
        **CNN_TABLES,
        "teacher": RESNET_TEACHER,
        "student": "temperature = { low = 1.0, high = 10.0, log = true }\n"
                   f"alpha = {{ low = 0.0, high = 1.0 }}\n{student}",
        "student_train": 'epochs = 1\nbatch_size = 64\noptimizer = "sgd"\n'
                         "lr = { low = 0.02, high = 0.2, log = true }\nlr_schedule = \"onecycle\"\n"
                         "label_smoothing = 0.1\nweight_decay = 5e-4\ndecay_norms_and_biases = false",
        "search": f'n_trials = {n_trials}\nsampler = "random"',
        **tables})


def kdsearch(*args: str, check: bool = True, timeout: float = 300, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process with this checkout first on the path."""
    proc = subprocess.run(cli_argv(*args), capture_output=True, text=True, cwd=cwd,
                          env=cli_env(env), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdsearch {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def teacher_summary(**changes) -> dict:
    """A study's teacher attribute, as `kdsearch run-study` writes it, for hand-made studies."""
    from kdsearch.record import TeacherRecord

    values = dict(key="k", arch={"family": "mlp", "hidden": [64]}, description="mlp 64",
                  params=1000, macs=10_000, val_accuracy=0.9, test_accuracy=0.88,
                  train_seconds=1.0, epochs=1, dataset="synthetic", data_identity="d",
                  input_shape=(1, 8, 8), num_classes=2, recipe={}, seed=0,
                  created="2026-01-01T00:00:00Z")
    return TeacherRecord(**{**values, **changes}).summary()


def hand_study(trials: list[tuple[float, int, int, float]], family: str = "cnn",
               storage: str | None = None, name: str = "hand", teacher: dict | None = None,
               sampler: str = "tpe"):
    """A study built by hand, no training, as run-study stores it: for reports and plots.

    Each trial is (val acc, params, kernel, alpha): a two-layer CNN, test accuracy 0.01 lower,
    MACs ten times the params. The teacher defaults to `teacher_summary` at val acc 0.97.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    from kdsearch.record import STUDY_DEFINITION, TEACHER, set_study_attr

    study = optuna.create_study(directions=["maximize", "minimize"], study_name=name,
                                storage=storage)
    study.set_metric_names(["val_accuracy", "params"])
    set_study_attr(study, TEACHER, teacher or teacher_summary(
        description="cnn teacher", val_accuracy=0.97, test_accuracy=0.96))
    set_study_attr(study, STUDY_DEFINITION, {"student": {"space": {"family": family}},
                                             "search": {"sampler": sampler}})
    for acc, params, kernel, alpha in trials:
        arch = {"family": "cnn", "convs": [{"channels": 4, "kernel": kernel}] * 2, "dense": []}
        study.add_trial(create_trial(
            values=[acc, params],
            params={"kernel": kernel, "alpha": alpha, "temperature": 2.0},
            distributions={"kernel": CategoricalDistribution([3, 5]),
                           "alpha": FloatDistribution(0.0, 1.0),
                           "temperature": FloatDistribution(1.0, 20.0)},
            user_attrs={"val_accuracy": acc, "test_accuracy": acc - 0.01, "params": params,
                        "macs": params * 10, "arch_summary": f"cnn k{kernel} {params}",
                        "architecture": arch, "n_layers": 2, "epochs": 1}))
    return study


def view_data(n: int = 96):
    """Random 3x6x6 images of 4 classes as a Dataset, and a linear teacher on their pixels whose
    outputs depend on position and orientation, so a wrong fixed view shows in its logits."""
    import torch
    from torch import nn

    from kdsearch.training.data import Dataset, Split

    torch.manual_seed(0)
    shape, classes = (3, 6, 6), 4
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
    y = torch.randint(0, classes, (n,))
    data = Dataset("t", Split(x, y), Split(x[:16], y[:16]), Split(x[:16], y[:16]), classes,
                   (0.5,) * 3, (0.25,) * 3, "t")
    return data, nn.Sequential(nn.Flatten(), nn.Linear(3 * 36, classes)).eval()


def benchmark_module(name: str):
    """A script of benchmarks/ (not a package) imported as a module, for its tests."""
    import importlib.util
    import sys

    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
