"""kdsearch against the peers a user would reach for: the same workload, data, budget and cores.

    python benchmarks/bench_peers.py --workload mnist --budget 90 --seeds 3
    python benchmarks/bench_peers.py --workload cifar --study studies/cifar_compress.toml \\
        --data-dir ../shared/data/cifar10-jpeg --train-limit 5000 --budget 600 --seeds 3
    python benchmarks/bench_peers.py --workload cifar --study studies/cifar_resnet.toml \\
        --data-dir ../shared/data/cifar10-jpeg --train-limit 1000 --val-size 2000 --epochs 6 \\
        --budget 480 --seeds 2 --methods kdsearch,kdsearch-no-es,moasha-inproc --moasha-priority ranks
    python benchmarks/bench_peers.py --merge out/a/cifar/runs.json out/b/cifar/runs.json

Opt-in (it takes methods x seeds x budget of wall clock), and it needs the `bench` extra
(`pip install -e .[bench]`: Syne Tune) for the two MOASHA methods. Methods, each run for
`--budget` seconds of wall clock per seed, one trial at a time, on the same torch threads:

    kdsearch        kdsearch as shipped: run_study, multi-objective TPE, Pareto early stopping
    kdsearch-no-es  the same with `[search.early_stopping] enabled = false`
    nsga2           run_study with Optuna's NSGA-II sampler, no early stopping
    random          run_study with Optuna's random sampler, no early stopping
    moasha          Syne Tune's MOASHA (Schmucker et al. 2021; Salinas et al. 2021) through its
                    Tuner and LocalBackend, n_workers = 1: each trial is a process running
                    benchmarks/peers_trial.py, which trains one student with kdsearch's own
                    objective (same builder, engine and cached teacher logits) and reports
                    validation accuracy per epoch and the parameter count
    moasha-inproc   the same MOASHA scheduler driven in this process (suggest, on_trial_add,
                    on_trial_result, on_trial_remove, as the Tuner calls them): the algorithm
                    without the local backend's cost of a process, an import of torch and a
                    data load per trial
    kdsearch-reachable  (only when named in --methods) kdsearch with the prototype stopping
                    rule `judge = "reachable"` (search/early_stopping.py); not a peer
    kdsearch-after-warmup (only when named) kdsearch skipping the rungs inside the
                    learning-rate warm-up (`after_warmup = true`); not a peer
    kdsearch-front-only (only when named) kdsearch letting only a rung's Pareto front go on
                    (`keep = 0`, the rule before issue 13); not a peer
    kdsearch-min-trials-3 (only when named) kdsearch stopping trials once 3 trials, not 6,
                    have reached a rung; not a peer
    kdsearch-random (only when named) kdsearch's early stopping with Optuna's random
                    sampler: what the stopping rule does without TPE; not a peer
    kdsearch-tpe-before (only when named) kdsearch with the TPE of before issue 13's sampler
                    change (costs in raw units, each family's knobs sampled one by one,
                    random start-up); not a peer
    kdsearch-random-startup (only when named) kdsearch with TPE's random start-up instead of
                    the planned one (`startup = "random"`); not a peer

MOASHA's rungs are kdsearch's: grace period = the first rung kdsearch as shipped judges at,
reduction factor = the ratio of its first two rungs.

MOASHA runs as Syne Tune ships it. In its non-dominated sort (0.16) each front is indexed with
the epsilon-net's ranks where its order is meant, and MOASHA's bracket reads the result as a
rank per trial: right while every trial at a rung is on one front, not in general.
`--moasha-priority ranks` passes each trial's rank in the intended order instead.

Every method scores a trial by kdsearch's objective: (validation accuracy, parameter count) of
a student trained for the study's epochs. The hypervolume is kdsearch's (`hypervolume`: area in
accuracy x log10 params) of the front of the trials *trained to the last epoch* (a stopped
trial is never on the front), with one reference point for every method: the teacher's
parameter count and accuracy 0. A method's clock starts when it is called (kdsearch's includes
its data load and storage set-up, the local backend's includes a process per trial; the
teacher is trained and cached before any clock starts), and only trials finished within
`--budget` seconds count. Hypervolume is plotted against that clock and against trials
finished (complete + stopped), as the mean over seeds with a band from the lowest to the
highest seed.

`--merge` reports the raw runs of several invocations together (one process per core, each
with its own `--first-seed`) as if one invocation had run them.

The last line: `time_fraction=<t_kd / t_peer> hypervolume_ratio=<hv_kd / hv_peer>` where the
peer is the one with the highest mean final hypervolume, t_peer the time its mean curve first
reaches that value and t_kd the time kdsearch's mean curve first reaches it (inf: never).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the kdsearch CLI does, before torch

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdsearch.options import Options, available_cores  # noqa: E402
from kdsearch.record import TrialRecord  # noqa: E402
from kdsearch.search.space import suggest_student  # noqa: E402
from kdsearch.search.startup import startup_trials  # noqa: E402
from kdsearch.spec import StudySpec, parse_study  # noqa: E402
from kdsearch.study.runner import prepare, run_study  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import study_text  # noqa: E402

try:  # report/ split into modules; the public function keeps its name
    from kdsearch.report.hypervolume import hypervolume  # noqa: E402
except ImportError:  # before the split
    from kdsearch.report.reports import hypervolume  # type: ignore[no-redef]  # noqa: E402

try:  # rungs inside the warm-up are skipped (issue 13)
    from kdsearch.search.early_stopping import judged_rungs  # noqa: E402
except ImportError:  # before: every rung before the last epoch
    def judged_rungs(rule, epochs, warmup=0.0, schedule="constant"):  # type: ignore[misc]
        return [r for r in rule.rungs if r < epochs]

try:  # a searched learning rate and batch size, where the study file asks for them
    from kdsearch.search.space import suggest_recipe  # noqa: E402
except ImportError:  # before recipes were searchable
    suggest_recipe = None

METHODS = ("kdsearch", "kdsearch-no-es", "nsga2", "random", "moasha", "moasha-inproc")
PEERS = METHODS[1:]
# kdsearch with `judge = "reachable"` (the prototype rule); kdsearch skipping the rungs inside
# the learning-rate warm-up (`after_warmup = true`); kdsearch letting
# only a rung's Pareto front go on (`keep = 0`, the rule before issue 13); kdsearch stopping
# once 3 trials (not 6) have reached a rung; kdsearch's stopping with random sampling; kdsearch
# with the TPE it ran before (raw costs, no groups, random start-up); kdsearch with TPE's own
# random start-up instead of the planned one (`startup = "random"`).
VARIANTS = ("kdsearch-reachable", "kdsearch-after-warmup", "kdsearch-front-only",
            "kdsearch-min-trials-3", "kdsearch-random", "kdsearch-tpe-before",
            "kdsearch-random-startup")
OURS = "kdsearch"
TRIAL_SCRIPT = Path(__file__).resolve().parent / "peers_trial.py"
TUNER_SLEEP = 0.5  # seconds between the Syne Tune tuner's polls (its default, 5 s, idles the core)
PROBES = 400  # random draws of the search space that reveal every parameter it can suggest
GRID = 400  # points of the time axis on which seeds are averaged

# The small real workload: bench_search.py's (MLP students on a 20,000-image MNIST subset, early
# stopping on), with the trial count the budget affords: it sizes TPE's start-up (10) and
# NSGA-II's population (10).
MNIST_STUDY = study_text(enabled=True, mnist=True, seed=0).replace("n_trials = 100000",
                                                                    "n_trials = 40")


@dataclass(frozen=True)
class Finished:
    """A trial that ended within the budget."""

    seconds: float  # since the method's clock started
    complete: bool  # trained to the last epoch: only these can be on the front
    accuracy: float  # validation accuracy (0 for a stopped trial: it is never scored)
    params: int


@dataclass
class Run:
    method: str
    seed: int
    budget: float
    seconds: float  # wall clock the method took, the last trial included
    load: tuple[float, float]  # 1-minute load average before and after
    finished: list[Finished] = field(default_factory=list)

    def within(self) -> list[Finished]:
        return sorted((f for f in self.finished if f.seconds <= self.budget), key=lambda f: f.seconds)


# --- the workload ---------------------------------------------------------------------------


def load_workload(args: argparse.Namespace) -> StudySpec:
    """The study every method searches, before its seed and method are applied."""
    if args.workload == "mnist":
        return parse_study(MNIST_STUDY, Path("bench_peers_mnist.toml"))
    path = Path(args.study)
    spec = parse_study(path.read_text(), path)
    data = spec.data.model_copy(update={"train_limit": args.train_limit,
                                        "val_size": args.val_size or spec.data.val_size})
    train = spec.student.train
    if args.epochs is not None:
        train = train.model_copy(update={"epochs": args.epochs})
    student = spec.student.model_copy(update={"train": train})
    return spec.model_copy(update={"data": data, "student": student})


def method_spec(base: StudySpec, method: str, seed: int) -> StudySpec:
    """The study as `method` runs it with `seed`: sampler and early stopping set, nothing else."""
    search = base.search
    early = search.early_stopping
    if method == "kdsearch-reachable":
        early = early.model_copy(update={"enabled": True, "judge": "reachable"})
    elif method == "kdsearch-after-warmup":
        early = early.model_copy(update={"enabled": True, "after_warmup": True})
    elif method == "kdsearch-front-only":
        early = early.model_copy(update={"enabled": True, "keep": 0.0})
    elif method == "kdsearch-min-trials-3":
        early = early.model_copy(update={"enabled": True, "min_trials": 3})
    elif method in ("kdsearch-random", "kdsearch-tpe-before", "kdsearch-random-startup"):
        early = early.model_copy(update={"enabled": True})
    elif method != OURS:
        early = early.model_copy(update={"enabled": False})
    sampler = {"nsga2": "nsga2", "random": "random", "kdsearch-random": "random"}.get(
        method, search.sampler)
    startup = "random" if method == "kdsearch-random-startup" else search.startup
    search = search.model_copy(update={"sampler": sampler, "early_stopping": early,
                                       "baselines": [], "startup": startup,
                                       "skip_repeats": method.startswith(OURS)})
    return base.model_copy(update={"seed": seed, "search": search})


def rungs(spec: StudySpec) -> list[int]:
    """The rungs MOASHA's are matched to: the study file's, else kdsearch's default under a
    constant learning rate (1, 3, 9), whatever the schedule, so that a one-cycle study that
    sets none gets Syne Tune's own grace period and reduction factor (1 and 3)."""
    rule = spec.search.early_stopping.model_copy(update={"enabled": True})
    return judged_rungs(rule, spec.student.train.epochs, spec.student.train.warmup())


