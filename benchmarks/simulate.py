"""Search methods replayed over a recorded table, in simulated time (issue 23).

    python benchmarks/simulate.py --table docs/results/table_cifar_resnet.json --quick
    python benchmarks/simulate.py --table docs/results/table_cifar_resnet.json \\
        --table docs/results/table_cifar_resnet_r1.json --seeds 250 --first-seed 7000 \\
        --methods kdsearch,optuna-default,nsga2,random,moasha,moasha-ranks,morea \\
        --out docs/results/simulate_cifar_resnet_r4/

The second is the latest protocol (docs/PERFORMANCE.md section 5): 250 seeds, because
kdsearch's lead on the best student under 80k params is about 0.2 % and the per-seed ratios
spread by about 1.8 %, so 30 seeds resolve only about 0.6 % (about 40 minutes on one core; split
the methods over two processes, one per core, and `--report` both).

The table (benchmarks/record_table.py writes it) holds every point of a grid study: each
student trained to the end, with its validation and test accuracy and its seconds after every
epoch. A method here never trains anything: a trial of a point looks its numbers up, and each
epoch costs the seconds it took when recorded, so thirty seeds of ten methods replay in
minutes what would take weeks of these two cores (the protocol of HPOBench, YAHPO Gym and
JAHS-Bench-201; Syne Tune's simulator backend works the same way).

W workers run asynchronously (`--workers`, 4 by default): each takes a new trial the moment its
last one ends, and events are handled in the order of simulated time, so every method sees the
study as it would be at that moment (a running trial's finished epochs included). A trial's
last epoch is followed by its test evaluation (its recorded seconds), as in kdsearch's
objective. The space is the table's study file, so every point a method can ask for is in the
table: the Optuna methods suggest through kdsearch's own `suggest_student`, Syne Tune's through
the same space read off it (bench_peers.syne_space).

Methods (`--methods`, all by default):

    kdsearch            as shipped: its TPE, the planned start-up at the centre of T, alpha,
                        lr and batch size, a repeated point not trained again
                        (search/repeats.py), and no early stopping (its default under this
                        study's one-cycle schedule)
    kdsearch-no-plan    the same with Optuna's random start-up (`startup = "random"`)
    kdsearch-drawn      the planned start-up's knobs drawn (`startup_recipe = "drawn"`)
    kdsearch-early-rungs  judged at epochs 1, 3 and 9 (`rungs = [1, 3, 9]`)
    kdsearch-before     kdsearch as shipped until 2026-12-06 (the "kdsearch" of the runs on
                        seeds 1000-1029: drawn start-up knobs, rungs 1, 3, 9, repeats trained)
    kdsearch-rung-6-repeats  as shipped from then until the round on seeds 6000-6029 (one
                        rung after epoch 6, repeats trained); kdsearch-rung-6 and
                        kdsearch-repeats undo one of that round's two changes each
    optuna-default      optuna.create_study's default multi-objective sampler, no stopping
    nsga2               Optuna's NSGAIISampler with its defaults, no stopping
    random              Optuna's RandomSampler, no stopping
    moasha              Syne Tune's MOASHA as shipped (grace period 1, reduction factor 3:
                        its defaults, and kdsearch's rungs 1, 3, 9 under a constant rate)
    moasha-ranks        MOASHA with the non-dominated ranks read in their intended order
    morea               Syne Tune's multi-objective regularized evolution (single fidelity)
    PEER+plan           any peer given kdsearch's start-up students first (an ablation)

Replicates: `--table A --table B` names tables of the same grid trained from different seeds
(record_table.py --replicate). Each seed replays its own draw of them: every point's numbers
from one replicate, drawn from the seed (`realise`; NAS-Bench-201 answers a query with one of
its training seeds the same way), the same for every method at that seed, so comparisons stay
paired. One training run is a draw with about a point of noise, more than the gaps between the
best students; with one table that draw is frozen, and every seed rewards the search that
happens to land on its lucky points alike.

The metric panel (docs/PERFORMANCE.md, "Search benchmark") is defined in `panel`; each run's
finished trials are kept in the output's runs.json.gz, from which `--report runs.json.gz`
recomputes every number (`--report a/runs.json.gz b/runs.json.gz` when the methods were split
over processes, one per core). The last line compares kdsearch with the best peer as shipped on
the panel metric where kdsearch is weakest: `worst_metric=NAME ratio=R ci_low=L`.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import heapq
import io
import json
import logging
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from kdsearch.record import set_trial  # noqa: E402
from kdsearch.search import startup  # noqa: E402
from kdsearch.search.early_stopping import judged_rungs, make_stopper  # noqa: E402
from kdsearch.search.repeats import trained_twin  # noqa: E402
from kdsearch.search.space import suggest_recipe, suggest_student  # noqa: E402
from kdsearch.sizes import arch_params  # noqa: E402
from kdsearch.spec import StudySpec, load_study  # noqa: E402

PEERS = ("optuna-default", "nsga2", "random", "moasha", "moasha-ranks", "morea")
# kdsearch's arms: changes to the search section, its early stopping, and whether it trains
# a repeated point (search/repeats.py), from as shipped
OURS: dict[str, tuple[dict, dict, bool]] = {
    "kdsearch": ({}, {}, True),
    "kdsearch-no-plan": ({"startup": "random"}, {}, True),
    "kdsearch-drawn": ({"startup_recipe": "drawn"}, {}, True),
    "kdsearch-early-rungs": ({}, {"rungs": [1, 3, 9]}, True),
    "kdsearch-before": ({"startup_recipe": "drawn"}, {"rungs": [1, 3, 9]}, False),
    # as shipped from 2026-12-06 until issue 23's round on seeds 6000-6029, and each of that
    # round's two changes undone alone
    "kdsearch-rung-6-repeats": ({}, {"rungs": [6]}, False),
    "kdsearch-rung-6": ({}, {"rungs": [6]}, True),
    "kdsearch-repeats": ({}, {}, False),
}
METHODS = (*OURS, *PEERS)
ABLATIONS = tuple(f"{peer}+plan" for peer in PEERS)
INPUT_SHAPE, NUM_CLASSES = (3, 32, 32), 10


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One point of the grid, trained to the end when the table was recorded."""

    params: dict[str, Any]  # the trial's Optuna params (suggest_student's names)
    n_params: int
    macs: int
    val: tuple[float, ...]  # validation accuracy after each epoch
    test: tuple[float, ...]  # test accuracy after each epoch (reports only, never selected on)
    seconds: tuple[float, ...]  # seconds of each epoch: training plus its validation pass
    test_seconds: float  # one test evaluation, paid once by a trial that completes


