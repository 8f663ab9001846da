"""Pareto-aware early stopping: the rule alone, then as a hook on a real Optuna study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kdsearch.record import TrialRecord, set_trial, trial_attrs
from kdsearch.search.early_stopping import (
    Peer,
    ahead,
    dominators,
    judged_rungs,
    make_stopper,
    reachable,
    rung_peers,
    should_stop,
)
from kdsearch.spec import EarlyStoppingSpec, parse_study
from tests.helpers import REPO, study_text

RULE = EarlyStoppingSpec(rungs=[1, 3], min_trials=4, quantile=0.5, min_dominators=2)
# Eight finished peers: accuracy grows with size, as it does in a real study.
PEERS = [
    Peer(p, a)
    for p, a in [
        (1_000, 0.50),
        (2_000, 0.60),
        (4_000, 0.70),
        (8_000, 0.75),
        (16_000, 0.80),
        (32_000, 0.82),
        (64_000, 0.84),
        (128_000, 0.85),
    ]
]


def test_clearly_dominated_trial_stops():
    # 50k params but worse than every smaller peer: dominated by 6 of 6.
    assert should_stop(50_000, 0.40, PEERS, RULE)


def test_non_dominated_trials_continue():
    assert not should_stop(500, 0.30, PEERS, RULE)  # smallest so far: nothing dominates it
    assert not should_stop(50_000, 0.90, PEERS, RULE)  # beats every smaller peer
    assert not should_stop(50_000, 0.81, PEERS, RULE)  # beaten by 1 of 6: on the front


def test_quantile_decides_how_many_must_win():
    # 50k params at 0.72: beaten by 3 of its 6 smaller peers.
    assert should_stop(50_000, 0.72, PEERS, RULE)  # 3 >= ceil(0.5 * 6)
    assert not should_stop(50_000, 0.72, PEERS, RULE.model_copy(update={"quantile": 0.75}))


def test_min_trials_guard():
    few = PEERS[:3]  # 3 peers, all smaller and better: dominated, but too few to judge
    assert not should_stop(50_000, 0.10, few, RULE)
    assert should_stop(50_000, 0.10, few, RULE.model_copy(update={"min_trials": 3}))


def test_ahead_counts_the_trials_in_earlier_fronts():
    peers = [Peer(1, 0.90), Peer(2, 0.95),  # front 0
             Peer(2, 0.85),  # front 1: behind (1, 0.90)
             Peer(3, 0.80)]  # front 2: behind (2, 0.85)
    assert ahead(3, 0.86, peers) == 2  # beaten by front 0 alone: front 1, with (2, 0.85)
    assert ahead(3, 0.70, peers) == 4  # behind (3, 0.80): front 3
    assert ahead(0.5, 0.10, peers) == 0  # smallest: front 0
    assert ahead(3, 0.86, [Peer(1, 0.90)]) == 1
    assert ahead((3, 9), 0.86, [Peer((1, 10), 0.90)]) == 0  # more of the second cost: no dominator


def test_keep_lets_the_first_fronts_go_on():
    # 11 peers: 2 on the front, then a dominated trial in front 1 with 2 ahead of it (2 < 12/3)
    peers = [Peer(1_000, 0.70), Peer(2_000, 0.80)] + [Peer(3_000 + i, 0.50 - 0.01 * i)
                                                       for i in range(9)]
    rule = RULE.model_copy(update={"quantile": 0.0, "min_dominators": 1})
    assert ahead(5_000, 0.75, peers) == 2
    assert not should_stop(5_000, 0.75, peers, rule)  # keep 1/3: inside the best third
    assert should_stop(5_000, 0.75, peers, rule.model_copy(update={"keep": 0.0}))  # front only
    assert should_stop(5_000, 0.75, peers, rule.model_copy(update={"keep": 0.15}))  # 2 >= 1.8


def test_keep_holds_the_share_that_goes_on_as_a_study_grows():
    """Judged one after another, later trials face ever more peers: with keep 0 (only the
    front goes on) fewer and fewer pass; with keep 1/3 about a third still do."""
    import math
    import random

    rng = random.Random(0)
    trials = [(p, 0.5 + 0.1 * math.log10(p) + rng.gauss(0, 0.05))
              for p in (10 ** rng.uniform(3, 5) for _ in range(300))]

    def share_going_on(keep: float, first: int, last: int) -> float:
        rule = EarlyStoppingSpec(keep=keep)
        return sum(not should_stop(p, a, [Peer(*t) for t in trials[:i]], rule)
                   for i, (p, a) in enumerate(trials) if first <= i < last) / (last - first)

    assert share_going_on(0.0, 200, 300) < 0.2
    assert share_going_on(1 / 3, 200, 300) > 0.3


def test_switched_off_never_stops():
    off = RULE.model_copy(update={"enabled": False})
    assert not should_stop(50_000, 0.0, PEERS, off)
    assert make_stopper(off, epochs=10) is None


def test_rungs_at_or_after_the_last_epoch_are_skipped():
    assert make_stopper(RULE, epochs=3).rungs == {1}
    assert make_stopper(RULE.model_copy(update={"rungs": [5]}), epochs=5) is None


def test_unset_rungs_follow_the_schedule_and_written_ones_do_not():
    default = EarlyStoppingSpec()
    assert default.rungs is None
    assert judged_rungs(default, 20) == [1, 3, 9]  # a constant learning rate
    # one-cycle ranks students only once the rate has come down, when stopping saves little
    assert judged_rungs(default, 8, warmup=2, schedule="onecycle") == []
    assert make_stopper(default, epochs=10, schedule="onecycle") is None
    assert make_stopper(RULE.model_copy(update={"rungs": [6]}), epochs=8,
                        schedule="onecycle").rungs == {6}
    assert judged_rungs(RULE, 10, schedule="onecycle") == [1, 3]  # as the study file writes


AFTER_WARMUP = RULE.model_copy(update={"after_warmup": True})


def test_with_after_warmup_rungs_at_or_before_its_end_are_skipped():
    assert make_stopper(AFTER_WARMUP, epochs=10, warmup=0.5).rungs == {1, 3}
    assert make_stopper(AFTER_WARMUP, epochs=10, warmup=2).rungs == {3}
    assert make_stopper(AFTER_WARMUP, epochs=10, warmup=3) is None  # rung 3 ends the warm-up
    assert make_stopper(RULE, epochs=10, warmup=3).rungs == {1, 3}  # the default: every rung
    assert judged_rungs(RULE.model_copy(update={"enabled": False}), 10) == []


def test_a_slow_starter_inside_its_warmup_runs_on_and_is_judged_after_it():
    study = _study_with_peers()
    stopper = make_stopper(AFTER_WARMUP, epochs=10, warmup=2)
    trial = study.ask()
    set_trial(trial, params=50_000)
    stopper(trial, 1, 0.35)  # behind every smaller peer, but inside the warm-up
    assert TrialRecord.of(study.trials[-1]).stopped_at_rung is None
    with pytest.raises(optuna.TrialPruned, match="rung 3"):
        stopper(trial, 3, 0.40)  # still behind once the step size has peaked: stopped


def test_study_file_table_is_validated():
    base = (REPO / "studies" / "smoke.toml").read_text()
    spec = parse_study(
        base + "\n[search.early_stopping]\nenabled = false\nrungs = [2, 4]\n", Path("x.toml")
    )
    assert spec.search.early_stopping.enabled is False
    assert spec.search.early_stopping.rungs == [2, 4]
    from kdsearch.errors import StudyFileError

    with pytest.raises(StudyFileError, match="rungs.*increasing"):
        parse_study(base + "\n[search.early_stopping]\nrungs = [3, 3]\n", Path("x.toml"))
    with pytest.raises(StudyFileError, match="keep': expected less than 1, found 1.5"):
        parse_study(base + "\n[search.early_stopping]\nkeep = 1.5\n", Path("x.toml"))


def _study_with_peers() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for p in PEERS:
        # Curves reach rung 3; the rung-1 value is 0.1 lower than at rung 3.
        study.add_trial(
            optuna.trial.create_trial(
                values=[p.accuracy, p.costs],
                state=TrialState.COMPLETE,
                user_attrs=trial_attrs(
                    params=p.costs, val_curve=[p.accuracy - 0.1, p.accuracy - 0.05, p.accuracy]),
            )
        )
    study.add_trial(
        optuna.trial.create_trial(  # refused before training: no curve, not a peer
            state=TrialState.PRUNED, user_attrs=trial_attrs(params=10)
        )
    )
    return study


def test_peers_are_read_from_stored_curves():
    peers = rung_peers(_study_with_peers(), 3, exclude=-1)
    assert sorted((p.costs, round(p.accuracy, 6)) for p in peers) == sorted(
        ((p.costs,), p.accuracy) for p in PEERS
    )


def test_hook_prunes_a_dominated_trial_and_records_the_rung():
    study = _study_with_peers()
    stopper = make_stopper(RULE, epochs=10)
    trial = study.ask()
    set_trial(trial, params=50_000)
    with pytest.raises(optuna.TrialPruned):
        stopper(trial, 1, 0.35)
    study.tell(trial, state=TrialState.PRUNED)
    stored = study.trials[-1]
    assert stored.state == TrialState.PRUNED
    assert TrialRecord.of(stored).stopped_at_rung == 1
    assert "dominated at rung 1" in TrialRecord.of(stored).stopped_reason


def test_hook_lets_a_good_trial_run_and_ignores_other_epochs():
    study = _study_with_peers()
    stopper = make_stopper(RULE, epochs=10)
    trial = study.ask()
    set_trial(trial, params=50_000)
    stopper(trial, 1, 0.80)  # better than every smaller peer at rung 1 (<= 0.74): continues
    stopper(trial, 2, 0.01)  # epoch 2 is not a rung: never judged
    assert TrialRecord.of(study.trials[-1]).stopped_at_rung is None


def test_with_several_costs_a_dominator_is_no_worse_on_every_one():
    # (params, macs): the trial has few params but many MACs (a conv net on a large map)
    peers = [Peer((1_000, 90_000), 0.9), Peer((8_000, 20_000), 0.9), Peer((8_000, 200_000), 0.9)]
    rule = RULE.model_copy(update={"min_trials": 1, "min_dominators": 1, "quantile": 0.0})
    # on params alone the first peer dominates it; on macs alone the second; on both, neither
    assert dominators((2_000, 50_000), 0.5, peers) == (0, 0)
    assert should_stop(2_000, 0.5, [Peer(p.costs[0], p.accuracy) for p in peers], rule)
    assert should_stop(50_000, 0.5, [Peer(p.costs[1], p.accuracy) for p in peers], rule)
    assert not should_stop((2_000, 50_000), 0.5, peers, rule)


def test_hook_on_a_macs_study_compares_macs_not_params():
    """A trial with the fewest params but the most MACs: stopped only when MACs count."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for params, macs, acc in [(5_000, 1_000, 0.8), (6_000, 2_000, 0.85), (7_000, 3_000, 0.9),
                              (8_000, 4_000, 0.9)]:
        study.add_trial(optuna.trial.create_trial(
            values=[acc, macs], state=TrialState.COMPLETE,
            user_attrs=trial_attrs(params=params, macs=macs, val_curve=[acc - 0.1, acc])))
    rule = RULE.model_copy(update={"min_trials": 4})
    by_macs = make_stopper(rule, epochs=10, costs=("macs",))
    by_params = make_stopper(rule, epochs=10)
    trial = study.ask()
    set_trial(trial, params=100)  # smaller than every peer: params cannot stop it
    set_trial(trial, macs=50_000)  # costlier than every peer, and less accurate
    by_params(trial, 1, 0.3)
    assert TrialRecord.of(trial).stopped_at_rung is None
    with pytest.raises(optuna.TrialPruned, match=r"beaten by 4 of 4 trials with <= 50,000 MACs"):
        by_macs(trial, 1, 0.3)
    assert TrialRecord.of(trial.study.trials[-1]).stopped_at_rung == 1


