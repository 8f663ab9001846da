"""The search benchmark's real check (issue 23, point 5): kdsearch and a peer on the table's real
workload, in wall time, scored by the simulator's panel.

    python benchmarks/real_check.py --table docs/results/table_cifar_resnet.json \\
        --method kdsearch --seed 0 --budget 4078 --data-dir ../shared/data/cifar10-jpeg \\
        --out out/real_check/kdsearch-0
    python benchmarks/real_check.py --table docs/results/table_cifar_resnet.json \\
        --method nsga2 --seed 0 --budget 4078 --data-dir ../shared/data/cifar10-jpeg \\
        --out out/real_check/nsga2-0
    python benchmarks/simulate.py --report out/real_check/*/runs.json.gz

Each run is a real `run_study` of the table's grid study file (the same space, data, teacher
views and per-trial budget as the table: 10,000 training images, 8 epochs), on one worker and
one torch thread, for `--budget` seconds of wall time from its first trial: `kdsearch` as
shipped (as the simulator's `kdsearch`: TPE, the planned start-up, its default stopping) or a
peer as the simulator runs it (`nsga2`, `random`: Optuna's sampler with its defaults, no
stopping). Its trials become one simulator run (each trial's end in seconds after the first
trial's start; a trial still running at the budget counts for nothing, as in the replay), saved
as runs.json.gz, so `simulate.py --report` scores the real runs with the same panel, paired by
seed. Run two at once, one per core, each method with the same seed side by side. The
simulated ordering to compare with: `simulate.py --workers 1 --budget-trials B/T` (B the
budget, T the table's mean trial).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import optuna  # noqa: E402
import simulate as S  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from kdsearch.record import TrialRecord  # noqa: E402
from kdsearch.spec import StudySpec  # noqa: E402

METHODS = ("kdsearch", "nsga2", "random")


def method_spec(spec: StudySpec, method: str, seed: int) -> StudySpec:
    """The table's study as `method` runs it (`spec` is simulate.table_spec's: kdsearch)."""
    if method == "kdsearch":
        return spec.model_copy(update={"seed": seed})
    stop = spec.search.early_stopping.model_copy(update={"enabled": False})
    search = spec.search.model_copy(update={"sampler": method, "early_stopping": stop})
    return spec.model_copy(update={"seed": seed, "search": search})


def as_run(study: optuna.Study, method: str, seed: int, budget: float) -> S.Run:
    """The study's trials as the simulator's run: ends in seconds after the first trial's start,
    only those within the budget."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start is not None]
    run = S.Run(method, seed, budget, 1)
    if not trials:
        return run
    zero = min(t.datetime_start for t in trials)
    for t in sorted(trials, key=lambda t: t.datetime_complete or t.datetime_start):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or t.datetime_complete is None:
            continue
        end = (t.datetime_complete - zero).total_seconds()
        record = TrialRecord.of(t)
        if end > budget or not record.val_curve:  # refused before training: no time, no point
            continue
        complete = t.state == TrialState.COMPLETE
        run.finished.append(S.Finished(
            end, complete, record.params or 0, record.val_curve[-1],
            record.test_accuracy if complete and record.test_accuracy is not None else 0.0,
            len(record.val_curve), dict(t.params)))
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, required=True, help="the recorded table (JSON)")
    ap.add_argument("--method", choices=METHODS, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, required=True, help="wall seconds from the first trial")
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kdsearch").expanduser())
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="folder: study.db and runs.json.gz")
    args = ap.parse_args(argv)

    import torch

    from kdsearch.options import Options
    from kdsearch.study.runner import run_study

    table = S.load_table(args.table)
    spec = method_spec(S.table_spec(table, args.table), args.method, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    opts = Options(storage=f"sqlite:///{(args.out / 'study.db').resolve()}",
                   study_name=f"{args.method}-{args.seed}", n_trials=spec.search.n_trials,
                   timeout=args.budget, data_dir=args.data_dir, cache_dir=args.cache_dir,
                   device="cpu", threads=args.threads, offline=True)
    study = run_study(spec, opts, log=print)
    run = as_run(study, args.method, args.seed, args.budget)
    S.save_runs([run], args.out / "runs.json.gz", args.table)
    print(f"{args.method} seed {args.seed}: {len(run.finished)} trials ended within "
          f"{args.budget:,.0f} s, {sum(f.complete for f in run.finished)} complete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
