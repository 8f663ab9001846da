"""kdsearch's stopping and start-up variants against the best peers, over the recorded table.

    python benchmarks/simulate_variants.py --table docs/results/table_cifar_resnet.json \\
        --seeds 0-29

Development of the method after the panel's runs (docs/PERFORMANCE.md section 5): each variant
changes one or two settings of kdsearch as shipped ([search.early_stopping], the start-up's
recipe, the rule for repeats, TPE's knobs, refining the front), and is compared with the best
peers (NSGA-II, Optuna's default sampler and MO-REA, `--peers`) on the panel, paired by seed, as
simulate.py compares the arms; `near80` counts the near-best students at or below 80k params
each arm trained (simulate.py's report). Develop on seeds the reported runs did not use (0-29,
100-199); a change that is kept is then shown on fresh seeds with simulate.py.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import optuna

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import simulate as S  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

# name: (early_stopping overrides, search overrides, stop)
VARIANTS: dict[str, tuple[dict, dict, bool]] = {
    "shipped": ({}, {}, True),
    "centre": ({}, {"startup_recipe": "centre"}, True),
    "after-warmup": ({"after_warmup": True}, {}, True),
    "after-warmup+centre": ({"after_warmup": True}, {"startup_recipe": "centre"}, True),
    "rungs-3-5+centre": ({"rungs": [3, 5]}, {"startup_recipe": "centre"}, True),
    "keep-0.5+centre": ({"keep": 0.5}, {"startup_recipe": "centre"}, True),
    "after-warmup+keep-0.5+centre": ({"after_warmup": True, "keep": 0.5},
                                     {"startup_recipe": "centre"}, True),
    "after-warmup+min-10+centre": ({"after_warmup": True, "min_trials": 10},
                                   {"startup_recipe": "centre"}, True),
    "after-warmup+keep-0.5+min-10+centre": ({"after_warmup": True, "keep": 0.5,
                                             "min_trials": 10}, {"startup_recipe": "centre"},
                                            True),
    "rung-5+centre": ({"rungs": [5]}, {"startup_recipe": "centre"}, True),
    "rung-6+centre": ({"rungs": [6]}, {"startup_recipe": "centre"}, True),
    "after-warmup+dominators-2+centre": ({"after_warmup": True, "min_dominators": 2},
                                         {"startup_recipe": "centre"}, True),
    "no-stopping+centre": ({}, {"startup_recipe": "centre"}, False),
    "rung-4+centre": ({"rungs": [4]}, {"startup_recipe": "centre"}, True),
    "rungs-4-6+centre": ({"rungs": [4, 6]}, {"startup_recipe": "centre"}, True),
    "reachable+after-warmup+centre": ({"judge": "reachable", "after_warmup": True},
                                      {"startup_recipe": "centre"}, True),
}
# NAME+dedupe: a rule kdsearch does not have (a prototype, simulated only): a point that equals
# a finished trial's is not trained again; the trial takes that trial's end at no cost.
DEDUPE = "+dedupe"


class DedupeMethod(S.OptunaMethod):
    """Asks again, up to `tries` times, while the sampler repeats a finished trial's point
    (the engine's `trained_twin`), telling each repeat the earlier trial's end; then trains
    the repeat."""

    tries = 50

    def ask(self):
        for _ in range(self.tries):
            trial, params = super().ask()
            twin = S.trained_twin(trial, self.spec)
            if twin is None:
                return trial, params
            self.answer(trial, self.study.get_trials(deepcopy=False)[twin])
        return super().ask()

    def answer(self, trial, twin) -> None:
        """End a repeat without training it: with its twin's end."""
        if twin.state == TrialState.COMPLETE:
            self.study.tell(trial, twin.values)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)


# NAME+skip: the rule kdsearch ships since the round on seeds 6000-6029 (search/repeats.py,
# `OptunaMethod(skip_repeats=True)`): a point that equals a finished trial's ends at once as
# a repeat (PRUNED, no values, no cost), and the worker asks again.
SKIP = "+skip"
# a rule's method; "skip" is the plain method with the engine's rule switched on
REPEAT_RULES = {DEDUPE[1:]: DedupeMethod, SKIP[1:]: S.OptunaMethod}


