"""Pareto-aware early stopping (accuracy up; parameters, or the study's chosen costs, down).

Optuna cannot prune multi-objective studies (`Trial.report` raises), so kdsearch stops trials
itself, in the spirit of MOASHA (Schmucker et al. 2021, "Multi-objective Asynchronous
Successive Halving"): at rungs (by default after epochs 1, 3 and 9; under a one-cycle schedule
only where the study names them: `EarlyStoppingSpec.rungs_for`) a trial's validation accuracy is
compared with what the other trials of the study reached at the same rung. A student's size
is known before training, so only the accuracy is uncertain: a trial stops when enough trials
with *no more parameters* were already *more accurate* at that rung, i.e. when it is dominated
at the rung by enough peers.

    peers      = other trials whose validation curve reaches the rung (any state, any worker)
    smaller    = peers with params <= this trial's params
    dominators = smaller peers with a higher accuracy at the rung
    ahead      = peers in fronts before this trial's, when the rung's trials and this one are
                 sorted into non-dominated fronts (front 0: dominated by none; front k: by
                 some in front k-1)
    stop  iff  len(peers) >= min_trials
          and  len(dominators) >= max(min_dominators, ceil(quantile * len(smaller)))
          and  ahead >= keep * (len(peers) + 1)

With the defaults (quantile 0, min_dominators 1, min_trials 6, keep 1/3) a trial goes on past a
rung while it is on the Pareto front of the trials that reached that rung, or in one of the
fronts that together hold the first third of them: MOASHA with eta = 3 keeps the best third
at each rung (Schmucker et al. rank by fronts too). `keep = 0` is the rule before issue 13:
only the front goes on. In a short study the two agree (the front holds about a third of a
few dozen trials); as a study grows the front holds ever fewer of them, and that rule stopped
831 of 853 MNIST trials in 300 s, complete trials 22 against 165 without stopping, at a lower
hypervolume (docs/PERFORMANCE.md section 2b). Raise `min_dominators`, `quantile` or `keep`
for a gentler rule. The smallest student seen so far is never stopped (nothing dominates it).
A rung at or after a trial's last epoch is skipped: stopping there would save nothing. With
`after_warmup` so is a rung at or before the end of the learning-rate warm-up, where students
are ranked by how fast they warm up: on cifar_resnet (warm-up 2 of 10 epochs) a 386k-param
student was behind both smaller baselines after epoch 1 (0.35 against 0.49 and 0.47) and
ahead of both from epoch 2. It is off by default because measured it lost: on a reduced
cifar_resnet budget (docs/PERFORMANCE.md section 2b) the stops at epoch 1 bought twice the
trials and the higher hypervolume on both seeds. Stopped trials end PRUNED with
`stopped_reason` and `stopped_at_rung` in their user attributes.

With other or several cost objectives (`[search] objectives`, e.g. MACs and latency, all known
before training), "smaller" reads "no worse on every cost": a dominator has at most this
trial's value of each cost and a higher accuracy at the rung.

`judge = "reachable"` (a prototype, issue 13) asks instead whether the trial can still reach
the front: its accuracy at the rung, extended to the last epoch at the steeper of its last two
per-epoch gains (the first gain counts from 0, so nothing stops at rung 1), capped at 1, is
compared with the latest accuracy of each no-larger peer; the same count decides. A learning
curve that flattens gains less per epoch later on, so the bound is optimistic and a slow
starter still climbing steeply is kept; one that has flattened below its smaller peers stops.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from kdsearch import objectives
from kdsearch.objectives import COST
from kdsearch.record import TrialRecord, set_trial
from kdsearch.spec import EarlyStoppingSpec

PEER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


Costs = float | tuple[float, ...]  # one cost (params) or one value per cost objective


def _as_tuple(costs: Costs) -> tuple[float, ...]:
    return costs if isinstance(costs, tuple) else (costs,)


@dataclass(frozen=True)
class Peer:
    costs: Costs  # its cost(s), in the study's objective order (params alone by default)
    accuracy: float  # validation accuracy at the rung


def dominators(costs: Costs, accuracy: float, peers: Iterable[Peer]) -> tuple[int, int]:
    """(peers no worse on every cost, those of them more accurate)."""
    mine = _as_tuple(costs)
    smaller = [p for p in peers
               if all(c <= m for c, m in zip(_as_tuple(p.costs), mine, strict=True))]
    return len(smaller), sum(p.accuracy > accuracy for p in smaller)


def ahead(costs: Costs, accuracy: float, peers: Sequence[Peer]) -> int:
    """How many peers sit in fronts before this trial's, all of them sorted into
    non-dominated fronts by `dominators`' relation (no worse on every cost, more accurate)."""
    acc = np.array([accuracy, *(p.accuracy for p in peers)], dtype=float)
    cost = np.array([_as_tuple(costs), *(_as_tuple(p.costs) for p in peers)], dtype=float)
    # beats[j, i]: j dominates i. A dominator is strictly more accurate, so visiting trials
    # from the most accurate down sees every dominator's front before its own.
    beats = (acc[:, None] > acc[None, :]) & (cost[:, None, :] <= cost[None, :, :]).all(axis=2)
    front = np.zeros(len(acc), dtype=int)
    for i in np.argsort(-acc, kind="stable"):
        mine = front[beats[:, i]]
        front[i] = mine.max() + 1 if mine.size else 0
    return int((front[1:] < front[0]).sum())