def moasha_settings(spec: StudySpec) -> tuple[int, float]:
    """MOASHA's grace period and reduction factor, matched to `rungs`."""
    rs = rungs(spec) or [1]
    factor = rs[1] / rs[0] if len(rs) > 1 else 3.0
    return rs[0], factor


# --- kdsearch and Optuna's samplers: run_study ------------------------------------------------


def run_kdsearch(spec: StudySpec, method: str, seed: int, common: dict, budget: float,
                 quiet: bool) -> Run:
    opts = Options(storage=f"sqlite:///{common['work']}/{method}-{seed}.db",
                   study_name=f"{method}-{seed}", n_trials=100_000, timeout=budget,
                   data_dir=common["data_dir"], cache_dir=common["cache_dir"], device="cpu",
                   threads=common["threads"], offline=True)
    run = Run(method, seed, budget, 0.0, (os.getloadavg()[0], 0.0))
    start_wall, start = time.time(), time.perf_counter()
    with _quiet(quiet), _tpe_before(method == "kdsearch-tpe-before"):
        study = run_study(spec, opts, log=lambda m: None)
    run.seconds = time.perf_counter() - start
    run.load = (run.load[0], os.getloadavg()[0])
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        complete = t.state == TrialState.COMPLETE
        run.finished.append(Finished(
            seconds=t.datetime_complete.timestamp() - start_wall, complete=complete,
            accuracy=t.values[0] if complete else 0.0,
            params=int(TrialRecord.of(t).params or 0)))
    return run


