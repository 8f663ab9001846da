import math
import zipfile

import optuna
import pytest

from kdsearch.record import TEACHER
from kdsearch.report.reports import best_table, hypervolume, pareto_rows, summary_markdown, write_csv
from tests.helpers import teacher_summary


def test_hypervolume_by_hand():
    # reference: 1000 params, accuracy 0; x axis is log10(params)
    assert hypervolume([], ref_params=1000) == 0
    assert hypervolume([(0.5, 10)], ref_params=1000) == pytest.approx((3 - 1) * 0.5)
    # a second point with more params and more accuracy adds the strip above the first
    two = hypervolume([(0.5, 10), (0.8, 100)], ref_params=1000)
    assert two == pytest.approx((2 - 1) * 0.5 + (3 - 2) * 0.8)
    # a dominated point adds nothing; points outside the reference box add nothing
    assert hypervolume([(0.5, 10), (0.8, 100), (0.4, 50), (0.9, 5000)], ref_params=1000) == two
    assert math.isclose(hypervolume([(0.8, 100), (0.5, 10)], 1000), two)


def _study_with(values):
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="s")
    study.set_user_attr(TEACHER, teacher_summary())
    for acc, params in values:
        t = study.ask()
        t.suggest_float("temperature", 1, 10)
        t.suggest_float("alpha", 0, 1)
        for k, v in {"val_accuracy": acc, "test_accuracy": acc - 0.01, "params": params,
                     "macs": params * 3, "arch_summary": f"mlp {params}"}.items():
            t.set_user_attr(k, v)
        study.tell(t, [acc, params])
    return study


def test_front_table_and_csv(tmp_path):
    study = _study_with([(0.5, 10), (0.8, 100), (0.4, 50), (0.6, 10)])
    front = pareto_rows(study)
    assert [(r.val_accuracy, r.params) for r in front] == [(0.6, 10), (0.8, 100)]
    table = best_table(study)
    assert "teacher: mlp 64" in table and "mlp 100" in table and "mlp 50" not in table
    write_csv(study, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("number,state,pareto")
    md = summary_markdown(study)
    assert "10.0x" in md  # compression ratio against the teacher's 1000 params


def test_wheel_ships_the_study_files(tmp_path):
    """Study files must be found when kdsearch is installed non-editable."""
    import subprocess
    import sys

    from tests.helpers import REPO

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("kdsearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for study in ("smoke", "mnist_distill", "cifar_compress"):
        assert f"kdsearch/studies/{study}.toml" in names


def test_pareto_numbers_match_optuna_best_trials():
    import random

    from kdsearch.report.reports import pareto_numbers

    rng = random.Random(0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(300):  # coarse values, so ties and duplicates occur
        study.add_trial(optuna.trial.create_trial(
            values=[rng.randint(0, 20) / 20, rng.choice([10, 20, 50, 100, 200, 500])]))
    assert pareto_numbers(study.trials) == {t.number for t in study.best_trials}
    assert 1 < len(pareto_numbers(study.trials)) < 300