@dataclass(frozen=True)
class Stop:
    """Why a trial stops: the counts its stopped_reason reports."""

    smaller: int  # peers no worse on every cost
    better: int  # of them, more accurate
    ahead: int | None  # peers in fronts before its own (None: `keep` is 0, not counted)


def judge_trial(costs: Costs, accuracy: float, peers: list[Peer],
                rule: EarlyStoppingSpec) -> Stop | None:
    """The rule of the module docstring, for one trial at one rung: None when it goes on."""
    if not rule.enabled or len(peers) < rule.min_trials:
        return None
    n_smaller, n_better = dominators(costs, accuracy, peers)
    if n_better < max(rule.min_dominators, math.ceil(rule.quantile * n_smaller)):
        return None
    if rule.keep == 0:
        return Stop(n_smaller, n_better, None)
    n_ahead = ahead(costs, accuracy, peers)
    return Stop(n_smaller, n_better, n_ahead) if n_ahead >= rule.keep * (len(peers) + 1) else None


def should_stop(costs: Costs, accuracy: float, peers: list[Peer], rule: EarlyStoppingSpec) -> bool:
    return judge_trial(costs, accuracy, peers, rule) is not None


def reachable(curve: Sequence[float], epochs: int) -> float:
    """The accuracy a trial could still end with: its curve extended to `epochs` at the
    steeper of its last two per-epoch gains (the first counted from 0), capped at 1."""
    gains = [b - a for a, b in zip((0.0, *curve), curve, strict=False)]
    slope = max(0.0, *gains[-2:])
    return min(1.0, curve[-1] + slope * (epochs - len(curve)))


def judged_rungs(rule: EarlyStoppingSpec, epochs: int, warmup: float = 0.0,
                 schedule: str = "constant") -> list[int]:
    """The rungs a trial of `epochs` epochs with `warmup` warm-up epochs and the learning-rate
    `schedule` is judged at."""
    if not rule.enabled:
        return []
    first = warmup if rule.after_warmup else 0.0
    return [r for r in rule.rungs_for(epochs, schedule) if first < r < epochs]


def rung_peers(study: optuna.Study, rung: int, exclude: int,
               costs: tuple[str, ...] = objectives.DEFAULT, latest: bool = False) -> list[Peer]:
    """Each other trial's (costs, accuracy after `rung` epochs), from its record; with
    `latest`, the accuracy of its last epoch so far instead."""
    peers = []
    for t in study.get_trials(deepcopy=False, states=PEER_STATES):
        if t.number == exclude:
            continue
        r = TrialRecord.of(t)
        values = objectives.costs_of(r, costs)
        if len(r.val_curve) >= rung and values is not None:
            peers.append(Peer(values, float(r.val_curve[-1 if latest else rung - 1])))
    return peers


class ParetoEarlyStopper:
    """An `on_epoch(trial, epoch, val_accuracy)` hook for `make_objective` / `run_study`.

    Raises `optuna.TrialPruned` when the trial is dominated at a rung.
    """

    def __init__(self, rule: EarlyStoppingSpec, epochs: int,
                 costs: tuple[str, ...] = objectives.DEFAULT, warmup: float = 0.0,
                 schedule: str = "constant"):
        self.rule = rule
        self.costs = tuple(costs)
        self.epochs = epochs
        self.rungs = frozenset(judged_rungs(rule, epochs, warmup, schedule))

    def __call__(self, trial: optuna.Trial, epoch: int, val_accuracy: float) -> None:
        if epoch not in self.rungs:
            return
        record = TrialRecord.of(trial)
        mine = objectives.costs_of(record, self.costs)
        if mine is None:
            return
        judged, what = val_accuracy, "val acc"
        if self.rule.judge == "reachable":
            judged, what = reachable(record.val_curve or (val_accuracy,), self.epochs), "reachable acc"
        peers = rung_peers(trial.study, epoch, exclude=trial.number, costs=self.costs,
                           latest=self.rule.judge == "reachable")
        stop = judge_trial(mine, judged, peers, self.rule)
        if stop is None:
            return
        bounds = " and ".join(f"<= {COST[c].format(v)}" for c, v in zip(self.costs, mine,
                                                                          strict=True))
        reason = (
            f"dominated at rung {epoch}: {what} {judged:.4f} beaten by {stop.better} of "
            f"{stop.smaller} trials with {bounds}"
        )
        if stop.ahead is not None:
            reason += (f", and not in the best {self.rule.keep:.0%} of the rung: "
                       f"{stop.ahead} of {len(peers)} trials in fronts before it")
        set_trial(trial, stopped_reason=reason, stopped_at_rung=epoch, epochs=epoch)
        raise optuna.TrialPruned(reason)


def make_stopper(rule: EarlyStoppingSpec, epochs: int, costs: tuple[str, ...] = objectives.DEFAULT,
                 warmup: float = 0.0, schedule: str = "constant") -> ParetoEarlyStopper | None:
    """The hook for a study, or None when early stopping is off (or no rung is left to judge)."""
    stopper = ParetoEarlyStopper(rule, epochs, costs, warmup, schedule)
    return stopper if stopper.rungs else None
