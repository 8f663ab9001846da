import optuna
import pytest
import torch
from optuna.trial import TrialState

import kdsearch.training.engine as engine
from kdsearch.options import Options
from kdsearch.record import TrialRecord, study_teacher
from kdsearch.spec import parse_study
from kdsearch.study.runner import run_study
from tests.helpers import mlp_study_text, tiny_study_text


def _opts(tmp_path, n_trials, name="tiny"):
    return Options(storage=f"sqlite:///{tmp_path}/s.db", study_name=name, n_trials=n_trials,
                      timeout=None, data_dir=None, cache_dir=tmp_path / "cache", device="cpu")


@pytest.mark.slow
def test_study_runs_resumes_and_records_everything(tmp_path, capsys):
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    logs = []
    study = run_study(spec, _opts(tmp_path, 2), log=logs.append)
    # progress on stderr: within the running trial, and for the run once a trial is complete
    err = capsys.readouterr().err
    assert f"trial 0: epoch {spec.student.train.epochs}/{spec.student.train.epochs} 100%" in err
    assert "run ~" in err and "left" in err
    # the closing summary: counts, wall time, the front
    assert "2 complete, 0 pruned, 0 failed (2 trials in the study)" in logs[-len(study.best_trials) - 2]
    assert logs[-len(study.best_trials) - 1].startswith("Pareto front: ")
    assert {int(line.split()[1]) for line in logs[-len(study.best_trials):]} == \
        {t.number for t in study.best_trials}
    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert len(trials) == 2
    assert study.metric_names == ["val_accuracy", "params"]
    for t in trials:
        assert {"depth", "width", "kernel", "temperature", "alpha"} <= set(t.params)
        acc, params = t.values
        assert 0.0 <= acc <= 1.0 and acc == t.user_attrs["val_accuracy"]
        assert params == t.user_attrs["params"] > 0
        for key in ("macs", "test_accuracy", "train_seconds", "architecture", "val_curve"):
            assert key in t.user_attrs
        assert len(t.user_attrs["val_curve"]) == spec.student.train.epochs
        assert t.intermediate_values == {}  # the curve is stored once, in the record
    teacher = study_teacher(study)
    assert teacher.params > 0 and 0 <= teacher.val_accuracy <= 1

    # resume: the target is study-wide; only the missing trials run, the teacher is reused
    logs.clear()
    study = run_study(spec, _opts(tmp_path, 4), log=logs.append)
    assert len(study.get_trials(states=[TrialState.COMPLETE])) == 4
    assert any("reusing cached teacher" in m for m in logs)
    assert not any("training teacher" in m for m in logs)
    numbers = [t.number for t in study.trials]
    assert numbers == sorted(set(numbers))
    # a resumed run draws new points rather than repeating the first run's
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert params[2:] != params[:2]

    # nothing more to do at the same target
    study = run_study(spec, _opts(tmp_path, 4), log=logs.append)
    assert len(study.trials) == 4


@pytest.mark.slow
def test_pruned_trial_keeps_the_epochs_it_ran_in_its_record(tmp_path):
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    assert spec.student.train.epochs >= 2

    def prune_after_first(trial, epoch, val_acc):
        raise optuna.TrialPruned("test")

    logs = []
    study = run_study(spec, _opts(tmp_path, 1), log=logs.append, on_epoch=prune_after_first)
    assert "0 complete, 1 pruned, 0 failed" in logs[-2]
    assert logs[-1] == "Pareto front: empty (no complete trial)"
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert len(TrialRecord.of(trial).val_curve) == 1 and trial.intermediate_values == {}


@pytest.mark.slow
def test_nan_loss_ends_as_pruned_with_reason_and_the_study_goes_on(tmp_path, monkeypatch):
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    real = engine.kd_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 1 else loss

    monkeypatch.setattr(engine, "kd_loss", sometimes_nan)
    # alpha fixed > 0 so every trial goes through kd_loss
    text = tiny_study_text().replace("alpha = { low = 0.0, high = 1.0 }", "alpha = 0.5")
    spec = parse_study(text, tmp_path / "tiny.toml")
    study = run_study(spec, _opts(tmp_path, 2), log=lambda m: None)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) == 1 and states.count(TrialState.COMPLETE) == 1
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    assert "non-finite loss" in pruned.user_attrs["stopped_reason"]