@contextlib.contextmanager
def _tpe_before(on: bool):
    """run_study with the sampler of before, for the `kdsearch-tpe-before` variant: Optuna's
    TPE on raw costs, no groups (studies store no intermediate values for it to trip on)."""
    if not on:
        yield
        return
    import kdsearch.study.sampler as samplers  # identity.create_study calls it through here

    made = samplers.make_sampler

    def before(spec, stream, planned=()):  # the sampler before had no planned start-up
        return optuna.samplers.TPESampler(seed=samplers.sampler_seed(spec, stream),
                                          multivariate=True, constant_liar=True,
                                          n_startup_trials=startup_trials(spec))

    samplers.make_sampler = before
    try:
        yield
    finally:
        samplers.make_sampler = made


@contextlib.contextmanager
def _quiet(on: bool):
    """run_study's progress bar and trial lines go to stderr; 18 runs of them drown the table."""
    if not on:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


# --- Syne Tune's MOASHA -----------------------------------------------------------------------


def syne_space(spec: StudySpec, input_shape: tuple[int, int, int]) -> dict:
    """The study's student space as a Syne Tune config space, read off `suggest_student` (and
    `suggest_recipe`: a searched learning rate and batch size).

    Random draws through an in-memory Optuna study reveal every parameter the space can
    suggest and its distribution (per-layer widths and kernels appear only with enough
    depth), so the two search the same space whatever the family.
    """
    from syne_tune.config_space import choice, lograndint, loguniform, randint, uniform

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    dists: dict = {}
    for _ in range(PROBES):
        trial = study.ask()
        suggest_student(trial, spec.student.space, input_shape)
        if suggest_recipe is not None:
            suggest_recipe(trial, spec.student.train)
        dists.update(trial.distributions)
    space: dict = {}
    for name, d in dists.items():
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            space[name] = d.choices[0] if len(d.choices) == 1 else choice(list(d.choices))
        elif isinstance(d, optuna.distributions.IntDistribution):
            if d.log:
                space[name] = lograndint(d.low, d.high)
            elif d.step == 1:
                space[name] = randint(d.low, d.high)
            else:
                space[name] = choice(list(range(d.low, d.high + 1, d.step)))
        else:
            space[name] = loguniform(d.low, d.high) if d.log else uniform(d.low, d.high)
    return space