def test_reachable_extends_the_curve_at_its_steeper_last_gain():
    assert reachable([0.30], 10) == 1.0  # one epoch: the gain from 0 says nothing; never stops
    assert reachable([0.50, 0.60, 0.62], 10) == 1.0  # 0.62 + 0.10 x 7, capped
    assert reachable([0.50, 0.60, 0.62], 5) == pytest.approx(0.62 + 0.10 * 2)
    assert reachable([0.70, 0.72, 0.73], 9) == pytest.approx(0.73 + 0.02 * 6)
    assert reachable([0.70, 0.72, 0.71], 9) == pytest.approx(0.71 + 0.02 * 6)  # a dip: no less
    assert reachable([0.60, 0.60, 0.60], 9) == pytest.approx(0.60)  # flat: nothing more to come


def test_reachable_judge_keeps_a_slow_starter_and_stops_a_flat_one():
    """At rung 3 of 10 a trial of 9,000 params at 0.58 or 0.53 is behind 3 of its 4 smaller
    peers (0.50, 0.60, 0.70, 0.75 at rung 3, which is also their last epoch), so the rung rule
    stops it. The reachable rule compares what it could still reach with those accuracies."""
    rule = RULE.model_copy(update={"judge": "reachable"})
    for judge, curve, stops in [
        (RULE, [0.30, 0.45, 0.58], True),
        (rule, [0.30, 0.45, 0.58], False),  # climbing 0.13 an epoch: could reach 1.0
        (rule, [0.50, 0.52, 0.53], True),  # gaining 0.02: 0.67 at best, beaten by 2 of 4
    ]:
        study = _study_with_peers()
        stopper = make_stopper(judge, epochs=10)
        trial = study.ask()
        set_trial(trial, params=9_000)
        set_trial(trial, val_curve=curve)
        if stops:
            with pytest.raises(optuna.TrialPruned, match="rung 3"):
                stopper(trial, 3, curve[-1])
        else:
            stopper(trial, 3, curve[-1])


