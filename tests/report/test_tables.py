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