def _moasha(spec: StudySpec, space: dict, seed: int, priority: str):
    import numpy as np
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
    from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import (
        NonDominatedPriority,
    )
    from syne_tune.optimizer.schedulers.multiobjective.non_dominated_priority import (
        compute_epsilon_net,
        pareto_efficient,
    )

    class Ranked(NonDominatedPriority):
        """Each trial's position in the non-dominated order (front by front, each front in its
        epsilon-net order), which is what the bracket reads."""

        def priority_unsafe(self, objectives):
            remaining, order = np.arange(len(objectives)), []
            while remaining.size:
                mask = pareto_efficient(objectives[remaining])
                front = remaining[mask]
                ranks = compute_epsilon_net(objectives[front], dim=self.dim)
                order.extend(front[np.argsort(ranks)])
                remaining = remaining[~mask]
            return np.argsort(order)

    np.random.seed(seed)  # MOASHA samples configurations and brackets from numpy's global state
    grace, factor = moasha_settings(spec)
    return MOASHA(space, metrics=["error", "params"], do_minimize=True, time_attr="epoch",
                  max_t=spec.student.train.epochs, grace_period=grace, reduction_factor=factor,
                  random_seed=seed,
                  multiobjective_priority=Ranked() if priority == "ranks" else None)


def run_moasha(spec: StudySpec, method: str, seed: int, common: dict, budget: float,
               quiet: bool) -> Run:
    """MOASHA through Syne Tune's Tuner and LocalBackend: a process per trial."""
    import logging

    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend import LocalBackend
    from syne_tune.experiments import load_experiment

    work = Path(common["work"])
    os.environ["SYNETUNE_FOLDER"] = str(work / "syne-tune")
    if quiet:
        logging.getLogger("syne_tune").setLevel(logging.WARNING)
    context = work / f"{method}-{seed}.context.json"
    context.write_text(json.dumps({
        "spec": spec.model_dump(mode="json"),
        "data_dir": str(common["data_dir"]) if common["data_dir"] else None,
        "cache_dir": str(common["cache_dir"]), "threads": common["threads"]}))
    space = {**common["space"], "kd_context": str(context)}
    tuner = Tuner(trial_backend=LocalBackend(entry_point=str(TRIAL_SCRIPT), pass_args_as_json=True),
                  scheduler=_moasha(spec, space, seed, common["priority"]),
                  stop_criterion=StoppingCriterion(max_wallclock_time=budget), n_workers=1,
                  sleep_time=TUNER_SLEEP, print_update_interval=10 * budget,
                  tuner_name=f"{method}-{seed}", save_tuner=False)
    run = Run(method, seed, budget, 0.0, (os.getloadavg()[0], 0.0))
    start_wall, start = time.time(), time.perf_counter()
    with _quiet(quiet), contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        tuner.run()
    run.seconds = time.perf_counter() - start
    run.load = (run.load[0], os.getloadavg()[0])
    results = load_experiment(tuner.name).results
    epochs = spec.student.train.epochs
    if results is None or results.empty:
        return run
    for _, rows in results.groupby("trial_id"):
        last = rows.sort_values("epoch").iloc[-1]
        ended = float(last["st_worker_timestamp"]) - start_wall
        refused = "refused" in rows and not math.isnan(float(last.get("refused", float("nan"))))
        complete = int(last["epoch"]) >= epochs and not refused
        stopped = int(last["st_decision"] == "STOP") if "st_decision" in rows else 1
        if complete or stopped or refused:  # else it was still running when the budget ended
            run.finished.append(Finished(ended, complete, 1.0 - float(last["error"]) if complete
                                         else 0.0, int(last["params"])))
    return run