@dataclass(frozen=True)
class Table:
    rows: tuple[Row, ...]
    study: str  # the grid study file the table was recorded from
    teacher_params: int
    epochs: int
    meta: dict = field(default_factory=dict)

    def index(self) -> dict[tuple, Row]:
        return {point_key(r.params): r for r in self.rows}

    def mean_trial_seconds(self) -> float:
        return statistics.fmean(sum(r.seconds) + r.test_seconds for r in self.rows)


def point_key(params: dict[str, Any]) -> tuple:
    """A point's params as a table key: order-free, and an int knob equal to its float."""
    return tuple(sorted((k, float(v) if isinstance(v, int | float) and not isinstance(v, bool)
                         else v) for k, v in params.items()))


def load_table(path: Path) -> Table:
    raw = json.loads(Path(path).read_text())
    rows = tuple(Row(params=r["params"], n_params=r["n_params"], macs=r["macs"],
                     val=tuple(r["val"]), test=tuple(r["test"]), seconds=tuple(r["seconds"]),
                     test_seconds=r["test_seconds"]) for r in raw["rows"])
    return Table(rows, raw["study"], raw["teacher_params"], raw["epochs"], raw.get("meta", {}))


def load_tables(paths: Sequence[Path]) -> list[Table]:
    """Replicates of one grid: the same points, epochs, study file and teacher, or an error."""
    tables = [load_table(p) for p in paths]
    first = tables[0]
    for path, other in zip(paths[1:], tables[1:], strict=True):
        if (set(other.index()) != set(first.index()) or other.epochs != first.epochs
                or other.teacher_params != first.teacher_params
                or Path(other.study).name != Path(first.study).name):
            raise SystemExit(f"simulate: {path} is not a replicate of {paths[0]} (another grid, "
                             "epochs or teacher, or points missing)")
    return tables


def realise(tables: Sequence[Table], seed: int) -> Table:
    """The table seed `seed` replays: each point's row from one replicate, drawn from the seed."""
    if len(tables) == 1:
        return tables[0]
    rng = random.Random(seed)
    indexes = [t.index() for t in tables]
    rows = tuple(indexes[rng.randrange(len(tables))][point_key(r.params)]
                 for r in tables[0].rows)
    return replace(tables[0], rows=rows)


def mean_trial_seconds(tables: Sequence[Table]) -> float:
    """A full trial's mean seconds, over every point of every replicate."""
    return statistics.fmean(t.mean_trial_seconds() for t in tables)


def budget_seconds(tables: Sequence[Table], trials: float, workers: int) -> float:
    """`trials` mean full-trial times, shared by the workers."""
    return trials * mean_trial_seconds(tables) / workers


def table_spec(table: Table, table_path: Path) -> StudySpec:
    """The grid study the table came from, as a search: its sampler, stopping and start-up
    are kdsearch's as shipped (a grid study file fixes only the space)."""
    path = Path(table.study)
    if not path.is_absolute():
        path = (Path(table_path).resolve().parent / path).resolve()
    spec = load_study(str(path))
    search = spec.search.model_copy(update={"sampler": "tpe", "startup": "spread", "baselines": [],
                                            "repeats": 1, "n_trials": 1_000_000})
    return spec.model_copy(update={"search": search})


# --- the simulated clock ---------------------------------------------------------------------


@dataclass
class Finished:
    """A trial that ended within the budget, as the panel reads it."""

    seconds: float  # simulated time at which it ended
    complete: bool  # trained to the last epoch (a stopped trial is never on a front)
    n_params: int
    val: float  # validation accuracy at its last epoch
    test: float  # test accuracy at its last epoch
    epochs: int
    params: dict


@dataclass
class Run:
    method: str
    seed: int
    budget: float
    workers: int
    finished: list[Finished] = field(default_factory=list)
    wall: float = 0.0  # real seconds the replay took (the methods' own overhead)


