"""Record the tabulated benchmark: every point of a grid study trained to the end (issue 23).

    python benchmarks/record_table.py benchmarks/tables/cifar_resnet_grid.toml \\
        --data-dir ../shared/data/cifar10-jpeg --storage sqlite:///table.db \\
        --out docs/results/table_cifar_resnet.json
    python benchmarks/record_table.py benchmarks/tables/cifar_resnet_grid.toml --synthetic \\
        --out /tmp/synthetic_table.json      # a made-up table of the same grid, for the simulator

Each point is a trial of an Optuna study in kdsearch's storage, trained with kdsearch's own
data, teacher views, builder and distillation, never stopped: after every epoch its validation
accuracy, its test accuracy and the epoch's seconds (training plus the validation pass; the
test pass is timed apart, once) are stored on the trial. Run it again after a stop and it goes
on with the points not finished (a trial left RUNNING by a killed run is marked FAIL and its
point trained again); `--shard i/n` trains every n-th point, so two processes (one core each)
share a grid, with one storage or one each. The table is written after every point, merged
with what the other shards wrote to it meanwhile (they take turns at its folder's lock), so
what is done is never lost; rows already in `--out` count as done, so a committed table goes on
growing on another machine whose storage is new.

`--replicate K` trains the same grid again from another seed (`student_seed(seed, K)`: weights
and batch order; the data, its split and the teacher's views stay the same), into its own
table: one training run is a draw with about a point of noise (real_check's spot-check), more
than the gaps between the best students, so a replay that samples one replicate per point and
seed (`simulate.py --table A --table B`) stops rewarding a search for one frozen draw.

The grid is the study file's whole student space: every knob must be a fixed value or a list of
choices, and the points are enumerated by walking `suggest_student` through every branch (a
family's knobs only where that family is chosen), so the simulator's methods, which suggest
through the same function, can only ask for points the table holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from kdsearch.search.space import suggest_recipe, suggest_student  # noqa: E402
from kdsearch.spec import StudySpec, load_study  # noqa: E402
from kdsearch.training.models import arch_params, count_macs  # noqa: E402

INPUT_SHAPE, NUM_CLASSES = (3, 32, 32), 10
EXTRA = ("test_curve", "epoch_seconds", "test_seconds")  # the table's own trial attributes


class _Walk:
    """A stand-in trial that answers each suggestion from a path of choice indices, recording
    how many choices each suggestion had: enough to enumerate a conditional space."""

    def __init__(self, path: list[int]):
        self.path, self.sizes, self.params = path, [], {}

    def _pick(self, name: str, choices: list) -> Any:
        i = len(self.sizes)
        self.sizes.append(len(choices))
        value = choices[self.path[i]] if i < len(self.path) else choices[0]
        self.params[name] = value
        return value

    def suggest_categorical(self, name, choices):
        return self._pick(name, list(choices))

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._pick(name, list(range(low, high + 1, step)))

    def suggest_float(self, name, low, high, *, step=None, log=False):
        raise SystemExit(f"record_table: '{name}' is a float range; a grid needs "
                         "{ choices = [...] } or a fixed value")


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every point of the study's student space (and searched recipe), in a fixed order; the
    points that `max_params` or `max_macs` refuse before training are not in it."""
    from kdsearch.search.objective import over_budget

    points, path = [], []
    while True:
        walk = _Walk(path)
        suggest_student(walk, spec.student.space, INPUT_SHAPE)
        suggest_recipe(walk, spec.student.train)
        if over_budget(spec, *_sizes(spec, walk.params)) is None:
            points.append(walk.params)
        full = path + [0] * (len(walk.sizes) - len(path))
        i = len(full) - 1  # the odometer: the last digit that can still move on
        while i >= 0 and full[i] + 1 >= walk.sizes[i]:
            i -= 1
        if i < 0:
            return points
        path = full[:i] + [full[i] + 1]


def _sizes(spec: StudySpec, params: dict) -> tuple[int, int]:
    choice = suggest_student(optuna.trial.FixedTrial(params), spec.student.space, INPUT_SHAPE)
    return (arch_params(choice.arch, INPUT_SHAPE, NUM_CLASSES),
            count_macs(choice.arch, INPUT_SHAPE, NUM_CLASSES))


def _row(spec: StudySpec, params: dict, val, test, seconds, test_seconds) -> dict:
    n_params, macs = _sizes(spec, params)
    return {"params": params, "n_params": n_params, "macs": macs, "val": list(val),
            "test": list(test), "seconds": list(seconds), "test_seconds": test_seconds}


def write_table(path: Path, spec_path: Path, rows: list[dict], teacher_params: int,
                epochs: int, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    study = os.path.relpath(Path(spec_path).resolve(), path.resolve().parent)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"study": study, "teacher_params": teacher_params,
                               "epochs": epochs, "meta": meta, "rows": rows}, indent=1))
    tmp.replace(path)


