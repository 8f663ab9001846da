"""The CLI as a newcomer uses it: real processes, real files."""

import csv
import functools

import pytest

from tests import helpers

kdsearch = functools.partial(helpers.kdsearch, check=False)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    storage = f"sqlite:///{tmp}/s.db"
    first = kdsearch("run-study", "smoke", "--storage", storage, "--cache-dir", str(tmp / "c"))
    return tmp, storage, first


def test_smoke_study_end_to_end(smoke_run):
    tmp, storage, first = smoke_run
    assert first.returncode == 0, first.stderr
    assert "training teacher" in first.stderr
    assert "Pareto front of 'smoke'" in first.stdout
    import optuna

    study = optuna.load_study(study_name="smoke", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:
        assert {"depth", "width", "kernel", "temperature"} <= set(t.params)
        assert 0 <= t.values[0] <= 1 and t.values[1] == t.user_attrs["params"]

    again = kdsearch("run-study", "smoke", "--storage", storage, "--cache-dir", str(tmp / "c"),
                     "--n-trials", "5")
    assert again.returncode == 0, again.stderr
    assert "reusing cached teacher" in again.stderr and "training teacher" not in again.stderr
    study = optuna.load_study(study_name="smoke", storage=storage)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 5
    assert len(study.trials) == 5


def test_best_and_export(smoke_run):
    tmp, storage, _ = smoke_run
    best = kdsearch("best", "smoke", "--storage", storage)
    assert best.returncode == 0, best.stderr
    assert "val_acc" in best.stdout and "teacher:" in best.stdout
    out = tmp / "o"
    exp = kdsearch("export", "smoke", "--storage", storage, "--out", str(out))
    assert exp.returncode == 0, exp.stderr
    for name in ("pareto.html", "pareto.png", "trials.csv", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "pareto.html").read_text()
    assert "Pareto front" in html and "cnn " in html  # hover carries the architecture
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 3 and {"val_accuracy", "params", "architecture"} <= set(rows[0])
    assert any(r["pareto"] == "1" for r in rows)


def _one_line_error(result):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdsearch: error:")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_malformed_study_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\ndataset = 'mnist'\nval_size = -4\n")
    line = _one_line_error(kdsearch("run-study", str(bad), "--storage", f"sqlite:///{tmp_path}/x.db"))
    assert str(bad) in line and "data.val_size" in line
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("args", [
    ["run-study", "no_such_study"],
    ["run-study", "smoke", "--n-trials", "0"],
    ["run-study", "smoke", "--n-trials", "many"],
    ["run-study", "smoke", "--timeout", "-1"],
    ["run-study", "smoke", "--device", "tpu"],
    ["best", "smoke", "--storage", "sqlite:////nonexistent/dir/x.db"],
    ["frobnicate"],
])
def test_bad_arguments_are_one_line(args, tmp_path):
    _one_line_error(kdsearch(*args, cwd=tmp_path))


def test_missing_data_is_one_line(tmp_path):
    result = kdsearch("run-study", "mnist_distill", "--data-dir", str(tmp_path / "nowhere"),
                      "--storage", f"sqlite:///{tmp_path}/x.db", "--cache-dir", str(tmp_path / "c"),
                      env={"KDSEARCH_OFFLINE": "1"})
    line = _one_line_error(result)
    assert "--data-dir" in line and str(tmp_path / "nowhere") in line


def test_best_on_unknown_study_names_the_known_ones(smoke_run):
    _, storage, _ = smoke_run
    line = _one_line_error(kdsearch("best", "nope", "--storage", storage))
    assert "no study 'nope'" in line and "smoke" in line


def test_read_only_commands_never_write_to_a_storage(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    for args in (["best", "smoke"], ["export", "smoke", "--out", str(tmp_path / "o")]):
        line = _one_line_error(kdsearch(*args, "--storage", f"sqlite:///{empty}"))
        assert f"no kdsearch studies in sqlite:///{empty}" in line
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_run_study_refuses_a_changed_study_file_in_one_line(tmp_path):
    from kdsearch.options import Options
    from kdsearch.spec import load_study
    from kdsearch.study.runner import run_study

    path = helpers.tiny_study(tmp_path, epochs=1, n_trials=1)
    storage = f"sqlite:///{tmp_path}/s.db"
    run_study(load_study(str(path)), Options(storage=storage, study_name="tiny", n_trials=1,
                                             cache_dir=tmp_path / "c", device="cpu"),
              log=lambda m: None)
    path.write_text(path.read_text().replace("[4, 8, 16]", "[4, 8, 32]"))
    line = _one_line_error(kdsearch("run-study", str(path), "--storage", storage,
                                    "--cache-dir", str(tmp_path / "c"), "--n-trials", "3"))
    assert str(path) in line and "student.width" in line and "--study-name" in line
    import optuna

    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 1