class _Stopped(Exception):
    """MOASHA said stop: raised from the epoch hook, through the engine, out of the objective."""


def run_moasha_inproc(spec: StudySpec, method: str, seed: int, common: dict, budget: float,
                      quiet: bool) -> Run:
    """The same MOASHA, called as the Tuner calls it, with the objective run in this process."""
    from syne_tune.backend.trial_status import Trial
    from syne_tune.optimizer.scheduler import SchedulerDecision

    from kdsearch.search.objective import make_objective
    from kdsearch.study import coordination
    from kdsearch.study.runner import load_logged
    from kdsearch.training.engine import resolve_device

    run = Run(method, seed, budget, 0.0, (os.getloadavg()[0], 0.0))
    start = time.perf_counter()
    opts = Options(data_dir=common["data_dir"], cache_dir=common["cache_dir"], device="cpu",
                   offline=True)
    device = resolve_device("cpu")
    data = load_logged(spec, opts, log=lambda m: None)
    teacher = coordination.obtain_teacher(spec, data, opts, device, log=lambda m: None)
    scheduler = _moasha(spec, common["space"], seed, common["priority"])
    epochs = spec.student.train.epochs
    current: dict = {}

    def on_epoch(trial: optuna.Trial, epoch: int, val_acc: float) -> None:
        result = {"epoch": epoch, "error": 1.0 - val_acc, "params": float(trial.user_attrs["params"])}
        decision = scheduler.on_trial_result(current["trial"], result)
        if decision == SchedulerDecision.STOP and epoch < epochs:
            raise _Stopped

    objective = make_objective(spec, data, teacher, device, on_epoch=on_epoch)
    # Each config runs as a trial of an in-memory study (queued, so its values are the config's):
    # the objective reads the trial's number and writes its curve to the trial's storage.
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial_id = 0
    while time.perf_counter() - start < budget:
        suggestion = scheduler.suggest()
        trial = Trial(trial_id=trial_id, config=suggestion.config,
                      creation_time=datetime.datetime.now())
        scheduler.on_trial_add(trial)
        current["trial"] = trial
        study.enqueue_trial(suggestion.config)
        fixed = study.ask()
        complete, acc = False, 0.0
        try:
            acc, _ = objective(fixed)
            complete = True
        except (_Stopped, optuna.TrialPruned):
            pass
        scheduler.on_trial_remove(trial)  # as the Tuner does after every STOP, the last epoch's too
        run.finished.append(Finished(time.perf_counter() - start, complete, acc,
                                     int(fixed.user_attrs.get("params", 0))))
        trial_id += 1
    run.seconds = time.perf_counter() - start
    run.load = (run.load[0], os.getloadavg()[0])
    return run


RUNNERS: dict[str, Callable[..., Run]] = {
    "kdsearch": run_kdsearch, "kdsearch-no-es": run_kdsearch, "nsga2": run_kdsearch,
    "random": run_kdsearch, "moasha": run_moasha, "moasha-inproc": run_moasha_inproc,
    **{variant: run_kdsearch for variant in VARIANTS},  # every variant is a run_study
}


