"""What storage, reports and memory cost: per-trial storage overhead, export of 1,000 trials,
peak memory of a CIFAR-10 trial.

    python benchmarks/bench_storage.py [--data-dir ../shared/data/cifar10-jpeg] [--postgres URL]

1. Storage overhead per trial: `study.optimize` with an objective that writes exactly what a
   kdsearch trial writes (its user attributes, the validation curve once per epoch for 10
   epochs) and trains nothing, plus run-study's per-trial callback (it counts finished
   trials), on SQLite and, with --postgres, on PostgreSQL. Reported: ms per trial at the
   start and after 1,000 trials are stored (the callback's count grows with the study).
2. `kdsearch export` (CSV, summary, HTML, PNG and SVG) and `kdsearch best` on a study of
   1,000 stored trials, each timed as the command a user runs (a fresh process).
3. Peak resident memory of a process that does what a CIFAR-10 worker does for one trial:
   load the 50,000 + 10,000 images (from the data cache, decoded once beforehand), hold a
   teacher's logits, build the seed's student and train it for one epoch through
   `make_objective`, with validation and test accuracy. Random images of the same shape when
   no CIFAR-10 folder is given (same memory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from kdsearch.study.runner import DIRECTIONS, OBJECTIVES, finished_count  # noqa: E402
from kdsearch.study.storage import open_storage  # noqa: E402

EPOCHS = 10
ARCH = {
    "family": "cnn",
    "convs": [
        {"channels": 8, "kernel": 3, "padding": "same", "pool": False},
        {"channels": 8, "kernel": 3, "padding": "valid", "pool": True},
    ],
    "dense": [128],
    "conv_dropout": 0.0,
    "dropout": 0.0,
}
TEACHER = {
    "description": "cnn 32k3-32k3vp-64k3-64k3vp dense 512",
    "params": 1_250_858,
    "macs": 20_000_000,
    "val_accuracy": 0.75,
    "test_accuracy": 0.74,
    "key": "bench",
}


def trial_attrs(rng: random.Random) -> tuple[dict, dict, dict, float, int]:
    params = rng.randint(2_000, 500_000)
    acc = min(0.99, 0.3 + 0.1 * (params / 1000) ** 0.25 + rng.gauss(0, 0.03))
    curve = [round(acc * (1 - 0.5 ** (e + 1)), 4) for e in range(EPOCHS)]
    attrs = {
        "architecture": ARCH,
        "arch_summary": "cnn 8k3-8k3vp dense 128",
        "n_layers": 2,
        "params": params,
        "macs": params * 20,
        "val_curve": curve,
        "val_accuracy": curve[-1],
        "test_accuracy": curve[-1] - 0.01,
        "train_seconds": 12.3,
        "epochs": EPOCHS,
    }
    p = {
        "depth": rng.randint(1, 3),
        "width": rng.choice([4, 8, 16, 32]),
        "temperature": rng.uniform(1, 20),
        "alpha": rng.random(),
    }
    dists = {
        "depth": IntDistribution(1, 3),
        "width": CategoricalDistribution([4, 8, 16, 32]),
        "temperature": FloatDistribution(1, 20, log=True),
        "alpha": FloatDistribution(0, 1),
    }
    return attrs, p, dists, curve[-1], params


def new_study(url: str, name: str) -> optuna.Study:
    storage = open_storage(url, heartbeats=None, read_only=False)
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    study = optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS))
    study.set_metric_names(list(OBJECTIVES))
    study.set_user_attr("teacher", TEACHER)
    return study


def fill(study: optuna.Study, n: int, seed: int = 0) -> None:
    """Add n finished trials at once (bulk, untimed)."""
    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        attrs, p, dists, acc, params = trial_attrs(rng)
        trials.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=[acc, float(params)],
                params=p,
                distributions=dists,
                user_attrs=attrs,
            )
        )
    study.add_trials(trials)


def per_trial_ms(study: optuna.Study, n: int) -> float:
    """Mean wall ms per trial of writing what a kdsearch trial writes, nothing trained."""
    rng = random.Random(1)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        attrs, _, _, acc, params = trial_attrs(rng)
        trial.suggest_int("depth", 1, 3)
        trial.suggest_categorical("width", [4, 8, 16, 32])
        trial.suggest_float("temperature", 1, 20, log=True)
        trial.suggest_float("alpha", 0, 1)
        for key in ("architecture", "arch_summary", "n_layers", "params", "macs"):
            trial.set_user_attr(key, attrs[key])
        for e in range(EPOCHS):
            trial.set_user_attr("val_curve", attrs["val_curve"][: e + 1])
        for key in ("val_accuracy", "test_accuracy", "train_seconds", "epochs"):
            trial.set_user_attr(key, attrs[key])
        return acc, float(params)

    def after_trial(study: optuna.Study, trial) -> None:
        finished_count(study)

    study.sampler = optuna.samplers.RandomSampler(seed=0)
    start = time.perf_counter()
    study.optimize(objective, n_trials=n, callbacks=[after_trial])
    return (time.perf_counter() - start) * 1000 / n


def storage_overhead(url: str, label: str) -> None:
    study = new_study(url, "bench_overhead")
    empty = per_trial_ms(study, 50)
    fill(study, 1000)
    full = per_trial_ms(study, 50)
    print(
        f"storage {label}: {empty:.1f} ms per trial in a new study, {full:.1f} ms per trial "
        f"with 1,000 trials stored (10 epochs of val_curve writes each)",
        flush=True,
    )


def timed_cli(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kdsearch.cli", *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"  (exit {proc.returncode}: {proc.stderr.strip()[-300:]})")
    return seconds


def export_cost(work: Path) -> None:
    url = f"sqlite:///{work}/export.db"
    study = new_study(url, "bench_export")
    fill(study, 1000)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    best = timed_cli(["best", "bench_export", "--storage", url], env)
    export = timed_cli(
        ["export", "bench_export", "--storage", url, "--out", str(work / "out")], env
    )
    files = sorted(p.name for p in (work / "out").iterdir())
    print(
        f"export of 1,000 trials: {export:.2f} s ({', '.join(files)}); best: {best:.2f} s "
        f"(each a fresh process, interpreter start included)",
        flush=True,
    )


MEMORY_CHILD = r"""
import json, os, resource, sys, time
import torch, optuna
from kdsearch.training.data import load_data, Dataset
from kdsearch.spec import parse_study
from kdsearch.training.teacher import Teacher
from kdsearch.search.objective import make_objective
from kdsearch.architecture import CNNArch
data_dir, cache = sys.argv[1], sys.argv[2]
text = open(sys.argv[3]).read()
spec = parse_study(text, __import__("pathlib").Path("mem.toml"))
if data_dir != "-":
    data = load_data(spec.data, __import__("pathlib").Path(data_dir), __import__("pathlib").Path(cache))