# NAME+tpe-KNOB: TPE's own exploration settings changed (simulated only): prior-3 weighs the
# uniform prior as three trials (Optuna: one), cands-8 picks from 8 candidates (24), random-10
# draws 10 students at random after the planned start-up, gamma-0.25 models the best quarter
# of the trials as good (a tenth); no-group models the knobs every trial has jointly and a
# family's own one by one (group: each family's jointly), univariate every knob alone.
TPE_KNOBS: dict[str, dict] = {
    "prior-3": {"prior_weight": 3.0},
    "cands-8": {"n_ei_candidates": 8},
    "random-10": {"extra_startup": 10},
    "gamma-0.25": {"gamma": lambda n: min(math.ceil(0.25 * n), 25)},
    "no-group": {"group": False},
    "univariate": {"multivariate": False, "group": False},
}


# NAME+refine-P, NAME+near-P (simulated only): a share P of the trials after the start-up
# trains a student of the front again with new distillation settings (T, alpha; lr and batch
# size where searched), drawn by TPE or, with -rand, at random. refine picks among the front's
# students; near also among students within EPS (2 standard errors of one accuracy on 5,000
# validation images) of the front.
RECIPE_KNOBS = ("temperature", "alpha", "lr", "batch_size")
NEAR_EPS = 0.013
REFINES: dict[str, tuple[float, float, bool]] = {  # name: (share, eps, recipe drawn at random)
    f"{kind}-{share}{rand}": (float(share), eps, bool(rand))
    for kind, eps in (("refine", 0.0), ("near", NEAR_EPS))
    for share in ("0.25", "0.5") for rand in ("", "-rand")}