@pytest.mark.slow
def test_trials_are_scored_on_validation_not_test(tmp_path, monkeypatch):
    """Swap the test split's labels: objective values must not move."""
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    study = run_study(spec, _opts(tmp_path, 1, "a"), log=lambda m: None)
    import kdsearch.study.runner as runner
    from kdsearch.training.data import Dataset, Split

    real_load = runner.load_data

    def scrambled(*a, **k):
        d = real_load(*a, **k)
        return Dataset(d.name, d.train, d.val, Split(d.test.x, (d.test.y + 1) % d.num_classes),
                       d.num_classes, d.mean, d.std, d.identity)

    monkeypatch.setattr(runner, "load_data", scrambled)
    other = run_study(spec, _opts(tmp_path, 1, "b"), log=lambda m: None)
    a, b = study.trials[0], other.trials[0]
    assert a.params == b.params
    assert a.values == pytest.approx(b.values)
    assert a.user_attrs["test_accuracy"] != b.user_attrs["test_accuracy"]


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from kdsearch.errors import KdsearchError

    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    opts = _opts(tmp_path, 1)
    with pytest.raises(KdsearchError, match="no CUDA device"):
        run_study(spec, Options(**{**opts.__dict__, "device": "cuda"}), log=lambda m: None)


@pytest.mark.slow
def test_optuna_storage_is_plain_sqlite(tmp_path):
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    run_study(spec, _opts(tmp_path, 1), log=lambda m: None)
    loaded = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/s.db")
    assert len(loaded.trials) == 1


def test_a_trials_share_done_counts_images_so_cheap_early_epochs_count_less():
    from kdsearch.study.console import trial_share

    assert trial_share(1, 5, 10, [100] * 4) == 0.125  # half of epoch 1 of 4 equal epochs
    early = [25, 25, 100, 100]  # two epochs on a quarter of the images
    assert trial_share(1, 10, 10, early) == 0.1  # all of epoch 1: a tenth of the images
    assert trial_share(3, 0, 10, early) == 0.2
    assert trial_share(4, 10, 10, early) == 1.0


def test_run_estimate_averages_complete_and_pruned_trials_apart():
    from kdsearch.study.console import run_estimate

    C, P = TrialState.COMPLETE, TrialState.PRUNED
    assert run_estimate({C: [], P: [0.4]}, 5) is None  # nothing complete: no honest guess
    assert run_estimate({C: [10.0]}, 0) == 0.0
    # 2 complete at 10 s, 2 pruned at 0.4 s: half the trials cost 10 s, half 0.4 s
    seen = {C: [10.0, 10.0], P: [0.4, 0.4]}
    assert run_estimate(seen, 4) == pytest.approx(4 * 5.2)
    # the running trial, 30% done, is counted as a complete one: 7 s left of it
    assert run_estimate(seen, 4, running_fraction=0.3) == pytest.approx(3 * 5.2 + 7.0)
    # more pruned trials seen -> a shorter estimate, whatever order they came in
    assert run_estimate({C: [10.0], P: [0.4] * 3}, 4) < run_estimate(seen, 4)
    # a timeout ends the run first: by its clock, or by the running trial's end if later
    assert run_estimate(seen, 10**6, 0.3, clock_left=60.0) == pytest.approx(60.0)
    assert run_estimate(seen, 10**6, 0.3, clock_left=2.0) == pytest.approx(7.0)
    assert run_estimate(seen, 10**6, None, clock_left=-5.0) == 0.0
    assert run_estimate(seen, 4, 0.3, clock_left=3600.0) == pytest.approx(3 * 5.2 + 7.0)


