"""Every setting a command runs with, resolved once at the command line and passed down.

Arguments win over environment variables, which win over defaults. `from_environment` is the
only reader of environment variables in kdsearch, and only `cli.py` calls it (with
`os.environ`): modules below take what they need from an `Options`, so a worker, a test or a
notebook can run any of them with settings it chose, and nothing deep inside changes its
behaviour because of a variable set far away.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kdsearch.errors import UsageError

DEFAULT_STORAGE = "sqlite:///kdsearch.db"  # in the working directory
HEARTBEAT_INTERVAL = 20  # seconds between a running trial's heartbeats
GRACE_FACTOR = 3  # a trial silent for this many heartbeats is marked FAIL and retried


@dataclass(frozen=True)
class Heartbeats:
    """How workers notice each other's death: a running trial beats every `interval` seconds,
    and one silent for `grace` seconds is failed and queued for retry."""

    interval: int = HEARTBEAT_INTERVAL
    grace: int = GRACE_FACTOR * HEARTBEAT_INTERVAL


@dataclass(frozen=True)
class Environment:
    """What the environment says, before any argument overrides it."""

    storage: str = DEFAULT_STORAGE
    data_home: Path = Path("~/.cache/kdsearch/data")  # KDSEARCH_DATA_DIR: data sets live here
    cache_dir: Path = Path("~/.cache/kdsearch")  # teachers, logits, decoded image folders
    offline: bool = False  # never attempt a download
    threads: int | None = None  # torch threads per process; None: all cores
    artifact_dir: Path | None = None  # shared teacher store for workers on several machines
    heartbeats: Heartbeats = field(default_factory=Heartbeats)


@dataclass(frozen=True)
class Options:
    """The settings of one `run-study`, `teacher`, `compress` or `evaluate` command."""

    storage: str = DEFAULT_STORAGE
    study_name: str = ""
    n_trials: int = 1  # the study's total target of finished trials
    timeout: float | None = None  # seconds after which no new trial starts
    data_dir: Path | None = None  # --data-dir: overrides an imagefolder study's own path
    data_home: Path = Path("~/.cache/kdsearch/data")  # where named data sets are (or download to)
    cache_dir: Path = Path("~/.cache/kdsearch")
    offline: bool = False
    device: str = "auto"
    threads: int = 1
    heartbeats: Heartbeats = field(default_factory=Heartbeats)
    artifact_dir: Path | None = None
    workers: int = 1


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name}: expected a whole number of seconds, found {text!r}") from None
    if not 1 <= value <= 86_400:
        raise UsageError(f"{name}: expected seconds in [1, 86400], found {value}")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    text = env.get(name, "")
    return Path(text).expanduser() if text else None


def from_environment(env: Mapping[str, str]) -> Environment:
    """Read every KDSEARCH_* variable (and XDG_CACHE_HOME) once; one-line errors."""
    cache_home = _path(env, "XDG_CACHE_HOME") or Path.home() / ".cache"
    interval = _seconds(env, "KDSEARCH_HEARTBEAT", HEARTBEAT_INTERVAL)
    grace = _seconds(env, "KDSEARCH_GRACE", GRACE_FACTOR * interval)
    if grace <= interval:
        raise UsageError(f"KDSEARCH_GRACE ({grace} s) must exceed KDSEARCH_HEARTBEAT "
                         f"({interval} s), or live trials would be failed")
    threads_text = env.get("KDSEARCH_THREADS", "")
    if threads_text and not (threads_text.isdigit() and int(threads_text) > 0):
        raise UsageError(f"KDSEARCH_THREADS: expected a positive integer, found {threads_text!r}")
    offline_text = env.get("KDSEARCH_OFFLINE", "")
    if offline_text not in ("", "0", "1", "true", "false", "yes", "no"):
        raise UsageError(f"KDSEARCH_OFFLINE: expected 1 or 0, found {offline_text!r}")
    return Environment(
        storage=env.get("KDSEARCH_STORAGE") or DEFAULT_STORAGE,
        data_home=_path(env, "KDSEARCH_DATA_DIR") or cache_home / "kdsearch" / "data",
        cache_dir=_path(env, "KDSEARCH_CACHE_DIR") or cache_home / "kdsearch",
        offline=offline_text in ("1", "true", "yes"),
        threads=int(threads_text) if threads_text else None,
        artifact_dir=_path(env, "KDSEARCH_ARTIFACT_DIR"),
        heartbeats=Heartbeats(interval, grace),
    )


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def device_name(text: str) -> str:
    """A device as typed (`auto`, `cpu`, `cuda`, `cuda:N`), checked for form only: the command
    line refuses `--device gpu` before anything loads."""
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return text
    raise UsageError(f"device: expected {DEVICE_CHOICES}, found {text!r}")


def select_device(text: str) -> str:
    """Check a device against this machine and make a `cuda:N` torch's current device, so that
    code asking for the current GPU (synchronisation, bf16 support) lands on the chosen one.

    Checked here, once, because a missing GPU or index otherwise surfaces deep in training
    as a multi-line CUDA error.
    """
    name = device_name(text)
    if not name.startswith("cuda"):
        return name
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UsageError(f"--device {name}: no CUDA device is available (use --device cpu)")
    index = int(name.partition(":")[2] or torch.cuda.current_device())
    if index >= count:
        raise UsageError(f"--device {name}: this machine has {count} CUDA device"
                         f"{'s' * (count > 1)} (cuda:0 to cuda:{count - 1})")
    torch.cuda.set_device(index)
    return name