else:
    g = torch.Generator().manual_seed(0)
    def split(n):
        from kdsearch.training.data import Split
        return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                     torch.randint(0, 10, (n,), generator=g))
    data = Dataset("random", split(45000), split(5000), split(10000), 10, (0.5,) * 3, (0.25,) * 3, "r")
after_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
logits = {s: torch.randn(len(data.split(s)), 10) for s in ("train", "val", "test")}
from kdsearch.training.models import build_model
teacher = Teacher(build_model(spec.teacher, data.input_shape, 10, data.mean, data.std), spec.teacher,
                  logits, {}, None, False)
study = optuna.create_study(directions=["maximize", "minimize"])
t = time.perf_counter()
study.optimize(make_objective(spec, data, teacher, torch.device("cpu")), n_trials=1)
secs = time.perf_counter() - t
tr = study.trials[0]
print(json.dumps({"after_data_kb": after_data, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "state": tr.state.name, "seconds": secs, "params": tr.user_attrs.get("params"),
                  "n_train": len(data.train)}))
"""

MEMORY_STUDY = """
[data]
dataset = "cifar10"
val_size = 5000
[teacher]
family = "cnn"
convs = [{ channels = 32, kernel = 3 }, { channels = 32, kernel = 3, padding = "valid", pool = true },
         { channels = 64, kernel = 3 }, { channels = 64, kernel = 3, padding = "valid", pool = true }]
dense = [512]
[student]
family = "cnn"
depth = DEPTH
convs_per_block = 2
width = WIDTH
kernel = 3
dense = DENSE
[student.train]
epochs = 1
batch_size = 128
[search.early_stopping]
enabled = false
"""


# (label, depth, width, dense): the seed's student, and the widest student cifar_compress allows
MEMORY_STUDENTS = [("seed student", 2, 8, 128), ("widest student, 32-32-64-64-128-128", 3, 32, 64)]


def memory_cost(data_dir: Path | None, work: Path, threads: int | None) -> None:
    cache = work / "cache"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads:
        env["KDSEARCH_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    if data_dir is not None:  # decode the JPEGs once into the data cache, as a first run would
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; "
                "from kdsearch.training.data import load_data; from kdsearch.spec import DataSpec; "
                "load_data(DataSpec(dataset='cifar10'), Path(sys.argv[1]), Path(sys.argv[2]))",
                str(data_dir),
                str(cache),
            ],
            env=env,
            check=True,
        )
        print(
            f"(decoded CIFAR-10 JPEGs into the data cache in {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    for label, depth, width, dense in MEMORY_STUDENTS:
        study_file = work / "mem.toml"
        study_file.write_text(MEMORY_STUDY.replace("DEPTH", str(depth))
                              .replace("WIDTH", str(width)).replace("DENSE", str(dense)))
        proc = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(data_dir or "-"), str(cache), str(study_file)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"CIFAR-10 trial ({label}, {r['params']:,} params, 1 epoch on {r['n_train']:,} "
            f"images, {r['state'].lower()} in {r['seconds']:.1f} s): peak RSS "
            f"{r['peak_kb'] / 1024:.0f} MiB ({r['after_data_kb'] / 1024:.0f} MiB after loading "
            "the data)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, help="CIFAR-10 ImageFolder for the memory figure")
    ap.add_argument("--postgres", metavar="URL", help="also measure this PostgreSQL storage")
    ap.add_argument("--threads", type=int, help="torch threads for the memory run")
    ap.add_argument("--skip", nargs="*", default=[], choices=["storage", "export", "memory"])
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="kd_bench_storage_"))
    if "storage" not in args.skip:
        storage_overhead(f"sqlite:///{work}/overhead.db", "SQLite")
        if args.postgres:
            storage_overhead(args.postgres, "PostgreSQL")
    if "export" not in args.skip:
        export_cost(work)
    if "memory" not in args.skip:
        memory_cost(args.data_dir, work, args.threads)


if __name__ == "__main__":
    main()