@pytest.mark.slow
def test_a_changed_study_file_is_refused_naming_the_keys_and_nothing_is_written(tmp_path):
    from kdsearch import record
    from kdsearch.errors import StudyFileError
    text = mlp_study_text(epochs=1, n_trials=1)
    spec = parse_study(text, tmp_path / "tiny.toml")
    run_study(spec, _opts(tmp_path, 1), log=lambda m: None)
    url = f"sqlite:///{tmp_path}/s.db"

    def attempt(new_text, n_trials=1, seed=None):
        changed = parse_study(new_text, tmp_path / "tiny.toml").with_overrides(seed=seed)
        return run_study(changed, _opts(tmp_path, n_trials), log=lambda m: None)

    edits = {"student.width": text.replace("[4, 8, 16]", "[4, 8]"),
             "student.train.epochs": text.replace("epochs = 1\nbatch_size = 32",
                                                  "epochs = 2\nbatch_size = 32")}
    for key, new_text in edits.items():
        with pytest.raises(StudyFileError, match=r"differs in " + key.replace(".", r"\.")) as e:
            attempt(new_text, n_trials=3)
        assert "--study-name" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(StudyFileError, match=r"differs in seed\)"):
        attempt(text, n_trials=3, seed=5)  # another seed draws other students: another study
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # no FAIL, no new trial
    assert record.study_attr(study, record.STUDY_FILE) == text  # the stored copy kept

    # Comments, blank lines, the description, the stored seed given again and the target
    # (n_trials) are not the study's definition: the run goes on.
    same = ("# edited\n" + text.replace('description = "tests: a few-second study"',
                                        'description = "renamed"') + "\n\n")
    assert len(attempt(same, n_trials=2, seed=0).trials) == 2


@pytest.mark.slow
def test_study_attributes_are_short_and_the_study_file_reads_back(tmp_path):
    """`optuna studies` prints every user attribute of every study on one row."""
    import json

    from kdsearch.record import stored_spec

    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml").with_overrides(seed=3)
    study = run_study(spec, _opts(tmp_path, 1), log=lambda m: None)
    assert len(json.dumps(study.user_attrs)) < 150, study.user_attrs
    back = stored_spec(optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/s.db"))
    assert back.source == spec.source and back.seed == 3
    assert back.student == spec.student


def test_storage_is_checked_before_the_data_loads(tmp_path, monkeypatch):
    import kdsearch.study.runner as runner
    from kdsearch.errors import StorageError

    def no_data(*a, **k):
        raise AssertionError("data loaded before the storage was checked")

    monkeypatch.setattr(runner, "load_data", no_data)
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    opts = Options(storage="postgresql+psycopg://nobody@127.0.0.1:1/none", study_name="tiny",
                   cache_dir=tmp_path / "c", device="cpu")
    with pytest.raises(StorageError, match="cannot open storage"):
        runner.prepare(spec, opts, log=lambda m: None)


@pytest.mark.slow
def test_a_trial_taken_over_by_another_worker_is_dropped_with_a_warning(tmp_path):
    """This worker was silent past the grace period; another failed its trial and queued the
    retry. Its next write finds the trial finished: it warns, drops it and goes on."""
    from kdsearch.optuna_internals import trial_id
    from kdsearch.study.storage import open_storage, retry_failed_trial

    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")  # 2 epochs per trial
    url = f"sqlite:///{tmp_path}/s.db"
    taken: list[int] = []

    def other_worker_takes_over(trial, epoch, val_acc):
        if not taken:
            taken.append(trial.number)
            storage = open_storage(url, heartbeats=None, read_only=False)
            other = optuna.load_study(study_name="tiny", storage=storage)
            storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL)
            retry_failed_trial(other, storage.get_trial(trial_id(trial)))

    logs: list[str] = []
    study = run_study(spec, _opts(tmp_path, 2), log=logs.append, on_epoch=other_worker_takes_over)
    warned = [m for m in logs if "taken over" in m]
    assert len(warned) == 1 and warned[0].startswith(f"warning: trial {taken[0]} ")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert any(t.params == failed.params and t.state == TrialState.COMPLETE for t in study.trials)