# --- hypervolume against time and trials ------------------------------------------------------


def trace(run: Run, ref_params: float) -> list[tuple[float, int, float]]:
    """(seconds, trials finished, hypervolume) after each trial that ended within the budget."""
    out, points, hv = [(0.0, 0, 0.0)], [], 0.0
    for n, f in enumerate(run.within(), start=1):
        if f.complete:
            points.append((f.accuracy, f.params))
            hv = hypervolume(points, ref_params)
        out.append((f.seconds, n, hv))
    return out


def at_time(tr: list[tuple[float, int, float]], t: float) -> float:
    return max((hv for s, _, hv in tr if s <= t), default=0.0)


def at_trials(tr: list[tuple[float, int, float]], n: int) -> float:
    return tr[min(n, len(tr) - 1)][2]


@dataclass(frozen=True)
class Curves:
    """The data step of the plot: per method, seeds on a common time grid and trial axis."""

    times: list[float]
    by_time: dict[str, list[list[float]]]  # method -> seed -> hypervolume at each time
    by_trials: dict[str, list[list[float]]]  # method -> seed -> hypervolume after n trials


def curves(runs: list[Run], ref_params: float, budget: float) -> Curves:
    times = [budget * i / GRID for i in range(GRID + 1)]
    by_time: dict[str, list[list[float]]] = {}
    by_trials: dict[str, list[list[float]]] = {}
    for run in runs:
        tr = trace(run, ref_params)
        by_time.setdefault(run.method, []).append([at_time(tr, t) for t in times])
        by_trials.setdefault(run.method, []).append([hv for _, _, hv in tr])
    for method, seeds in by_trials.items():  # the trial axis ends where the shortest seed ends
        n = min(len(s) for s in seeds)
        by_trials[method] = [s[:n] for s in seeds]
    return Curves(times, by_time, by_trials)


def mean(rows: list[list[float]]) -> list[float]:
    return [statistics.fmean(col) for col in zip(*rows, strict=True)]


def first_reach(times: list[float], values: list[float], target: float) -> float:
    return next((t for t, v in zip(times, values, strict=True) if v >= target - 1e-12), math.inf)