class Method:
    """What the clock asks of a search method: a point to try, and whether a trial goes on."""

    def ask(self) -> tuple[Any, dict]:  # (handle, the trial's params)
        raise NotImplementedError

    def report(self, handle: Any, epoch: int, val: float) -> bool:  # False: stop it now
        return True

    def tell(self, handle: Any, complete: bool, val: float, row: Row) -> None:
        pass


def replay(method: Method, table: Table, budget: float, workers: int, run: Run) -> Run:
    """Run `method` for `budget` simulated seconds on `workers` asynchronous workers."""
    index, epochs = table.index(), table.epochs
    events: list[tuple[float, int, int, Any, Row, int]] = []  # (time, order, worker, ...)
    order = 0

    def start(worker: int, now: float) -> None:
        nonlocal order
        handle, params = method.ask()
        row = index.get(point_key(params))
        if row is None:
            raise KeyError(f"{run.method} asked for a point the table does not hold: {params}")
        order += 1
        heapq.heappush(events, (now + row.seconds[0], order, worker, handle, row, 1))

    for w in range(workers):
        start(w, 0.0)
    while events:
        now, _, worker, handle, row, epoch = heapq.heappop(events)
        if now > budget:
            break
        val = row.val[epoch - 1]
        last = epoch == epochs
        goes_on = method.report(handle, epoch, val)
        if last or not goes_on:
            end = now + (row.test_seconds if last else 0.0)
            method.tell(handle, last, val, row)
            if end <= budget:
                run.finished.append(Finished(end, last, row.n_params, val, row.test[epoch - 1],
                                             epoch, row.params))
            start(worker, now)
        else:
            order += 1
            heapq.heappush(events, (now + row.seconds[epoch], order, worker, handle, row,
                                    epoch + 1))
    return run


# --- Optuna's samplers and kdsearch ------------------------------------------------------------


class OptunaMethod(Method):
    """A study in memory, asked and told as `run_study` does; with `stopper`, kdsearch's
    early-stopping hook judges each epoch from the study's records, as in a real run."""

    def __init__(self, spec: StudySpec, sampler: optuna.samplers.BaseSampler,
                 stop: bool, first: Sequence[dict] = (), skip_repeats: bool = False):
        self.spec, self.skip_repeats = spec, skip_repeats
        self.study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        for params in first:
            self.study.enqueue_trial(params)
        train = spec.student.train
        self.stopper = (make_stopper(spec.search.early_stopping, train.epochs,
                                     warmup=train.warmup(), schedule=train.lr_schedule)
                        if stop else None)
        self.curves: dict[int, list[float]] = {}

    def ask(self) -> tuple[Any, dict]:
        """The next point to train; with `skip_repeats`, a point that repeats a finished trial
        ends at once as the engine ends it (search/repeats.py: PRUNED, no time on the clock)
        and the worker asks again, up to the study's trial target."""
        for _ in range(self.spec.search.n_trials):
            trial = self.study.ask()
            choice = suggest_student(trial, self.spec.student.space, INPUT_SHAPE)
            suggest_recipe(trial, self.spec.student.train)
            twin = trained_twin(trial, self.spec) if self.skip_repeats else None
            if twin is None:
                break
            set_trial(trial, repeat_of=twin, stopped_reason=f"repeat of trial {twin}")
            self.study.tell(trial, state=TrialState.PRUNED)
        else:  # as the engine's study ends at its trial target
            raise RuntimeError(f"{self.spec.search.n_trials} repeats in a row: the space is used up")
        set_trial(trial, params=arch_params(choice.arch, INPUT_SHAPE, NUM_CLASSES))
        self.curves[trial.number] = []
        return trial, dict(trial.params)

    def report(self, trial: optuna.Trial, epoch: int, val: float) -> bool:
        curve = self.curves[trial.number]
        curve.append(val)
        set_trial(trial, val_curve=tuple(curve))
        if self.stopper is None:
            return True
        try:
            self.stopper(trial, epoch, val)
        except optuna.TrialPruned:
            return False
        return True

    def tell(self, trial: optuna.Trial, complete: bool, val: float, row: Row) -> None:
        if complete:
            self.study.tell(trial, (val, float(row.n_params)))
        else:
            self.study.tell(trial, state=TrialState.PRUNED)


def _planned(spec: StudySpec, seed: int) -> list[dict]:
    return [params for _, params in startup.plan(spec, INPUT_SHAPE, NUM_CLASSES, seed)]


def kdsearch_method(spec: StudySpec, seed: int, search: dict | None = None,
                    early: dict | None = None, skip_repeats: bool = True, stop: bool = True,
                    method: type[OptunaMethod] = OptunaMethod,
                    tpe: dict | None = None) -> OptunaMethod:
    """kdsearch with `search` and `early` (early stopping) settings changed from as shipped,
    or training repeated points (`skip_repeats` False: as before issue 23's round on seeds
    6000-6029); simulate_variants.py passes no stopping, its own `method`, or TPE's own
    settings, `tpe`, with `extra_startup` random draws after the plan."""
    from kdsearch.study.runner import make_sampler

    s = spec.search.model_copy(update=search or {})
    s = s.model_copy(update={"early_stopping": s.early_stopping.model_copy(update=early or {})})
    spec = spec.model_copy(update={"seed": seed, "search": s})
    knobs = dict(tpe or {})
    if "extra_startup" in knobs:  # random draws after the plan, before TPE models the study
        knobs["n_startup_trials"] = startup.startup_trials(spec) + knobs.pop("extra_startup")
    sampler = make_sampler(spec, 0, _planned(spec, seed), tpe=knobs)
    return method(spec, sampler, stop=stop, skip_repeats=skip_repeats)


