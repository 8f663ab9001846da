"""`export --compare`: fronts of other studies (same storage, or saved CSVs) on one plot."""

from __future__ import annotations

import pytest

from kdsearch import cli
from kdsearch.report import images
from kdsearch.report.compare import read_front_csv, snapshot_front
from kdsearch.report.export import figures
from kdsearch.report.rows import read_rows
from tests.helpers import hand_study

OLD = [(0.70, 20_000, 3, 0.5), (0.75, 200_000, 3, 0.5), (0.72, 300_000, 5, 0.5)]  # 3rd dominated
NEW = [(0.80, 10_000, 3, 0.9), (0.86, 80_000, 3, 0.9)]


def _fronts_traces(fig):
    return {t.name: (list(t.x), list(t.y)) for t in fig.data if t.mode == "lines+markers"}


@pytest.mark.slow
def test_export_draws_both_fronts_from_one_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(images, "write_image", lambda fig, path: path.write_text("img"))
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hand_study(OLD, storage=url, name="old")
    hand_study(NEW, storage=url, name="new")
    out = tmp_path / "out"
    assert cli.main(["export", "new", "--storage", url, "--out", str(out),
                     "--compare", "old"]) == 0
    assert {"fronts.html", "fronts.png", "fronts.svg"} <= {p.name for p in out.iterdir()}
    html = (out / "fronts.html").read_text()
    assert "old (2 on the front)" in html and "new (2 on the front)" in html


def test_the_figure_holds_each_front_only(tmp_path):
    old, new = hand_study(OLD, name="old"), hand_study(NEW, name="new")
    figs = figures(read_rows(new), compare=[snapshot_front(read_rows(old))])
    traces = _fronts_traces(figs["fronts"])
    assert traces["new (2 on the front)"] == ([10_000, 80_000], [0.80, 0.86])
    assert traces["old (2 on the front)"] == ([20_000, 200_000], [0.70, 0.75])  # 300k dominated


def test_a_front_saved_by_best_csv_round_trips(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hand_study(OLD, storage=url, name="old")
    assert cli.main(["best", "old", "--storage", url, "--format", "csv"]) == 0
    saved = tmp_path / "old_front.csv"
    saved.write_text(capsys.readouterr().out)
    from_csv = read_front_csv(saved)
    from_storage = snapshot_front(read_rows(hand_study(OLD, name="old")))
    assert from_csv.name == "old_front"
    assert [p._replace(costs={k: int(v) for k, v in p.costs.items()}) for p in from_csv.points] \
        == from_storage.points


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n", "expected a front written by 'kdsearch best --format csv', found no column "
                   "'number'"),
    ("", "expected a front written by 'kdsearch best --format csv', found no rows"),
])
def test_a_csv_that_is_not_a_front_is_one_line_and_nothing_is_written(tmp_path, capsys, text,
                                                                     message):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hand_study(NEW, storage=url, name="new")
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    out = tmp_path / "out"
    assert cli.main(["export", "new", "--storage", url, "--out", str(out),
                     "--compare", str(bad)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"kdsearch: error: --compare {bad}: {message}"]
    assert not out.exists()


def test_a_bad_row_and_a_missing_file_and_study_are_one_line(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hand_study(OLD, storage=url, name="old")
    assert cli.main(["best", "old", "--storage", url, "--format", "csv"]) == 0
    text = capsys.readouterr().out.replace("20000", "many")
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    for source, message in [
            (str(bad), f"--compare {bad}: line 2 is not a front row (number '0', params 'many', "
                       "val_accuracy '0.7')"),
            (str(tmp_path / "none.csv"), f"--compare {tmp_path / 'none.csv'}: no such file"),
            ("nope", "no study 'nope' in")]:
        assert cli.main(["export", "old", "--storage", url, "--out", str(tmp_path / "o"),
                         "--compare", source]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"kdsearch: error: {message}"), err
    assert not (tmp_path / "o").exists()