@contextlib.contextmanager
def _turn(path: Path):
    """Hold the lock of the table's folder: a shard reads, merges and writes the table in one
    turn, so a shard with its own storage never writes over rows another one added meanwhile.
    (The folder, not the table, because writing replaces the table's file.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: run the shards of one table with one shared storage
        yield
        return
    handle = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def _key(params: dict) -> str:
    """A point's params as a key of the table's rows and the storage's trials."""
    return json.dumps(params, sort_keys=True)


def _written(path: Path) -> dict:
    """A table written before, or an empty one."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"rows": [], "meta": {}}


def synthetic_rows(spec: StudySpec, seed: int = 0) -> list[dict]:
    """A made-up table of the grid: accuracy rising with log size towards 0.9, distillation
    settings moving it a little, seconds proportional to MACs. For the simulator's tests."""
    rng = random.Random(seed)
    epochs = spec.student.train.epochs
    rows = []
    for params in grid_points(spec):
        n_params, macs = _sizes(spec, params)
        final = min(0.92, 0.35 + 0.11 * math.log10(n_params) + rng.gauss(0, 0.02)
                    + 0.01 * (params.get("alpha", 0) - 0.5))
        speed = rng.uniform(0.5, 1.5)
        val = [final * (1 - math.exp(-speed * 3 * (e + 1) / epochs)) / (1 - math.exp(-speed * 3))
               for e in range(epochs)]
        test = [v - 0.005 + rng.gauss(0, 0.003) for v in val]
        seconds = [20 + macs / 1.5e5 * rng.uniform(0.9, 1.1) for _ in range(epochs)]
        rows.append(_row(spec, params, val, test, seconds, seconds[0] / 3))
    return rows


