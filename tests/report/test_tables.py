"""The front and every trial as tables: text for people, JSON and CSV for programs."""

from __future__ import annotations

import csv
import io
import json

from kdsearch.report.rows import DISTILLED, PLAIN, read_rows
from kdsearch.report.summary import summary_markdown
from kdsearch.report.tables import FRONT_KEYS, best_csv, best_json, best_table, write_trials_csv
from tests.helpers import hand_study, teacher_summary

FOUR = [(0.5, 10, 3, 0.5), (0.8, 100, 5, 0.01), (0.4, 50, 3, 0.5), (0.6, 10, 3, 0.5)]


def test_front_table_csv_and_summary(tmp_path):
    snap = read_rows(hand_study(FOUR, teacher=teacher_summary()))
    assert [(r.val_accuracy, r.params) for r in snap.front] == [(0.6, 10), (0.8, 100)]
    table = best_table(snap)
    assert "teacher: mlp 64" in table and "cnn k5 100" in table and "cnn k3 50" not in table
    assert "Pareto front of 'hand' (2 of 4 complete trials)" in table
    write_trials_csv(snap, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("number,state,pareto")
    assert "10.0x" in summary_markdown(snap)  # compression against the teacher's 1000 params


def test_best_json_is_the_front_with_stable_keys():
    rows = json.loads(best_json(read_rows(hand_study(FOUR))))
    assert [r["number"] for r in rows] == [3, 1]  # smallest first
    assert all(tuple(r) == FRONT_KEYS for r in rows)
    big = rows[1]
    assert big["values"] == [0.8, 100] and big["params"] == 100 and big["macs"] == 1000
    assert big["test_accuracy"] == 0.8 - 0.01 and big["architecture"] == "cnn k5 100"
    assert (big["temperature"], big["alpha"], big["kd"], big["baseline"]) == (2.0, 0.01, PLAIN, "")
    assert rows[0]["kd"] == DISTILLED


def test_best_csv_matches_the_json():
    snap = read_rows(hand_study(FOUR))
    rows = list(csv.DictReader(io.StringIO(best_csv(snap))))
    assert tuple(rows[0]) == FRONT_KEYS
    assert [(int(r["number"]), r["values"]) for r in rows] == [(3, "0.6;10"), (1, "0.8;100")]


def test_nothing_complete_is_said_in_every_format():
    snap = read_rows(hand_study([]))
    assert best_table(snap).endswith("no complete trials yet")
    assert json.loads(best_json(snap)) == []
    assert best_csv(snap) == ",".join(FRONT_KEYS)


def test_summary_lists_every_trial_with_where_it_stopped_and_the_time(tmp_path):
    import datetime

    import optuna

    study = hand_study(FOUR, teacher=teacher_summary())
    t0 = datetime.datetime(2026, 12, 3, 12, 0, 0)
    stopped = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"kernel": 3, "alpha": 0.5,
                                                      "temperature": 2.0},
        distributions=study.trials[0].distributions,
        user_attrs={"params": 20, "macs": 200, "arch_summary": "cnn k3 20",
                    "architecture": study.trials[0].user_attrs["architecture"],
                    "val_curve": [0.31], "epochs": 1, "stopped_at_rung": 1,
                    "stopped_reason": "dominated at rung 1: ..."})
    study.add_trial(stopped)
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params=stopped.params,
        distributions=stopped.distributions,
        user_attrs={"params": 10**9, "stopped_reason": "over budget: 1,000,000,000 params"}))
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params=study.trials[0].params,
        distributions=study.trials[0].distributions,
        user_attrs={"repeat_of": 0, "stopped_reason": "repeat of trial 0: ..."}))
    snap = read_rows(study)
    # The hand-made trials' clocks: trial k from t0 + k min to t0 + k min + 30 s.
    for k, r in enumerate(snap.rows):
        r.trial.datetime_start = t0 + datetime.timedelta(minutes=k)
        r.trial.datetime_complete = t0 + datetime.timedelta(minutes=k, seconds=30)
    page = summary_markdown(snap)
    every = page[page.index("## Every trial"):]
    assert ("7 trials finished in 6m30s of wall time (2026-12-03 12:00 to 12:06), 3m30s of "
            "trials in all") in every
    assert ("stopped early: 1 after epoch 1; refused before training: 1; repeats not trained "
            "again: 1.") in every
    rows = [line for line in every.splitlines() if line.startswith("| ")][1:]  # the header out
    assert len(rows) == 7
    assert rows[5].endswith("| over budget: 1,000,000,000 params |")
    assert rows[6].startswith("| 6 | pruned |") and rows[6].endswith("| repeat of trial 0: ... |")
    assert rows[4].startswith("| 4 | pruned | `cnn k3 20` | 20 |")
    assert "| 0.3100 |" in rows[4] and rows[4].endswith("| 30 | after epoch 1 |")
    assert rows[3].startswith("| 3 * | complete |")  # on the front
    write_trials_csv(snap, tmp_path / "t.csv")
    last = list(csv.DictReader((tmp_path / "t.csv").open()))[-3]
    assert (last["stopped_at_rung"], last["started"]) == ("1", "2026-12-03T12:04:00")