TINY = study_text(
    description=None,
    data='dataset = "synthetic"\nval_size = 100\n'
         "synthetic = { n_train = 400, n_test = 100, num_classes = 3, noise = 1.5 }",
    teacher_train="epochs = 2\nbatch_size = 64",
    student='family = "mlp"\ndepth = { low = 1, high = 2 }\nwidth = { choices = [2, 4, 8, 16, 32] }',
    student_train="epochs = 3\nbatch_size = 64\nlr = 0.003",
    search='n_trials = 10\nsampler = "random"',
    search_early_stopping="rungs = [1, 2]\nmin_trials = 3\nquantile = 0.3\nmin_dominators = 1")


@pytest.mark.parametrize("warmup", [None, 1])
def test_run_study_stops_exactly_the_trials_the_rule_names(tmp_path, warmup):
    """Sequential run: each trial's fate must equal the rule applied to the earlier trials, at
    the rungs it judges (with after_warmup and a 1-epoch warm-up, none at rung 1)."""
    from kdsearch.options import Options
    from kdsearch.study.runner import run_study

    text = TINY if warmup is None else (TINY.replace("lr = 0.003", f"lr = 0.003\nwarmup_epochs = {warmup}")
                                        + "after_warmup = true\n")
    spec = parse_study(text, tmp_path / "tiny.toml")
    rungs = judged_rungs(spec.search.early_stopping, 3, spec.student.train.warmup())
    assert rungs == ([1, 2] if warmup is None else [2])
    lines: list[str] = []
    opts = Options(
        storage=f"sqlite:///{tmp_path}/s.db",
        study_name="tiny",
        n_trials=10,
        timeout=None,
        data_dir=None,
        cache_dir=tmp_path / "cache",
        device="cpu",
    )
    study = run_study(spec, opts, log=lines.append)
    said = [line for line in lines if line.startswith("early stopping")]
    expected = ("early stopping: trials judged after epochs 1, 2 of 3" if warmup is None else
                "early stopping: trials judged after epoch 2 of 3 (not after 1: inside the "
                "1-epoch warm-up, as after_warmup = true asks)")
    assert said == [expected]
    trials = study.get_trials()
    stopped = [t for t in trials if TrialRecord.of(t).stopped_at_rung is not None]
    assert stopped, "the rule never fired on 10 random students: not a working early stopper"
    assert any(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        curve = TrialRecord.of(t).val_curve
        fate = None
        for rung in rungs:
            if len(curve) < rung:
                break
            earlier = [
                Peer(TrialRecord.of(e).params, TrialRecord.of(e).val_curve[rung - 1])
                for e in trials
                if e.number < t.number and len(TrialRecord.of(e).val_curve) >= rung
            ]
            if should_stop(
                TrialRecord.of(t).params, curve[rung - 1], earlier, spec.search.early_stopping
            ):
                fate = rung
                break
        assert TrialRecord.of(t).stopped_at_rung == fate, t.number
        if fate is not None:
            assert t.state == TrialState.PRUNED and len(curve) == fate
