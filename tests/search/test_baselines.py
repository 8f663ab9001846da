import optuna
import pytest
from optuna.trial import TrialState

from kdsearch.errors import StudyFileError
from kdsearch.options import Options
from kdsearch.report import plots
from kdsearch.report.rows import pareto_data, read_rows
from kdsearch.report.summary import summary_markdown
from kdsearch.report.tables import best_table, write_trials_csv
from kdsearch.search import baselines
from kdsearch.spec import parse_study
from kdsearch.study.runner import run_study
from kdsearch.study.storage import retry_failed_trial
from tests.helpers import tiny_study_text

SHAPE = (1, 8, 8)
PICK = """
[[search.baselines]]
label = "my pick"
params = { depth = 2, width = 4, kernel = 5, temperature = 4.0, alpha = 0.9 }
"""


def _spec(tmp_path, extra: str, n_trials: int = 2):
    return parse_study(tiny_study_text(n_trials=n_trials) + extra, tmp_path / "tiny.toml")


def test_a_baseline_is_completed_from_the_space_and_checked(tmp_path):
    [(label, params)] = baselines.resolve(_spec(tmp_path, PICK), SHAPE)
    assert label == "my pick"
    # convs_per_block and dense are fixed in this space: filled in, not required
    assert params == {"depth": 2, "convs_per_block": 1, "width": 4, "kernel": 5, "dense": 0,
                      "conv_dropout": 0.0, "dropout": 0.0, "temperature": 4.0, "alpha": 0.9}


@pytest.mark.parametrize("params, message", [
    ("depth = 2, width = 6, kernel = 3, temperature = 4.0, alpha = 0.9",
     "width = 6 is not one of [4, 8]"),
    ("depth = 3, width = 4, kernel = 3, temperature = 4.0, alpha = 0.9",
     "depth = 3 is not an integer in 1..2"),
    ("depth = 2, width = 4, kernel = 3, temperature = 40.0, alpha = 0.9",
     "temperature = 40.0 is not a number in 1..10"),
    ("depth = 2, width = 4, temperature = 4.0, alpha = 0.9",
     "no value for 'kernel' (this space allows one of [3, 5])"),
    ("depth = 2, width = 4, kernel = 3, temperature = 4.0, alpha = 0.9, widht = 4",
     "'widht' is not a parameter of this search space"),
])
def test_a_bad_baseline_is_one_line_naming_the_value(tmp_path, params, message):
    spec = _spec(tmp_path, f'[[search.baselines]]\nlabel = "x"\nparams = {{ {params} }}\n')
    with pytest.raises(StudyFileError) as e:
        baselines.resolve(spec, SHAPE)
    assert message in str(e.value) and "'x'" in str(e.value) and "\n" not in str(e.value)


def test_baselines_need_a_search_and_distinct_labels(tmp_path):
    with pytest.raises(StudyFileError, match="baselines are for searches"):
        _spec(tmp_path, '\nsampler = "grid"\n' + PICK)
    with pytest.raises(StudyFileError, match="its own label"):
        _spec(tmp_path, PICK + PICK)


def _opts(tmp_path, n_trials):
    return Options(storage=f"sqlite:///{tmp_path}/s.db", study_name="tiny", n_trials=n_trials,
                      timeout=None, data_dir=None, cache_dir=tmp_path / "cache", device="cpu")


@pytest.mark.slow
def test_the_baseline_runs_first_in_full_once_and_is_marked(tmp_path):
    spec = _spec(tmp_path, PICK, n_trials=4)
    logs: list[str] = []

    def stop_everything(trial, epoch, val_acc):  # an early-stopping rule that stops all
        raise optuna.TrialPruned("stopped")

    study = run_study(spec, _opts(tmp_path, 4), log=logs.append, on_epoch=stop_everything)
    first = study.trials[0]
    assert first.user_attrs["baseline"] == "my pick"
    assert first.params["width"] == 4 and first.params["kernel"] == 5
    assert first.state == TrialState.COMPLETE
    assert len(first.user_attrs["val_curve"]) == spec.student.train.epochs
    assert any("queued 1 hand-picked baseline" in m for m in logs)
    assert [t.state for t in study.trials[1:]] == [TrialState.PRUNED] * 3  # the rule works

    # ... a resumed run does not queue it again
    study = run_study(spec, _opts(tmp_path, 6), log=logs.append)
    assert sum(t.user_attrs.get("baseline") == "my pick" for t in study.trials) == 1

    # marked on the Pareto plot, in the best table, the CSV and the summary
    snap = read_rows(study)
    data = pareto_data(snap)
    assert [r.number for r in data.baselines] == [0]
    fig = plots.pareto_figure(data)
    marked = [t for t in fig.data if t.name == "hand-picked"]
    assert marked and list(marked[0].text) == ["my pick"]
    summary = summary_markdown(snap)
    assert "## Hand-picked baselines" in summary and "| my pick | 0 |" in summary
    assert "my pick" in best_table(snap)
    write_trials_csv(snap, tmp_path / "t.csv")
    assert "my pick" in (tmp_path / "t.csv").read_text().splitlines()[1]


def test_a_retried_baseline_keeps_its_label(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/r.db", directions=["maximize", "minimize"])
    study.enqueue_trial({"x": 1.0}, user_attrs={"baseline": "mine"})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    trial.set_user_attr("val_curve", [0.5])
    study.tell(trial, state=TrialState.FAIL)
    retry_failed_trial(study, study.trials[0])
    waiting = study.get_trials(states=[TrialState.WAITING])
    assert [t.user_attrs for t in waiting] == [{"baseline": "mine"}]
