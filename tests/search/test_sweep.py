"""Sweep studies: the grid, its size as the default trial count, and a real tiny sweep run."""

from __future__ import annotations

import statistics

import optuna
import pytest

from kdsearch.errors import StudyFileError
from kdsearch.options import Options
from kdsearch.record import TrialRecord
from kdsearch.report.accuracy import accuracy_by
from kdsearch.report.rows import DISTILLED, PLAIN, is_distilled, read_rows
from kdsearch.report.tables import sweep_table
from kdsearch.search.sweep import sweep_grid, sweep_size, swept_params, trials_wanted
from kdsearch.spec import parse_study
from kdsearch.study.runner import run_study
from tests.helpers import CNN_TABLES, study_text

SWEEP = study_text(
    **CNN_TABLES,
    student='family = "mlp"\n'
            "depth = { choices = [1, 2] }  # hidden layers: a depth of 0 is refused at load\n"
            "width = 8\ntemperature = 4.0\nalpha = { choices = [0.0, 0.9] }",
    student_train="epochs = 1\nbatch_size = 64\nlr = 0.003",
    search='sampler = "grid"\nrepeats = 2')


def test_grid_holds_swept_values_alpha_and_repeats(tmp_path):
    spec = parse_study(SWEEP, tmp_path / "sw.toml")
    grid = sweep_grid(spec)
    assert grid["depth"] == [1, 2] and grid["alpha"] == [0.0, 0.9] and grid["repeat"] == [0, 1]
    assert grid["width"] == [8] and grid["temperature"] == [4.0]
    assert sweep_size(spec) == 8
    assert swept_params(spec) == ["depth"]


def test_grid_size_is_the_default_trial_count_and_a_cap(tmp_path):
    spec = parse_study(SWEEP, tmp_path / "sw.toml")
    assert trials_wanted(spec, None) == (8, None)
    assert trials_wanted(spec, 3) == (3, None)
    n, note = trials_wanted(spec, 50)
    assert n == 8 and "8 points" in note
    explicit = parse_study(SWEEP.replace('repeats = 2', 'repeats = 2\nn_trials = 5'),
                           tmp_path / "sw2.toml")
    assert trials_wanted(explicit, None) == (5, None)


def test_three_swept_parameters_are_refused(tmp_path):
    body = SWEEP.replace("width = 8\n", "width = { choices = [8, 16] }\n").replace(
        "temperature = 4.0", "temperature = { choices = [2.0, 4.0] }")
    spec = parse_study(body, tmp_path / "sw.toml")
    with pytest.raises(StudyFileError, match="one or two.*found 3: depth, width, temperature"):
        sweep_grid(spec)


def test_float_range_in_a_grid_is_refused(tmp_path):
    spec = parse_study(SWEEP.replace(
        "temperature = 4.0", "temperature = { low = 1.0, high = 4.0 }"), tmp_path / "sw.toml")
    with pytest.raises(StudyFileError, match="student.temperature: a grid sweep needs"):
        sweep_grid(spec)


def test_repeats_need_a_grid(tmp_path):
    with pytest.raises(StudyFileError, match="repeats > 1 only with sampler = 'grid'"):
        parse_study(SWEEP.replace('"grid"', '"random"'), tmp_path / "sw.toml")


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> optuna.Study:
    tmp = tmp_path_factory.mktemp("sweep")
    spec = parse_study(SWEEP, tmp / "sw.toml")
    n, _ = trials_wanted(spec, None)
    return run_study(spec, Options(storage=f"sqlite:///{tmp / 's.db'}", study_name="sw",
                                      n_trials=n, timeout=None, data_dir=None,
                                      cache_dir=tmp / "cache", device="cpu"), log=lambda m: None)


@pytest.mark.slow
def test_sweep_runs_every_grid_point_once(swept):
    trials = swept.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    points = {(t.params["depth"], t.params["alpha"], t.params["repeat"]) for t in trials}
    assert len(trials) == 8 and len(points) == 8


@pytest.mark.slow
def test_sweep_plot_data_is_mean_over_seeds_per_setting(swept):
    data = accuracy_by(read_rows(swept), "layers")
    assert data.statistic == "mean" and set(data.groups) == {DISTILLED, PLAIN}
    trials = swept.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    for line, points in data.groups.items():
        assert [p.x for p in points] == [1, 2]
        for p in points:
            expected = [TrialRecord.of(t).val_accuracy for t in trials if t.params["depth"] == p.x
                        and (not is_distilled(t.params["alpha"])) == (line == PLAIN)]
            assert sorted(p.values) == sorted(expected) and len(expected) == 2
            assert p.mean == pytest.approx(statistics.fmean(expected))


@pytest.mark.slow
def test_sweep_table_lists_each_setting_with_its_seeds(swept):
    table = sweep_table(read_rows(swept))
    lines = table.splitlines()
    assert "val acc (mean ± sd)" in lines[0] and len(lines) == 1 + 4
    assert all(" 2 " in line for line in lines[1:])  # two seeds per setting


@pytest.mark.slow
def test_sweeps_never_stop_trials_early(tmp_path):
    """Early stopping is on by default for searches; a sweep must train every point fully."""
    from optuna.trial import TrialState

    text = study_text(
        description=None, seed=None,
        data='dataset = "synthetic"\nval_size = 100\n'
             "synthetic = { n_train = 400, n_test = 100, num_classes = 3, noise = 1.5 }",
        teacher_train="epochs = 2",
        student='family = "mlp"\ndepth = { choices = [1, 2] }\nwidth = { choices = [2, 8] }\n'
                "temperature = 2.0\nalpha = { choices = [0.0, 0.9] }",
        student_train="epochs = 2",
        search='sampler = "grid"\nrepeats = 2\n'
               "early_stopping = { enabled = true, rungs = [1], min_trials = 1 }")
    spec = parse_study(text, tmp_path / "grid.toml")
    opts = Options(storage=f"sqlite:///{tmp_path}/s.db", study_name="grid", n_trials=16,
                      timeout=None, data_dir=None, cache_dir=tmp_path / "c", device="cpu")
    study = run_study(spec, opts, log=lambda m: None)
    assert len(study.trials) == 16
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
