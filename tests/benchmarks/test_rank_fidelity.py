"""Rank fidelity (benchmarks/rank_fidelity.py): tau within size bands, on hand-made tables."""

from __future__ import annotations

import json

import pytest

from tests.helpers import benchmark_module, study_text


def _row(n_params: int, val: list[float], seconds: float = 10.0) -> dict:
    return {"params": {"family": "resnet", "resnet.base_width": n_params}, "n_params": n_params,
            "val": val, "test": val, "seconds": [seconds] * len(val)}


def test_tau_counts_only_pairs_within_a_band():
    fid = benchmark_module("rank_fidelity")
    # Two bands; across them the order is reversed at the rung, which must not count.
    rows = [_row(12_000, [0.5, 0.6]), _row(15_000, [0.4, 0.5]),
            _row(50_000, [0.3, 0.9]), _row(60_000, [0.2, 0.8])]
    early, final = [r["val"][0] for r in rows], [r["val"][1] for r in rows]
    assert fid.banded_tau(rows, early, final) == (1.0, 2)
    swapped = [early[1], early[0], early[2], early[3]]
    assert fid.banded_tau(rows, swapped, final) == (0.0, 2)


def test_report_names_a_slow_starter_and_the_cheaper_plans_cost(tmp_path):
    fid = benchmark_module("rank_fidelity")
    full = [_row(12_000, [0.2, 0.5, 0.7]), _row(15_000, [0.4, 0.5, 0.6]),
            _row(20_000, [0.3, 0.4, 0.5])]
    early = [_row(r["n_params"], r["val"], seconds=5.0) for r in full]
    paths = []
    for name, rows in (("full.json", full), ("early.json", early)):
        path = tmp_path / name
        path.write_text(json.dumps({"rows": rows, "meta": {"command": name}}))
        paths.append(path)
    text = fid.report(paths)
    # epoch 1: the 12k student is last in its band, and first at the end
    assert "| 1 | -0.333 | -0.333 | 3 | 0.333 | resnet 12000 (12,000) (band 8) |" in text
    assert "| 3 | 1.000 | 1.000 | 3 | 1.000 | - |" in text
    assert "training seconds 45 (0.50 of the reference)" in text


# Two resnet students of 3x32x32 images (record_table's sizes assume CIFAR's shape), 2 epochs.
GRID_STUDY = study_text(
    description="tests: a two-point grid",
    data='dataset = "synthetic"\nval_size = 40\nsynthetic = { n_train = 120, n_test = 40, '
         "channels = 3, height = 32, width = 32, num_classes = 10 }",
    teacher='family = "mlp"\nhidden = [16]',
    teacher_train="epochs = 1\nbatch_size = 64",
    student='family = "resnet"\nstages = 3\nblocks = 1\nbase_width = { choices = [4, 6] }\n'
            'width_growth = 2.0\nkernel = 3\nshortcut = "B"\ntemperature = 4.0\nalpha = 0.9',
    student_train="epochs = 2\nbatch_size = 64\nlr = 0.05",
    search="n_trials = 2")


@pytest.mark.slow
def test_a_committed_table_goes_on_growing_with_new_storage(tmp_path, capsys):
    """The table written by one machine counts as done on the next, whose storage is new."""
    record = benchmark_module("record_table")
    study = tmp_path / "grid.toml"
    study.write_text(GRID_STUDY)
    out = tmp_path / "table.json"
    common = [str(study), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert record.main(common + ["--storage", f"sqlite:///{tmp_path / 'a.db'}",
                                 "--shard", "0/2"]) == 0
    first = json.loads(out.read_text())["rows"]
    assert [r["params"]["base_width"] for r in first] == [4] and len(first[0]["val"]) == 2
    # a new machine: another storage, the table as committed; only the other point trains
    capsys.readouterr()
    assert record.main(common + ["--storage", f"sqlite:///{tmp_path / 'b.db'}"]) == 0
    assert "2 points in the grid, 2 in shard 0/1, 1 done, 1 to train" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["params"]["base_width"] for r in rows] == [4, 6]
    assert rows[0] == first[0]  # kept as it was, not trained again
    # another replicate never counts this one's points as its own
    again = [str(study), "--cache-dir", str(tmp_path / "cache"), "--replicate", "1"]
    with pytest.raises(SystemExit, match="holds replicate 0"):
        record.main(again + ["--out", str(tmp_path / "r1.json"),
                             "--storage", f"sqlite:///{tmp_path / 'b.db'}"])
    with pytest.raises(SystemExit, match="holds replicate 0"):
        record.main(again + ["--out", str(out), "--storage", f"sqlite:///{tmp_path / 'c.db'}"])
    r1 = tmp_path / "r1.json"
    assert record.main(again + ["--out", str(r1),
                                "--storage", f"sqlite:///{tmp_path / 'c.db'}"]) == 0
    table = json.loads(r1.read_text())
    assert table["meta"]["replicate"] == 1 and len(table["rows"]) == 2
    assert [r["params"] for r in table["rows"]] == [r["params"] for r in rows]
    assert [r["val"] for r in table["rows"]] != [r["val"] for r in rows]  # another seed's draw


@pytest.mark.slow
def test_shards_with_their_own_storages_keep_each_others_rows(tmp_path, monkeypatch):
    """Shard 1 starts before shard 0 has written its row (its own storage never sees it) and
    writes the table after: the table keeps both rows."""
    import kdsearch.training.student as student

    record = benchmark_module("record_table")
    study = tmp_path / "grid.toml"
    study.write_text(GRID_STUDY)
    out = tmp_path / "table.json"
    common = [str(study), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    elsewhere = tmp_path / "shard0.json"  # shard 0's row, recorded apart to land mid-run
    assert record.main([str(study), "--out", str(elsewhere), "--cache-dir",
                        str(tmp_path / "cache"), "--storage",
                        f"sqlite:///{tmp_path / 'a.db'}", "--shard", "0/2"]) == 0
    distill = student.distill

    def shard_0_finishes_meanwhile(*args, **kwargs):
        out.write_text(elsewhere.read_text())
        return distill(*args, **kwargs)

    monkeypatch.setattr(student, "distill", shard_0_finishes_meanwhile)
    assert record.main(common + ["--storage", f"sqlite:///{tmp_path / 'b.db'}",
                                 "--shard", "1/2"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["params"]["base_width"] for r in rows] == [4, 6]
    assert rows[0] == json.loads(elsewhere.read_text())["rows"][0]