def optuna_method(spec: StudySpec, name: str, seed: int, plan: bool) -> OptunaMethod:
    samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "optuna-default": lambda: _default_sampler(seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    first = _planned(spec.model_copy(update={"seed": seed}), seed) if plan else ()
    return OptunaMethod(spec, samplers[name](), stop=False, first=first)


def _default_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """The sampler optuna.create_study picks for two objectives, seeded."""
    sampler = optuna.create_study(directions=["maximize", "minimize"]).sampler
    return type(sampler)(seed=seed)


# --- Syne Tune ---------------------------------------------------------------------------------


class SyneMethod(Method):
    """A Syne Tune scheduler called as its Tuner calls it (suggest, on_trial_add,
    on_trial_result, on_trial_complete / on_trial_remove)."""

    def __init__(self, scheduler, table: Table, fixed: dict):
        self.scheduler, self.fixed, self.next_id = scheduler, fixed, 0
        self.rows = table.index()
        self.names = {}  # family -> the params its rows name
        for r in table.rows:
            self.names.setdefault(r.params.get("family"), set(r.params))

    def _params(self, config: dict) -> dict:
        config = {**self.fixed, **config}
        return {k: v for k, v in config.items() if k in self.names[config.get("family")]}

    def ask(self) -> tuple[Any, dict]:
        import datetime

        from syne_tune.backend.trial_status import Trial

        suggestion = self.scheduler.suggest()
        trial = Trial(trial_id=self.next_id, config=suggestion.config,
                      creation_time=datetime.datetime.now())
        self.next_id += 1
        self.scheduler.on_trial_add(trial)
        trial.kd_params = self._params(suggestion.config)
        return trial, trial.kd_params

    def report(self, trial: Any, epoch: int, val: float) -> bool:
        from syne_tune.optimizer.scheduler import SchedulerDecision

        result = {"epoch": epoch, "error": 1.0 - val, "params": float(self._n_params(trial))}
        return self.scheduler.on_trial_result(trial, result) != SchedulerDecision.STOP

    def tell(self, trial: Any, complete: bool, val: float, row: Row) -> None:
        if complete:
            self.scheduler.on_trial_complete(trial, {"epoch": len(row.val), "error": 1.0 - val,
                                                     "params": float(row.n_params)})
        else:
            self.scheduler.on_trial_remove(trial)

    def _n_params(self, trial: Any) -> int:
        return self.rows[point_key(trial.kd_params)].n_params


def syne_method(spec: StudySpec, table: Table, name: str, seed: int, plan: bool) -> SyneMethod:
    from bench_peers import _moasha, syne_space

    space = syne_space(spec, INPUT_SHAPE)
    fixed = {k: v for k, v in space.items() if not hasattr(v, "sample")}
    first = _planned(spec.model_copy(update={"seed": seed}), seed) if plan else []
    np.random.seed(seed)
    if name == "morea":
        from syne_tune.optimizer.schedulers.multiobjective.multi_objective_regularized_evolution import (  # noqa: E501
            MultiObjectiveRegularizedEvolution,
        )
        from syne_tune.optimizer.schedulers.single_fidelity_scheduler import (
            SingleFidelityScheduler,
        )

        # Syne Tune leaves a key a point to evaluate does not name as its domain (0.16), and
        # the other family's keys are never named: give them a drawn value (unused by the
        # trial, SyneMethod._params drops them)
        rng = np.random.RandomState(seed)
        first = [{**{k: v.sample(random_state=rng) for k, v in space.items()
                     if hasattr(v, "sample") and k not in point}, **point} for point in first]
        searcher = MultiObjectiveRegularizedEvolution(space, points_to_evaluate=first or None,
                                                      random_seed=seed)
        scheduler = SingleFidelityScheduler(space, metrics=["error", "params"], do_minimize=True,
                                            searcher=searcher, random_seed=seed)
    else:
        scheduler = _moasha(spec, space, seed, "ranks" if name == "moasha-ranks" else "shipped")
        if first:
            _first_then(scheduler, first)
    return SyneMethod(scheduler, table, fixed)


def _first_then(scheduler, first: list[dict]) -> None:
    """MOASHA (which draws its configurations itself) suggesting `first` before its own."""
    from syne_tune.optimizer.scheduler import TrialSuggestion

    queue, original = list(first), scheduler.suggest

    def suggest():
        return TrialSuggestion.start_suggestion(dict(queue.pop(0))) if queue else original()

    scheduler.suggest = suggest


def make_method(name: str, spec: StudySpec, table: Table, seed: int) -> Method:
    base, plan = (name[: -len("+plan")], True) if name.endswith("+plan") else (name, False)
    if base in OURS:
        return kdsearch_method(spec, seed, *OURS[base])
    if base in ("optuna-default", "nsga2", "random"):
        return optuna_method(spec, base, seed, plan)
    if base in ("moasha", "moasha-ranks", "morea"):
        return syne_method(spec, table, base, seed, plan)
    raise SystemExit(f"simulate: unknown method {name!r}; known: {', '.join(METHODS)} "
                     "(and PEER+plan)")


# --- the metric panel ------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """The metrics of docs/PERFORMANCE.md's search benchmark, fixed before the runs.

    Sizes count between `low` and `high` params (1/100 and 1/2 of the teacher's): a student
    below `low` counts as `low`, one above `high` not at all. Accuracy is validation accuracy
    (what every method selects on) above the chance floor; the reference point is (high,
    chance) for every method and seed. Hypervolumes are divided by the box's area, so 1.0 is a
    perfect front.
    """

    low: float
    high: float
    chance: float
    small: int = 25_000  # "best test accuracy at <= small params, selected on validation"
    medium: int = 80_000

    @classmethod
    def of(cls, table: Table) -> Panel:
        return cls(table.teacher_params / 100, table.teacher_params / 2, 1.0 / NUM_CLASSES)

    def hv(self, points: Iterable[tuple[float, float]], log: bool = True) -> float:
        """Area dominated by (n_params down, accuracy up) points in the box, normalised."""
        scale = math.log10 if log else float
        lo, hi = scale(self.low), scale(self.high)
        pts = sorted((scale(max(n, self.low)), a) for n, a in points
                     if n <= self.high and a > self.chance)
        area, best = 0.0, self.chance
        for i, (x, a) in enumerate(pts):
            best = max(best, a)
            nxt = pts[i + 1][0] if i + 1 < len(pts) else hi
            area += (nxt - x) * (best - self.chance)
        return area / ((hi - lo) * (1.0 - self.chance))

    def best_test(self, done: Iterable[Finished], limit: int) -> float:
        """Test accuracy of the complete trial of at most `limit` params that validation picks
        (chance when there is none: a method that found nothing there scores nothing)."""
        pick = max(((f.val, f.test) for f in done if f.complete and f.n_params <= limit),
                   default=(0.0, self.chance))
        return pick[1]


METRICS = ("hv_log", "hv_linear", "test_at_25k", "test_at_80k", "time_to_95")
HIGHER_IS_BETTER = {"hv_log": True, "hv_linear": True, "test_at_25k": True, "test_at_80k": True,
                    "time_to_95": False}


def metrics_at(run: Run, panel: Panel, until: float) -> dict[str, float]:
    done = [f for f in run.finished if f.seconds <= until and f.complete]
    pts = [(f.n_params, f.val) for f in done]
    return {"hv_log": panel.hv(pts), "hv_linear": panel.hv(pts, log=False),
            "test_at_25k": panel.best_test(done, panel.small),
            "test_at_80k": panel.best_test(done, panel.medium)}


def time_to(run: Run, panel: Panel, target: float) -> float:
    """Simulated seconds until the log hypervolume first reaches `target` (inf: never)."""
    pts = []
    for f in sorted(run.finished, key=lambda f: f.seconds):
        if f.complete:
            pts.append((f.n_params, f.val))
            if panel.hv(pts) >= target:
                return f.seconds
    return math.inf


def mean_curve(runs: Sequence[Run], panel: Panel, grid: Sequence[float]) -> list[float]:
    """The mean over seeds of hv_log at each time of `grid`."""
    curves = []
    for run in runs:
        done = sorted((f for f in run.finished if f.complete), key=lambda f: f.seconds)
        values, pts, i = [], [], 0
        for t in grid:
            while i < len(done) and done[i].seconds <= t:
                pts.append((done[i].n_params, done[i].val))
                i += 1
            values.append(panel.hv(pts))
        curves.append(values)
    return [statistics.fmean(c[k] for c in curves) for k in range(len(grid))]


def time_fraction(ours: Sequence[float], theirs: Sequence[float], grid: Sequence[float]) -> float:
    """When our mean curve first reaches the peer's final value, over when the peer's did."""
    target = theirs[-1]
    t_peer = next(t for t, v in zip(grid, theirs, strict=True) if v >= target)
    t_ours = next((t for t, v in zip(grid, ours, strict=True) if v >= target), math.inf)
    return t_ours / t_peer if t_peer > 0 else math.inf


def table_best(table: Table, panel: Panel) -> dict[str, float]:
    """The panel's metrics had every point of the table been trained to the end."""
    run = Run("table", 0, 0.0, 1, [Finished(0.0, True, r.n_params, r.val[-1], r.test[-1],
                                            table.epochs, r.params) for r in table.rows])
    return metrics_at(run, panel, 0.0)


def final_metrics(run: Run, panel: Panel, best_hv: float) -> dict[str, float]:
    """The panel at the end of the budget; a run that never reaches 95 % of `best_hv` counts
    as twice the budget (see paired_ratio)."""
    out = metrics_at(run, panel, run.budget)
    out["time_to_95"] = min(time_to(run, panel, 0.95 * best_hv), 2 * run.budget)
    return out


def paired_ratio(ours: Sequence[float], theirs: Sequence[float],
                 higher: bool) -> tuple[float, float, float]:
    """Mean of the per-seed ratios (ours over theirs; theirs over ours when lower is better)
    and its 95 % t-interval. A time that never came counts as twice the budget (set by
    final_metrics), so that a method that never reaches a target loses without an infinite ratio."""
    ratios = [(a / b if higher else b / a) for a, b in zip(ours, theirs, strict=True)
              if a > 0 and b > 0]
    if not ratios:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(ratios)
    if len(ratios) < 2:
        return mean, math.nan, math.nan
    from scipy import stats  # optuna's and Syne Tune's dependency

    half = stats.t.ppf(0.975, len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios))
    return mean, mean - half, mean + half


# --- running and reporting --------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("syne_tune").setLevel(logging.ERROR)
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def simulate(tables: Sequence[Table], spec: StudySpec, methods: Sequence[str],
             seeds: Sequence[int], budget: float, workers: int,
             progress: Callable[[str], None] = print,
             make: Callable[[str, StudySpec, Table, int], Method] = make_method) -> list[Run]:
    """Each method replayed on each seed, over that seed's draw of the replicates; `make`
    builds a method from its name (the arms of this file by default; simulate_variants.py
    passes kdsearch's variants)."""
    runs = []
    for method in methods:
        for seed in seeds:
            table = realise(tables, seed)
            run = Run(method, seed, budget, workers)
            start = time.perf_counter()
            with _quiet():
                replay(make(method, spec, table, seed), table, budget, workers, run)
            run.wall = time.perf_counter() - start
            runs.append(run)
            progress(f"{method:<22} seed {seed:>5}: {len(run.finished):4d} trials ended, "
                     f"{sum(f.complete for f in run.finished):3d} complete ({run.wall:.1f} s)")
    return runs


def seed_tops(tables: Sequence[Table], seeds: Iterable[int], panel: Panel) -> dict[int, dict]:
    """Each seed's table_best: what a method that trained every point of that seed's draw
    would score (the target of its time_to_95, and the ceiling of its ratios)."""
    return {seed: table_best(realise(tables, seed), panel) for seed in set(seeds)}


def report(runs: list[Run], tables: Sequence[Table],
           out: Callable[[str], None] = print) -> dict:
    """The panel's table, each peer against kdsearch, and the closing line."""
    table = tables[0]
    panel = Panel.of(table)
    # what a method that trained every point would score: the target of time_to_95, and the
    # headroom below (no ratio against a peer can exceed the table's score over the peer's)
    tops = seed_tops(tables, (r.seed for r in runs), panel)
    top = {m: statistics.fmean(t[m] for t in tops.values()) for m in METRICS[:-1]}
    best_hv = top["hv_log"]
    by_method: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        by_method.setdefault(run.method, {})[run.seed] = final_metrics(
            run, panel, tops[run.seed]["hv_log"])
    drawn = (f" (mean over the seeds' draws of {len(tables)} replicates)"
             if len(tables) > 1 else "")
    out(f"table: {len(table.rows)} points, best front hv_log {best_hv:.4f}{drawn}; size box "
        f"{panel.low:,.0f}-{panel.high:,.0f} params; budget {runs[0].budget:,.0f} s "
        f"simulated on {runs[0].workers} workers")
    if len(tables) > 1:
        out(replicate_noise(tables))
    out(f"{'method':<22}" + "".join(f"{m:>14}" for m in METRICS) + "   seeds")
    for method, seeds in by_method.items():
        means = {m: statistics.fmean(s[m] for s in seeds.values()) for m in METRICS}
        out(f"{method:<22}" + "".join(f"{means[m]:14.4f}" for m in METRICS) + f"   {len(seeds)}")
    out(f"{'(the table, all points)':<22}" + "".join(f"{top[m]:14.4f}" for m in METRICS[:-1]))
    out(f"{'seeds at the table':<22}" + "".join(f"{m:>14}" for m in METRICS[:-1]))
    for method, seeds in by_method.items():
        out(f"  {method:<20}" + "".join(
            f"{sum(v[m] >= tops[s][m] - 1e-9 for s, v in seeds.items()):>14}"
            for m in METRICS[:-1]))
    for k, t in enumerate(tables):
        for limit in (panel.small, panel.medium):
            out((f"replicate {k}, " if len(tables) > 1 else "") + selection_noise(t, limit))
    out("share of ended trials that repeat a point tried before (mean over seeds): " + ", ".join(
        f"{m} {statistics.fmean(repeated(r) for r in runs if r.method == m):.2f}"
        for m in by_method))
    # test_at_25k and test_at_80k pick among what was trained: fewer distinct students there
    # means fewer chances at the noise-level best (docs/PERFORMANCE.md section 5)
    out(f"distinct students trained to the end, at or below {panel.small:,.0f} / "
        f"{panel.medium:,.0f} params (mean over seeds): " + ", ".join(
            f"{m} " + " / ".join(
                f"{statistics.fmean(distinct_complete(r, limit) for r in runs if r.method == m):.1f}"
                for limit in (panel.small, panel.medium))
            for m in by_method))
    draws = {seed: realise(tables, seed) for seed in {r.seed for r in runs}}
    out(f"near-best students trained to the end (within 2 standard errors of the seed's draw's "
        f"best validation), at or below {panel.small:,.0f} / {panel.medium:,.0f} params, of "
        f"how many (mean over seeds): " + ", ".join(
            f"{m} " + " / ".join(
                "{:.1f} of {:.1f}".format(*(statistics.fmean(x) for x in zip(
                    *(near_best_trained(r, draws[r.seed], limit)
                      for r in runs if r.method == m), strict=True)))
                for limit in (panel.small, panel.medium))
            for m in by_method))
    summary: dict[str, Any] = {"best_hv": best_hv, "ratios": {}}
    if "kdsearch" not in by_method:
        return summary
    ours = by_method["kdsearch"]
    peers = [m for m in by_method if m in PEERS]
    worst = None
    out("kdsearch / best peer as shipped (per-seed paired ratios, mean and 95 % interval):")
    for metric in METRICS:
        higher = HIGHER_IS_BETTER[metric]

        def mean_of(method: str, metric: str = metric) -> float:
            return statistics.fmean(s[metric] for s in by_method[method].values())

        if not peers:
            break
        best = (max if higher else min)(peers, key=mean_of)
        common = sorted(set(ours) & set(by_method[best]))
        theirs = [by_method[best][s][metric] for s in common]
        ratio, low, high = paired_ratio([ours[s][metric] for s in common], theirs, higher)
        summary["ratios"][metric] = {"peer": best, "ratio": ratio, "ci_low": low, "ci_high": high}
        line = f"  {metric:<12} vs {best:<16} ratio {ratio:.4f}  [{low:.4f}, {high:.4f}]"
        if metric in top:
            # the ceiling: a method that scored the table's best on every seed, against the
            # same peer. Where its interval reaches 1, no method that selects on validation can
            # be shown ahead of that peer on this metric, however it searches.
            c_ratio, c_low, c_high = paired_ratio([tops[s][metric] for s in common], theirs,
                                                  higher)
            summary["ratios"][metric]["ceiling"] = {"ratio": c_ratio, "ci_low": c_low,
                                                    "ci_high": c_high}
            line += f"   ceiling {c_ratio:.4f} [{c_low:.4f}, {c_high:.4f}]"
        out(line)
        if worst is None or ratio < worst[1]:
            worst = (metric, ratio, low)
    grid = [runs[0].budget * k / 200 for k in range(1, 201)]
    curves = {m: mean_curve([r for r in runs if r.method == m], panel, grid) for m in by_method}
    out("time for kdsearch's mean hv_log to reach each peer's final mean, over the peer's time:")
    summary["time_fraction"] = {}
    for peer in peers:
        frac = time_fraction(curves["kdsearch"], curves[peer], grid)
        summary["time_fraction"][peer] = frac
        out(f"  {peer:<16} {frac:.2f}")
    if worst is not None:
        # four decimals: a lead of a few tenths of a percent is what is measured under 80k
        out(f"worst_metric={worst[0]} ratio={worst[1]:.4f} ci_low={worst[2]:.4f}")
        summary["worst"] = worst
    return summary


def repeated(run: Run) -> float:
    """The share of a run's ended trials whose point an earlier one had already tried."""
    seen: set[tuple] = set()
    repeats = 0
    for f in sorted(run.finished, key=lambda f: f.seconds):
        key = point_key(f.params)
        repeats += key in seen
        seen.add(key)
    return repeats / len(run.finished) if run.finished else 0.0


def distinct_complete(run: Run, limit: float) -> int:
    """How many different points of at most `limit` params a run trained to the end."""
    return len({point_key(f.params) for f in run.finished if f.complete and f.n_params <= limit})


def _near_rows(rows: Sequence[Row], images: int) -> tuple[float, float, list[Row]]:
    """(the best final validation accuracy of `rows`, its binomial standard error on `images`
    validation images, the rows within two standard errors of it)."""
    top = max(r.val[-1] for r in rows)
    se = math.sqrt(top * (1 - top) / images)
    return top, se, [r for r in rows if r.val[-1] >= top - 2 * se]


def near_best(table: Table, limit: float) -> set[tuple]:
    """The points of at most `limit` params that validation cannot tell from the table's best
    one there: within two standard errors of a binomial accuracy on the validation images."""
    rows = [r for r in table.rows if r.n_params <= limit]
    images = table.meta.get("val_images")
    if not rows or not images:
        return set()
    return {point_key(r.params) for r in _near_rows(rows, images)[2]}


def near_best_trained(run: Run, draw: Table, limit: float) -> tuple[int, int]:
    """(how many of the draw's near-best points at or below `limit` the run trained to the
    end, how many there are): a best-test metric's pick is as good as its chances among them."""
    near = near_best(draw, limit)
    trained = {point_key(f.params) for f in run.finished if f.complete}
    return len(near & trained), len(near)


def replicate_noise(tables: Sequence[Table]) -> str:
    """How far each replicate's final accuracies are from the first's, point by point: the
    noise of one training run that a single table freezes."""
    from scipy import stats

    first = tables[0].index()
    parts = []
    for k, other in enumerate(tables[1:], 1):
        pairs = [(first[key], row) for key, row in other.index().items()]
        val = [b.val[-1] - a.val[-1] for a, b in pairs]
        test = [b.test[-1] - a.test[-1] for a, b in pairs]
        tau = stats.kendalltau([a.val[-1] for a, _ in pairs], [b.val[-1] for _, b in pairs])[0]
        parts.append(f"replicate {k} - replicate 0 over {len(pairs)} points: validation "
                     f"{statistics.fmean(val):+.4f} mean, {statistics.fmean(map(abs, val)):.4f} "
                     f"mean absolute; test {statistics.fmean(test):+.4f}, "
                     f"{statistics.fmean(map(abs, test)):.4f}; Kendall tau of the final "
                     f"validation accuracies {tau:.3f}")
    return "\n".join(parts)


def selection_noise(table: Table, limit: int) -> str:
    """How many of the table's students of at most `limit` params validation cannot tell from
    its best one (within two standard errors of a binomial accuracy on the validation images),
    and their test accuracies: the spread a best-test metric draws from by chance."""
    rows = [r for r in table.rows if r.n_params <= limit]
    if not rows:
        return f"<= {limit:,} params: no student in the table"
    images = table.meta.get("val_images")
    if not images:
        return f"<= {limit:,} params: the table does not say how many validation images it has"
    top, se, near = _near_rows(rows, images)
    return (f"<= {limit:,} params: {len(near)} of {len(rows)} students within 2 standard "
            f"errors ({se:.4f} on {images:,} images) of the best validation accuracy {top:.4f}; "
            f"their test accuracy {min(r.test[-1] for r in near):.4f} to "
            f"{max(r.test[-1] for r in near):.4f}")


def save_runs(runs: list[Run], path: Path, table_paths: Sequence[Path]) -> None:
    """JSON, gzipped when the name ends in .gz (30 seeds of 15 arms: 17 MB, 0.7 MB gzipped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    named = [str(p) for p in table_paths]
    # one table is written as before ("table"), so that older runs and newer read alike
    where = {"table": named[0]} if len(named) == 1 else {"tables": named}
    text = json.dumps({**where, "runs": [asdict(r) for r in runs]})
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def load_runs(path: Path) -> tuple[list[Run], list[Path]]:
    path = Path(path)
    data = path.read_bytes()
    raw = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
    runs = []
    for r in raw["runs"]:
        finished = [Finished(**f) for f in r.pop("finished")]
        runs.append(Run(**r, finished=finished))
    return runs, [Path(p) for p in raw.get("tables", [raw.get("table")])]


def load_all_runs(paths: Sequence[Path]) -> tuple[list[Run], list[Path]]:
    """Runs of several files, which must replay the same tables with the same budget, and no
    (method, seed) twice: otherwise the paired ratios would mix incomparable runs."""
    runs: list[Run] = []
    tables = set()
    for path in paths:
        more, table_paths = load_runs(path)
        runs += more
        tables.add(tuple(str(p) for p in table_paths))
    if len(tables) > 1:
        raise SystemExit("the runs replay different tables: "
                         + "; ".join(", ".join(t) for t in sorted(tables)))
    if len({(r.budget, r.workers) for r in runs}) > 1:
        raise SystemExit("the runs replay different budgets or numbers of workers")
    keys = [(r.method, r.seed) for r in runs]
    if len(set(keys)) < len(keys):
        raise SystemExit("a method and seed appear twice in the runs")
    return runs, [Path(p) for p in tables.pop()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, action="append",
                    help="the recorded table (JSON); again for each replicate of its grid")
    ap.add_argument("--methods", default=",".join(METHODS + ABLATIONS),
                    help="comma-separated (default: all, ablations included); a peer with "
                    "+plan gets kdsearch's start-up students first")
    ap.add_argument("--seeds", type=int, default=30,
                    help="how many (default 30); a lead of 0.2 %% needs about 250 (module doc)")
    ap.add_argument("--first-seed", type=int, default=1000,
                    help="seeds first-seed .. first-seed + seeds - 1 (none used in development)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--budget-trials", type=float, default=40.0,
                    help="budget in mean full-trial times of the whole table, over all workers")
    ap.add_argument("--quick", action="store_true",
                    help="5 seeds of the methods as shipped, no ablations: a few minutes")
    ap.add_argument("--out", type=Path, help="folder for runs.json.gz (raw runs) and report.txt")
    ap.add_argument("--report", type=Path, nargs="+",
                    help="recompute the report from runs.json(.gz) files of the same table (one "
                    "per process, when methods were split over cores)")
    args = ap.parse_args(argv)
    if args.report:
        runs, table_paths = load_all_runs(args.report)
        report(runs, load_tables(table_paths))
        return 0
    if args.table is None:
        ap.error("--table is required (or --report)")
    tables = load_tables(args.table)
    table = tables[0]
    spec = table_spec(table, args.table[0])
    seeds = list(range(args.first_seed, args.first_seed + (5 if args.quick else args.seeds)))
    methods = ["kdsearch", *PEERS] if args.quick else [m for m in args.methods.split(",") if m]
    budget = budget_seconds(tables, args.budget_trials, args.workers)
    train = spec.student.train
    rungs = judged_rungs(spec.search.early_stopping, train.epochs, train.warmup(),
                         train.lr_schedule)
    print(f"{len(table.rows)} points x {len(tables)} replicate(s), {table.epochs} epochs, "
          f"mean trial {mean_trial_seconds(tables):.0f} s; budget {budget:,.0f} s on "
          f"{args.workers} workers; kdsearch judges at epochs {rungs}; seeds {seeds[0]}-{seeds[-1]}")
    runs = simulate(tables, spec, methods, seeds, budget, args.workers)
    if args.out:
        save_runs(runs, args.out / "runs.json.gz", args.table)
    lines: list[str] = []
    report(runs, tables, out=lambda s: (print(s), lines.append(s)))
    if args.out:
        (args.out / "report.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