def record(spec: StudySpec, spec_path: Path, args: argparse.Namespace) -> None:
    """Train the grid's points not finished yet, writing the table after each."""
    import torch

    from kdsearch.options import Options
    from kdsearch.study import coordination
    from kdsearch.study.runner import load_logged
    from kdsearch.study.storage import open_storage
    from kdsearch.training.engine import accuracy, resolve_device
    from kdsearch.training.models import build_model
    from kdsearch.training.student import distill, student_seed

    opts = Options(storage=args.storage, study_name=args.study_name,
                   data_dir=Path(args.data_dir) if args.data_dir else None,
                   cache_dir=Path(args.cache_dir or "~/.cache/kdsearch").expanduser(),
                   device=args.device, threads=args.threads, offline=True)
    device = resolve_device(opts.device)
    torch.set_num_threads(args.threads)
    data = load_logged(spec, opts, log=print)
    teacher = coordination.obtain_teacher(spec, data, opts, device, log=print)
    # Through kdsearch's opener: shards starting together take turns creating the tables
    # (Optuna's own creation races: "UNIQUE constraint failed: alembic_version").
    storage = open_storage(opts.storage, heartbeats=None, read_only=False)
    study = optuna.create_study(study_name=args.study_name, storage=storage,
                                directions=["maximize", "minimize"], load_if_exists=True)
    # Another replicate's storage or table would count its points as done here, and the table
    # would repeat that replicate under this one's name. (Recorded before replicates: 0.)
    written = _written(args.out)
    for holder, holds, filled in (
            ("the storage's study", study.user_attrs.get("replicate", 0),
             bool(study.get_trials(deepcopy=False))),
            (str(args.out), written["meta"].get("replicate", 0), bool(written["rows"]))):
        if filled and holds != args.replicate:
            raise SystemExit(f"record_table: {holder} holds replicate {holds}, not "
                             f"{args.replicate}: give each replicate its own --storage and --out")
    study.set_user_attr("replicate", args.replicate)
    points = grid_points(spec)
    index, count = args.shard
    mine = [p for i, p in enumerate(points) if i % count == index]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.params in mine:  # left by a killed run of this shard: train its point again
            study.tell(t.number, state=TrialState.FAIL)

    def finished() -> dict[str, optuna.trial.FrozenTrial]:
        return {_key(t.params): t for t in
                study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}

    # Rows of the table already written (committed by a run on another machine, whose storage
    # did not come along) count as done and stay in the table.
    kept = {_key(r["params"]): r for r in written["rows"]
            if r["params"] in points}

    def save() -> None:
        with _turn(args.out):
            _save()

    def _save() -> None:
        # Rows the other shards wrote since this one started (each shard's storage may hold
        # only its own points), then this shard's own finished trials.
        rows = dict(kept)
        rows.update({_key(r["params"]): r for r in _written(args.out)["rows"]
                     if r["params"] in points})
        rows.update({key: _row(spec, t.params, t.user_attrs["val_curve"],
                               t.user_attrs["test_curve"], t.user_attrs["epoch_seconds"],
                               t.user_attrs["test_seconds"])
                     for key, t in finished().items()})
        rows = list(rows.values())
        rows.sort(key=lambda r: points.index(r["params"]) if r["params"] in points else 0)
        write_table(args.out, spec_path, rows, teacher.record.params, spec.student.train.epochs,
                    {"teacher": teacher.record.description,
                     "teacher_test_accuracy": teacher.record.test_accuracy,
                     "train_images": len(data.train), "val_images": len(data.val),
                     "test_images": len(data.test), "device": str(device),
                     "threads": args.threads, "torch": torch.__version__,
                     "replicate": args.replicate,
                     "seed": student_seed(spec.seed, args.replicate),
                     "command": " ".join(sys.argv)})

    done = set(finished()) | set(kept)
    todo = [p for p in mine if _key(p) not in done]
    print(f"{len(points)} points in the grid, {len(mine)} in shard {index}/{count}, "
          f"{len(mine) - len(todo)} done, {len(todo)} to train")
    for n, params in enumerate(todo, 1):
        study.enqueue_trial(params)
        trial = study.ask()
        choice = suggest_student(trial, spec.student.space, data.input_shape)
        recipe = suggest_recipe(trial, spec.student.train)
        seed = student_seed(spec.seed, args.replicate)
        torch.manual_seed(seed)
        model = build_model(choice.arch, data.input_shape, data.num_classes, data.mean, data.std)
        val, test, seconds, test_seconds = [], [], [], []
        clock = [time.perf_counter()]

        def epoch_done(epoch: int, val_acc: float, model=model, val=val, test=test,
                       seconds=seconds, test_seconds=test_seconds, clock=clock) -> None:
            seconds.append(round(time.perf_counter() - clock[0], 3))
            tick = time.perf_counter()
            test.append(accuracy(model, data.test, device))
            test_seconds.append(time.perf_counter() - tick)
            val.append(val_acc)
            clock[0] = time.perf_counter()

        distill(model, data, recipe, device, teacher, seed=seed, temperature=choice.temperature,
                alpha=choice.alpha, on_epoch=epoch_done)
        for key, value in (("val_curve", val), ("test_curve", test),
                           ("epoch_seconds", seconds),
                           ("test_seconds", round(min(test_seconds), 3))):
            trial.set_user_attr(key, value)
        n_params, _ = _sizes(spec, trial.params)
        study.tell(trial, (val[-1], float(n_params)))
        save()
        print(f"[{n}/{len(todo)}] {choice.arch.describe()} T={choice.temperature:g} "
              f"alpha={choice.alpha:g}: val {val[-1]:.4f} test {test[-1]:.4f}, "
              f"{sum(seconds):.0f} s", flush=True)
    save()


def with_early_plan(spec: StudySpec, text: str) -> StudySpec:
    """The study with its student recipe's cheaper early epochs set, validated as in a file."""
    from kdsearch.spec.tables import StudentRecipe

    fraction, epochs = text.split(":")
    fields = spec.student.train.model_dump() | {"early_fraction": float(fraction),
                                                "early_epochs": int(epochs)}
    train = StudentRecipe.model_validate(fields)
    return spec.model_copy(update={"student": spec.student.model_copy(update={"train": train})})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="the table (JSON)")
    ap.add_argument("--synthetic", action="store_true", help="a made-up table, for tests")
    ap.add_argument("--storage", default="sqlite:///table.db")
    ap.add_argument("--study-name", default="benchmark-table")
    ap.add_argument("--data-dir")
    ap.add_argument("--cache-dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shard", default="0/1", help="i/n: train every n-th point from the i-th")
    ap.add_argument("--replicate", type=int, default=0,
                    help="train from student_seed(seed, K) instead of K = 0: another draw of "
                         "the same grid, for its own --out and --storage")
    ap.add_argument("--early", metavar="FRACTION:EPOCHS",
                    help="train the first EPOCHS epochs on a FRACTION of the images "
                         "([student.train] early_fraction, early_epochs), for rank_fidelity.py")
    args = ap.parse_args(argv)
    index, count = (int(x) for x in args.shard.split("/"))
    args.shard = (index, count)
    spec = load_study(str(args.study))
    if args.early:
        spec = with_early_plan(spec, args.early)
    if args.synthetic:
        write_table(args.out, args.study, synthetic_rows(spec, seed=args.replicate), 269_722,
                    spec.student.train.epochs, {"synthetic": True})
        print(f"wrote {args.out}: {len(grid_points(spec))} made-up points")
        return 0
    record(spec, args.study, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
