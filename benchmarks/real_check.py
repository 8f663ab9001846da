"""The search benchmark's real check (issue 23, point 5): kdsearch and a peer on the table's real
workload, in wall time, scored by the simulator's panel.

    python benchmarks/real_check.py --table docs/results/table_cifar_resnet.json \\
        --method kdsearch --seed 0 --budget 3000 --data-dir ../shared/data/cifar10-jpeg \\
        --out out/real_check/kdsearch-0
    python benchmarks/real_check.py --table docs/results/table_cifar_resnet.json \\
        --method nsga2 --seed 0 --budget 3000 --data-dir ../shared/data/cifar10-jpeg \\
        --out out/real_check/nsga2-0
    python benchmarks/simulate.py --report out/real_check/*/runs.json.gz
    python benchmarks/real_check.py --table docs/results/table_cifar_resnet.json \\
        --spot-check out/real_check/*/runs.json.gz

Each run is a real `run_study` of the table's grid study file (the same space, data, teacher
views and per-trial budget as the table: 10,000 training images, 8 epochs), on one worker and
one torch thread, for `--budget` seconds of wall time from its first trial: `kdsearch` as
shipped (as the simulator's `kdsearch`: TPE, the planned start-up, its default stopping, no
repeated point trained twice) or a peer as the simulator runs it (`nsga2`, `random`: Optuna's
sampler with its defaults, no stopping, repeated points trained again). Its trials become one
simulator run (each trial's end in seconds after the first trial's start; a trial still running
at the budget counts for nothing, as in the replay), saved as runs.json.gz, so `simulate.py
--report` scores the real runs with the same panel, paired by seed. Run two at once, one per
core, each method with the same seed side by side. The simulated ordering to compare with:
`simulate.py --workers 1 --budget-trials B/T` (B the budget, T the table's mean trial).
`--spot-check` sets each real trial beside the table's row for the same point (validation, test
and seconds): the table retrained, point by point.
"""

from __future__ import annotations

import argparse
import statistics
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
    search = spec.search.model_copy(update={"sampler": method, "early_stopping": stop,
                                            "skip_repeats": False})  # Optuna's, as shipped
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


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a: concordant minus discordant pairs over all pairs (ties count as neither)."""
    n = len(a)
    signs = [(a[i] - a[j]) * (b[i] - b[j]) for i in range(n) for j in range(i + 1, n)]
    return (sum(x > 0 for x in signs) - sum(x < 0 for x in signs)) / len(signs)


def spot_check(runs: list[S.Run], table: S.Table, out=print) -> dict[str, float]:
    """The real trials against the table's rows for the same points: the table's accuracies
    and seconds retrained by another run (another process, another day), so the replay's
    numbers are checked point by point. A stopped trial is compared at the epoch it reached;
    its test accuracy is never measured. Seconds: one worker, so a trial's wall time is the gap
    between its end and the previous one's (the sampler's own time included)."""
    index = table.index()
    val_diff, test_diff, pairs, real_s, table_s = [], [], [], 0.0, 0.0
    out(f"{'run':<12} {'params':>8} {'ep':>2}  {'val real':>8} {'table':>6}  "
        f"{'test real':>9} {'table':>6}  {'s real':>6} {'table':>6}")
    for run in runs:
        before = 0.0
        for f in sorted(run.finished, key=lambda f: f.seconds):
            row = index.get(S.point_key(f.params))
            took, before = f.seconds - before, f.seconds
            if row is None:
                raise SystemExit(f"{run.method}-{run.seed}: a trial outside the table: {f.params}")
            table_took = sum(row.seconds[:f.epochs]) + (row.test_seconds if f.complete else 0.0)
            real_s, table_s = real_s + took, table_s + table_took
            val_diff.append(f.val - row.val[f.epochs - 1])
            test = f"{f.test:9.4f} {row.test[-1]:6.4f}" if f.complete else f"{'-':>9} {'-':>6}"
            if f.complete:
                test_diff.append(f.test - row.test[-1])
                pairs.append((f.val, row.val[-1]))
            out(f"{run.method + '-' + str(run.seed):<12} {f.n_params:>8,} {f.epochs:>2}  "
                f"{f.val:8.4f} {row.val[f.epochs - 1]:6.4f}  {test}  {took:6.0f} {table_took:6.0f}")
    if not val_diff:
        raise SystemExit("no trial ended within the budget: nothing to compare")
    tau = kendall_tau([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) > 2 else float("nan")
    summary = {
        "trials": len(val_diff), "complete": len(test_diff),
        "val_mean_diff": statistics.fmean(val_diff),
        "val_mean_abs_diff": statistics.fmean(abs(d) for d in val_diff),
        "test_mean_diff": statistics.fmean(test_diff) if test_diff else float("nan"),
        "test_mean_abs_diff": statistics.fmean(abs(d) for d in test_diff) if test_diff else float("nan"),
        "val_kendall_tau_complete": tau, "seconds_real_over_table": real_s / table_s}
    out(f"{summary['trials']} trials ({summary['complete']} complete): validation real - table "
        f"{summary['val_mean_diff']:+.4f} mean, {summary['val_mean_abs_diff']:.4f} mean absolute; "
        f"test {summary['test_mean_diff']:+.4f} mean, {summary['test_mean_abs_diff']:.4f} mean "
        f"absolute; Kendall tau of final validation (complete trials) {tau:.2f}; wall seconds "
        f"real / table {summary['seconds_real_over_table']:.2f}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, required=True, help="the recorded table (JSON)")
    ap.add_argument("--spot-check", type=Path, nargs="+", metavar="RUNS",
                    help="instead of a run: compare real runs (runs.json.gz) with the table's rows")
    ap.add_argument("--method", choices=METHODS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, help="wall seconds from the first trial")
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kdsearch").expanduser())
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="folder: study.db and runs.json.gz")
    args = ap.parse_args(argv)
    if args.spot_check:
        runs, _ = S.load_all_runs(args.spot_check)
        spot_check(runs, S.load_table(args.table))
        return 0
    if args.method is None or args.budget is None or args.out is None:
        ap.error("a run needs --method, --budget and --out (or --spot-check RUNS)")

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
    S.save_runs([run], args.out / "runs.json.gz", [args.table])
    print(f"{args.method} seed {args.seed}: {len(run.finished)} trials ended within "
          f"{args.budget:,.0f} s, {sum(f.complete for f in run.finished)} complete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
