"""Pareto-aware early stopping (accuracy up; parameters, or the study's chosen costs, down).

Optuna cannot prune multi-objective studies (`Trial.report` raises), so kdsearch stops trials
itself, in the spirit of MOASHA (Schmucker et al. 2021, "Multi-objective Asynchronous
Successive Halving"): at rungs (say after epochs 1, 3 and 9) a trial's validation accuracy is
compared with what the other trials of the study reached at the same rung. A student's size
is known before training, so only the accuracy is uncertain: a trial stops when enough trials
with *no more parameters* were already *more accurate* at that rung, i.e. when it is dominated
at the rung by enough peers.

    peers      = other trials whose validation curve reaches the rung (any state, any worker)
    smaller    = peers with params <= this trial's params
    dominators = smaller peers with a higher accuracy at the rung
    stop  iff  len(peers) >= min_trials
          and  len(dominators) >= max(min_dominators, ceil(quantile * len(smaller)))

With the defaults (quantile 0, min_dominators 1, min_trials 6) a trial goes on past a rung
only while it is on the Pareto front of the trials that reached that rung. In
benchmarks/bench_search.py that stopped 60-70% of the trials, about what MOASHA with eta = 3
(keep the best third at each rung) would. Raise `min_dominators` or `quantile` for a gentler
rule. The smallest student seen so far is never stopped (nothing dominates it). A rung at or
after a trial's last epoch is skipped: stopping there would save nothing. Stopped trials end
PRUNED with `stopped_reason` and `stopped_at_rung` in their user attributes.

With other or several cost objectives (`[search] objectives`, e.g. MACs and latency, all known
before training), "smaller" reads "no worse on every cost": a dominator has at most this
trial's value of each cost and a higher accuracy at the rung.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

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


def should_stop(costs: Costs, accuracy: float, peers: list[Peer], rule: EarlyStoppingSpec) -> bool:
    """The rule of the module docstring, for one trial at one rung."""
    if not rule.enabled or len(peers) < rule.min_trials:
        return False
    n_smaller, n_better = dominators(costs, accuracy, peers)
    return n_better >= max(rule.min_dominators, math.ceil(rule.quantile * n_smaller))


def rung_peers(study: optuna.Study, rung: int, exclude: int,
               costs: tuple[str, ...] = objectives.DEFAULT) -> list[Peer]:
    """Each other trial's (costs, accuracy after `rung` epochs), from its record."""
    peers = []
    for t in study.get_trials(deepcopy=False, states=PEER_STATES):
        if t.number == exclude:
            continue
        r = TrialRecord.of(t)
        values = objectives.costs_of(r, costs)
        if len(r.val_curve) >= rung and values is not None:
            peers.append(Peer(values, float(r.val_curve[rung - 1])))
    return peers


class ParetoEarlyStopper:
    """An `on_epoch(trial, epoch, val_accuracy)` hook for `make_objective` / `run_study`.

    Raises `optuna.TrialPruned` when the trial is dominated at a rung.
    """

    def __init__(self, rule: EarlyStoppingSpec, epochs: int,
                 costs: tuple[str, ...] = objectives.DEFAULT):
        self.rule = rule
        self.costs = tuple(costs)
        self.rungs = frozenset(r for r in rule.rungs if r < epochs) if rule.enabled else frozenset()

    def __call__(self, trial: optuna.Trial, epoch: int, val_accuracy: float) -> None:
        if epoch not in self.rungs:
            return
        mine = objectives.costs_of(TrialRecord.of(trial), self.costs)
        if mine is None:
            return
        peers = rung_peers(trial.study, epoch, exclude=trial.number, costs=self.costs)
        if not should_stop(mine, val_accuracy, peers, self.rule):
            return
        n_smaller, n_better = dominators(mine, val_accuracy, peers)
        bounds = " and ".join(f"<= {COST[c].format(v)}" for c, v in zip(self.costs, mine,
                                                                          strict=True))
        reason = (
            f"dominated at rung {epoch}: val acc {val_accuracy:.4f} beaten by {n_better} of "
            f"{n_smaller} trials with {bounds}"
        )
        set_trial(trial, stopped_reason=reason, stopped_at_rung=epoch, epochs=epoch)
        raise optuna.TrialPruned(reason)


def make_stopper(rule: EarlyStoppingSpec, epochs: int,
                 costs: tuple[str, ...] = objectives.DEFAULT) -> ParetoEarlyStopper | None:
    """The hook for a study, or None when early stopping is off (or no rung precedes the end)."""
    stopper = ParetoEarlyStopper(rule, epochs, costs)
    return stopper if stopper.rungs else None