def plot(c: Curves, title: str, out: Path) -> list[Path]:
    """Hypervolume against wall clock and against trials: mean line, lowest-highest seed band."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("against wall-clock time",
                                                        "against trials finished"))
    for i, method in enumerate(c.by_time):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        for col, (xs, rows) in enumerate(((c.times, c.by_time[method]),
                                          (None, c.by_trials[method])), start=1):
            xs = xs or list(range(len(rows[0])))
            lo = [min(v) for v in zip(*rows, strict=True)]
            hi = [max(v) for v in zip(*rows, strict=True)]
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself",
                                     fillcolor=color, opacity=0.15, line={"width": 0},
                                     hoverinfo="skip", showlegend=False, legendgroup=method),
                          row=1, col=col)
            fig.add_trace(go.Scatter(x=xs, y=mean(rows), name=method, legendgroup=method, mode="lines",
                                     line={"color": color, "shape": "hv",
                                           "width": 3 if method == OURS else 1.5},
                                     showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="seconds", row=1, col=1)
    fig.update_xaxes(title_text="trials finished (complete + stopped)", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume (accuracy x log10 params)", row=1, col=1)
    fig.update_layout(title=title, width=1300, height=520, template="plotly_white")
    out.mkdir(parents=True, exist_ok=True)
    html, png = out / "hypervolume.html", out / "hypervolume.png"
    fig.write_html(html)
    try:
        fig.write_image(png)
    except Exception as e:  # kaleido needs a browser; the HTML is the plot of record then
        print(f"PNG not written ({type(e).__name__}: {e}); the HTML has the plot", flush=True)
        return [html]
    return [html, png]


# --- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("mnist", "cifar"), default="mnist")
    ap.add_argument("--study", default="studies/cifar_compress.toml",
                    help="cifar: the study file whose space, teacher and recipe are searched")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="mnist: torchvision root (default ../shared/data); cifar: a torchvision "
                         "root or a CIFAR-10 ImageFolder (default: the study's own)")
    ap.add_argument("--train-limit", type=int, default=5000,
                    help="cifar: training images per epoch (default 5000: the reduced budget)")
    ap.add_argument("--val-size", type=int, default=None,
                    help="cifar: validation images, scored after every epoch (default: the study's)")
    ap.add_argument("--epochs", type=int, default=None, help="cifar: student epochs (default: the study's)")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds per method and seed (default 90)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="start at this seed: one process per core, each with its own seeds")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated, of {', '.join(METHODS + VARIANTS)} (default: all but the variants)")
    ap.add_argument("--moasha-priority", choices=("shipped", "ranks"), default="shipped",
                    help="MOASHA's non-dominated priority as Syne Tune ships it, or as ranks")
    ap.add_argument("--threads", type=int, help="torch threads for every method (default: all cores)")
    ap.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kdsearch").expanduser(),
                    help="teacher cache (trained once per seed, before any clock starts)")
    ap.add_argument("--out", type=Path, default=Path("out/bench_peers"), help="plots and raw runs")
    ap.add_argument("--verbose", action="store_true", help="keep the methods' own output")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="RUNS_JSON",
                    help="run nothing: report the runs of earlier invocations together (their "
                         "runs.json; e.g. one process per core, each with its own --first-seed)")
    args = ap.parse_args(argv)
    if args.merge:
        merged = [json.loads(p.read_text()) for p in args.merge]
        runs = [Run(**{**r, "load": tuple(r["load"]),
                       "finished": [Finished(**f) for f in r["finished"]]})
                for m in merged for r in m["runs"]]
        if len({m["ref_params"] for m in merged}) != 1 or len({r.budget for r in runs}) != 1:
            ap.error("--merge: the runs differ in their teacher's size or their budget")
        workload = merged[0]["args"]["workload"]
        report(runs, merged[0]["ref_params"], runs[0].budget, args.out / workload, workload,
               {"merged": [str(p) for p in args.merge]})
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS + VARIANTS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; expected some of {', '.join(METHODS + VARIANTS)}")
    if args.workload == "mnist" and args.data_dir is None:
        args.data_dir = Path("../shared/data")

    import torch

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    base = load_workload(args)
    work = Path(tempfile.mkdtemp(prefix="kd_bench_peers_"))
    common = {"work": str(work), "data_dir": args.data_dir, "cache_dir": args.cache_dir,
              "threads": threads, "priority": args.moasha_priority}

    # The teachers (one per seed: the seed is part of the teacher's key), before any clock.
    ref_params, input_shape = 0.0, (1, 28, 28)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:
        warm = Options(storage=f"sqlite:///{work}/warm.db", study_name=f"warm-{seed}",
                       data_dir=args.data_dir, cache_dir=args.cache_dir, device="cpu")
        with _quiet(not args.verbose):
            ready = prepare(method_spec(base, OURS, seed), warm, log=lambda m: None)
        ref_params = float(ready.teacher.record.params)
        input_shape = ready.data.input_shape
        teacher_acc = ready.teacher.record.val_accuracy
        data_line = (f"{ready.data.name}: {len(ready.data.train):,} train / "
                     f"{len(ready.data.val):,} val images of shape {input_shape}")
    common["space"] = syne_space(base, input_shape)
    grace, factor = moasha_settings(base)
    train = base.student.train
    print(
        f"workload {args.workload} ({base.name}): {data_line}; teacher {int(ref_params):,} params "
        f"(val acc {teacher_acc:.4f}, seed {seeds[-1]})\n"
        f"fairness: every method {args.budget:.0f} s of wall clock per seed, seeds {seeds[0]}..{seeds[-1]}; "
        f"methods in turn, each seed starting one later; one trial at a time; {threads} torch "
        f"threads of {available_cores()} cores "
        f"(kdsearch's engine puts small MLPs on one thread, in every method alike); the same "
        f"data, cached teacher logits and objective (kdsearch's make_objective: val accuracy, "
        f"params; {train.epochs} epochs, batch {train.batch_size}, lr {train.lr}) and the same "
        f"search space ({len(common['space'])} parameters)\n"
        f"early stopping: kdsearch rungs "
        f"{judged_rungs(base.search.early_stopping, train.epochs, train.warmup(), train.lr_schedule)} (min_trials "
        f"{base.search.early_stopping.min_trials}, quantile {base.search.early_stopping.quantile}, "
        f"min_dominators {base.search.early_stopping.min_dominators}, keep "
        f"{base.search.early_stopping.keep:.3g}); MOASHA max_t {train.epochs}, "
        f"grace_period {grace}, reduction_factor {factor:g}, random configurations "
        f"(its own searcher), non-dominated priority {args.moasha_priority}; tuner poll "
        f"{TUNER_SLEEP} s\n"
        f"hypervolume: front of trials trained to the last epoch, reference point (accuracy 0, "
        f"{int(ref_params):,} params = the teacher), axes accuracy x log10 params\n"
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True)

    runs: list[Run] = []
    for seed in seeds:
        # Each seed starts one method later: whatever the first run of a process or a burst of
        # load costs does not fall on one method every time.
        shift = seed % len(methods)
        for method in methods[shift:] + methods[:shift]:
            spec = method_spec(base, method, seed)
            run = RUNNERS[method](spec, method, seed, common, args.budget, not args.verbose)
            runs.append(run)
            tr = trace(run, ref_params)
            within = run.within()
            print(f"seed {seed} {method:15} {len(within):4d} trials finished "
                  f"({sum(f.complete for f in within)} complete) in {args.budget:.0f} s; "
                  f"hypervolume {tr[-1][2]:.4f}; load {run.load[0]:.2f} -> {run.load[1]:.2f}",
                  flush=True)

    report(runs, ref_params, args.budget, args.out / args.workload, args.workload,
           {k: str(v) for k, v in vars(args).items()})


def report(runs: list[Run], ref_params: float, budget: float, out: Path, workload: str,
           settings: dict) -> None:
    """The table, plots, raw runs and last line of a set of runs (one invocation or merged)."""
    c = curves(runs, ref_params, budget)
    n_seeds = len({r.seed for r in runs})
    print(f"\n{'method':15} {'final hypervolume (mean +- sd; min..max)':44} trials  complete  "
          f"t(own final)")
    finals = {}
    for method in c.by_time:
        last = [s[-1] for s in c.by_time[method]]
        finals[method] = statistics.fmean(last)
        sd = statistics.stdev(last) if len(last) > 1 else 0.0
        mine = [r for r in runs if r.method == method]
        n = statistics.fmean(len(r.within()) for r in mine)
        done = statistics.fmean(sum(f.complete for f in r.within()) for r in mine)
        t_own = first_reach(c.times, mean(c.by_time[method]), finals[method])
        print(f"{method:15} {finals[method]:.4f} +- {sd:.4f}; {min(last):.4f}..{max(last):.4f}"
              f"{'':10} {n:6.1f}  {done:8.1f}  {t_own:6.0f} s")

    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps(
        {"args": {"workload": workload, **settings}, "ref_params": ref_params,
         "runs": [asdict(r) for r in runs]}, indent=1))
    files = plot(c, f"bench_peers {workload}: hypervolume, mean of {n_seeds} seeds "
                    f"(band: lowest..highest), {budget:.0f} s each", out)
    print(f"plots: {', '.join(map(str, files))}; raw runs: {out / 'runs.json'}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    peers = {m: v for m, v in finals.items() if m in PEERS}
    if OURS not in finals or not peers:
        print("time_fraction=nan hypervolume_ratio=nan (needs kdsearch and a peer)")
        return
    best = max(peers, key=peers.get)
    t_peer = first_reach(c.times, mean(c.by_time[best]), peers[best])
    for variant in [m for m in VARIANTS if m in finals] + [OURS]:  # kdsearch as shipped last
        t_ours = first_reach(c.times, mean(c.by_time[variant]), peers[best])
        fraction = t_ours / t_peer if t_peer > 0 else math.inf
        print(f"best peer {best}: final hypervolume {peers[best]:.4f} first reached at "
              f"{t_peer:.0f} s; {variant} reaches it at {t_ours:.0f} s "
              f"(time_fraction={fraction:.2f} hypervolume_ratio={finals[variant] / peers[best]:.3f})")
    print(f"time_fraction={fraction:.2f} hypervolume_ratio={finals[OURS] / peers[best]:.3f}")


if __name__ == "__main__":
    main()