def front_shapes(study: optuna.Study, eps: float) -> list[tuple]:
    """The students (params less the recipe's knobs) of the complete trials that no other
    complete trial beats by more than `eps` accuracy at no greater cost."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values]
    shapes = set()
    for t in done:
        acc, costs = t.values[0], t.values[1:]
        if not any(o.values[0] > acc + eps and o.values[1:] != costs
                   and all(a <= b for a, b in zip(o.values[1:], costs, strict=True))
                   for o in done):
            shapes.add(tuple(sorted((k, v) for k, v in t.params.items()
                                    if k not in RECIPE_KNOBS)))
    return sorted(shapes, key=str)


class RefineSampler(optuna.samplers.BaseSampler):
    """kdsearch's sampler, except that after the start-up a share of the trials takes a front
    student (front_shapes) and draws only its recipe's knobs."""

    def __init__(self, inner: optuna.samplers.BaseSampler, share: float, eps: float,
                 rand: bool, seed: int, n_startup: int):
        self.inner, self.share, self.eps, self.n_startup = inner, share, eps, n_startup
        self.rng = np.random.RandomState(seed)
        self.random = optuna.samplers.RandomSampler(seed=seed) if rand else None
        self.shapes: dict[int, dict | None] = {}

    def _shape(self, study, trial) -> dict | None:
        if trial.number not in self.shapes:
            shape = None
            if trial.number >= self.n_startup and self.rng.rand() < self.share:
                front = front_shapes(study, self.eps)
                if front:
                    shape = dict(front[self.rng.randint(len(front))])
            self.shapes[trial.number] = shape
        return self.shapes[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if self._shape(study, trial) is not None:
            return {}
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        shape = self.shapes.get(trial.number)
        if shape is not None:
            if param_name in shape:
                return shape[param_name]
            if self.random is not None:
                return self.random.sample_independent(study, trial, param_name,
                                                      param_distribution)
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.inner.after_trial(study, trial, state, values)


def split_name(name: str) -> tuple[str, str | None, dict]:
    """A variant's name -> (its VARIANTS entry, its rule for repeats or None, TPE settings;
    a refinement's settings, REFINES, under the key "refine")."""
    parts = name.split("+")
    tpe: dict = {}
    if parts and parts[-1] in REFINES:
        tpe["refine"] = REFINES[parts.pop()]
    while parts and parts[-1].startswith("tpe-") and parts[-1][4:] in TPE_KNOBS:
        tpe.update(TPE_KNOBS[parts.pop()[4:]])
    rule = parts.pop() if parts and parts[-1] in REPEAT_RULES else None
    return "+".join(parts), rule, tpe


PEERS = ("nsga2", "optuna-default", "morea")  # morea needs Syne Tune (the bench extra)


def variant_method(spec, name: str, seed: int) -> S.OptunaMethod:
    """A variant of kdsearch as shipped when these were run (until 2026-12-06: the start-up's
    knobs drawn, judged at epochs 1, 3 and 9), so that their outputs stay reproducible."""
    base, rule, tpe = split_name(name)
    refine = tpe.pop("refine", None)
    early, search, stop = VARIANTS[base]
    method = S.kdsearch_method(
        spec, seed, {"startup": "spread", "startup_recipe": "drawn", **search},
        {"rungs": [1, 3, 9], **early}, skip_repeats=rule == SKIP[1:], stop=stop,
        method=REPEAT_RULES.get(rule, S.OptunaMethod), tpe=tpe)
    if refine is not None:
        share, eps, rand = refine
        n_startup = S.startup.startup_trials(method.spec)
        method.study.sampler = RefineSampler(method.study.sampler, share, eps, rand, seed,
                                             n_startup)
    return method


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, required=True, action="append",
                    help="the recorded table; again for each replicate (simulate.py --table)")
    ap.add_argument("--seeds", default="0-29", help="FIRST-LAST (development seeds)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--budget-trials", type=float, default=40.0)
    ap.add_argument("--peers", default=",".join(PEERS))
    args = ap.parse_args(argv)
    first, last = (int(x) for x in args.seeds.split("-"))
    names = [n for n in args.variants.split(",") if n]
    unknown = {split_name(n)[0] for n in names} - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    tables = S.load_tables(args.table)
    spec = S.table_spec(tables[0], args.table[0])
    budget = S.budget_seconds(tables, args.budget_trials, args.workers)
    panel = S.Panel.of(tables[0])
    tops = S.seed_tops(tables, range(first, last + 1), panel)
    peers = [p for p in args.peers.split(",") if p]
    draws = {seed: S.realise(tables, seed) for seed in range(first, last + 1)}
    print(f"{'arm':<38}" + "".join(f"{k:>12}" for k in S.METRICS) + f"{'near80':>8}")

    def make(name, spec, table, seed):
        return (variant_method(spec, name, seed) if split_name(name)[0] in VARIANTS
                else S.make_method(name, spec, table, seed))

    metrics: dict[str, list[dict[str, float]]] = {}
    for name in names + peers:  # one arm at a time, so each prints as it ends
        runs = S.simulate(tables, spec, [name], range(first, last + 1), budget, args.workers,
                          progress=lambda line: None, make=make)
        metrics[name] = [S.final_metrics(run, panel, tops[run.seed]["hv_log"]) for run in runs]
        means = {k: statistics.fmean(m[k] for m in metrics[name]) for k in S.METRICS}
        # the near-best students at or below 80k it trained (simulate.py's report explains)
        near = statistics.fmean(S.near_best_trained(run, draws[run.seed], panel.medium)[0]
                                for run in runs)
        print(f"{name:<38}" + "".join(f"{means[k]:>12.4f}" for k in S.METRICS)
              + f"{near:>8.1f}", flush=True)
    print(f"ratio to the best of {', '.join(peers)} on each metric, [95 % low]:")
    for name in names:
        cells = []
        for k in S.METRICS:
            sign = 1 if S.HIGHER_IS_BETTER[k] else -1
            peer = max(peers, key=lambda p: sign * statistics.fmean(m[k] for m in metrics[p]))
            ratio, low, _ = S.paired_ratio([m[k] for m in metrics[name]],
                                           [m[k] for m in metrics[peer]], sign > 0)
            cells.append(f"{k} {ratio:.3f} [{low:.3f}]")
        print(f"{name:<38}" + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
