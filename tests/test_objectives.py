"""`[search] objectives`: the cost objective(s) chosen in the study file, end to end.

Tiny studies through the real CLI (run-study, best --format json, export, compress), then the
limits that refuse a student before it is trained.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kdsearch import objectives
from kdsearch.errors import StudyFileError
from kdsearch.options import Options
from kdsearch.record import TEACHER_LATENCY, study_attr
from kdsearch.spec import parse_study
from kdsearch.study.runner import run_study
from kdsearch.training.latency import MIN_REPEATS
from tests import helpers

kdsearch = functools.partial(helpers.kdsearch, check=False)


def _ok(proc):
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


def _error_line(proc) -> str:
    """The one error line, last on stderr (after any progress lines), exit 2, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("kdsearch: error:") and "Traceback" not in proc.stderr
    assert proc.stderr.count("kdsearch: error:") == 1
    return line


def _complete(study: optuna.Study) -> list:
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


# --- the study file ---------------------------------------------------------------------------

BASE = helpers.mlp_study_text(epochs=1, n_trials=2)


def test_a_file_without_objectives_keeps_params():
    spec = parse_study(BASE, Path("x.toml"))
    assert spec.search.objectives == ["params"]
    assert objectives.directions(spec.search.objectives) == ["maximize", "minimize"]
    assert objectives.metric_names(spec.search.objectives) == ["val_accuracy", "params"]


@pytest.mark.parametrize("line, message", [
    ('objectives = ["flops"]', "key 'search.objectives.0': expected 'params', 'macs' or "
                               "'latency_ms', found 'flops'"),
    ('objectives = ["macs", "macs"]', "key 'search.objectives': expected each objective once"),
    ("objectives = []", "key 'search.objectives': expected one or more of"),
])
def test_bad_objectives_are_one_line(line, message):
    with pytest.raises(StudyFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_study(BASE + line + "\n", Path("x.toml"))


def test_limits_sit_under_student_and_objectives_go_into_the_stored_spec():
    text = BASE.replace("[student.train]", "max_macs = 500\nmax_latency_ms = 0.5\n[student.train]")
    spec = parse_study(text + 'objectives = ["latency_ms", "macs"]\n', Path("x.toml"))
    assert (spec.student.max_macs, spec.student.max_latency_ms) == (500, 0.5)
    # the stored definition of a study (its spec attribute) names its objectives
    assert spec.model_dump(mode="json")["search"]["objectives"] == ["latency_ms", "macs"]
    assert objectives.metric_names(spec.search.objectives) == ["val_accuracy", "latency_ms", "macs"]


def test_metric_names_read_back():
    assert objectives.from_metric_names(["val_accuracy", "macs"], 2) == ("macs",)
    assert objectives.from_metric_names(None, 2) == ("params",)  # a hand-made study
    assert objectives.from_metric_names(None, 3) is None
    assert objectives.from_metric_names(["loss", "params"], 2) is None


# --- end to end through the CLI ---------------------------------------------------------------


@pytest.mark.slow
def test_macs_study_runs_reports_exports_and_compresses_on_macs(tmp_path):
    study_file = helpers.tiny_study(tmp_path, epochs=1, n_trials=4, name="m", objectives=["macs"])
    url = f"sqlite:///{tmp_path / 'm.db'}"
    common = ["--storage", url, "--cache-dir", str(tmp_path / "c")]
    run = _ok(kdsearch("run-study", str(study_file), *common, "--device", "cpu"))
    assert "Pareto front of 'm' on macs" in run.stdout

    study = optuna.load_study(study_name="m", storage=url)
    assert study.metric_names == ["val_accuracy", "macs"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    done = _complete(study)
    assert len(done) >= 2
    for t in done:  # the cost Optuna minimizes is the MAC count, not the parameter count
        assert t.values[1] == t.user_attrs["macs"] != t.user_attrs["params"]
        assert "latency_ms" not in t.user_attrs  # nothing asked for latency: never timed

    rows = json.loads(_ok(kdsearch("best", "m", "--storage", url, "--format", "json")).stdout)
    assert rows and all(r["objectives"] == ["val_accuracy", "macs"] for r in rows)
    assert all(r["values"][1] == r["macs"] and r["latency_ms"] is None for r in rows)
    assert [r["macs"] for r in rows] == sorted(r["macs"] for r in rows)  # cheapest first

    out = tmp_path / "report"
    _ok(kdsearch("export", "m", "--storage", url, "--out", str(out)))
    html = (out / "pareto.html").read_text()
    assert "MACs per image (log scale)" in html and "parameters (log scale)" not in html
    assert "log10(macs) x accuracy" in (out / "summary.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    # compress --max-macs: the best validation accuracy among trials within the MACs
    macs = sorted({t.user_attrs["macs"] for t in done})
    limit = macs[1] if len(macs) > 1 else macs[0]
    fits = [t for t in done if t.user_attrs["macs"] <= limit]
    best = max(t.user_attrs["val_accuracy"] for t in fits)
    model = tmp_path / "model"
    comp = _ok(kdsearch("compress", "m", *common, "--max-macs", str(limit), "--out", str(model),
                        "--epochs", "1", "--device", "cpu"))
    meta = json.loads((model / "architecture.json").read_text())
    picked = next(t for t in done if t.number == meta["trial"])
    assert meta["macs"] <= limit and picked.user_attrs["val_accuracy"] == best, comp.stderr

    # a study's objectives are part of its definition: the same name with other objectives is
    # refused as any changed study file is, naming the key
    (tmp_path / "other").mkdir()
    other = helpers.tiny_study(tmp_path / "other", epochs=1, n_trials=4, name="m",
                               objectives=["params"])
    line = _error_line(kdsearch("run-study", str(other), *common, "--device", "cpu"))
    assert "was created from a different version of this study (differs in " \
           "search.objectives)" in line


def test_an_empty_study_of_other_objectives_is_refused_before_anything_is_written(tmp_path):
    # No study file stored, so no definition to compare: the objectives themselves are checked.
    from kdsearch import optuna_internals
    from kdsearch.errors import StorageError
    from kdsearch.study.runner import check_stored

    url = f"sqlite:///{tmp_path / 'e.db'}"
    made = optuna.create_study(study_name="e", storage=url, directions=["maximize", "minimize"])
    made.set_metric_names(["val_accuracy", "params"])
    path = helpers.tiny_study(tmp_path, name="e", objectives=["macs"])
    spec = parse_study(path.read_text(), path)
    with pytest.raises(StorageError, match=r"other objectives \(val_accuracy, params\) than "
                                           r"the study file's \(val_accuracy, macs\)"):
        check_stored(spec, Options(storage=url, study_name="e"), url)
    assert set(optuna_internals.study_system_attrs(made)) == {"study:metric_names"}


@pytest.mark.slow
def test_params_and_latency_study_records_the_method_and_draws_both_costs(tmp_path):
    study_file = helpers.tiny_study(tmp_path, epochs=1, n_trials=3, name="lat",
                                    objectives=["params", "latency_ms"])
    url = f"sqlite:///{tmp_path / 'lat.db'}"
    _ok(kdsearch("run-study", str(study_file), "--storage", url, "--cache-dir",
                 str(tmp_path / "c"), "--device", "cpu"))

    study = optuna.load_study(study_name="lat", storage=url)
    assert study.metric_names == ["val_accuracy", "params", "latency_ms"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    done = _complete(study)
    assert done
    for t in done:
        a = t.user_attrs
        assert t.values[1:] == [a["params"], a["latency_ms"]] and a["latency_ms"] > 0
        method = a["latency_method"]
        assert method["device"] == "cpu" and method["threads"] >= 1
        assert method["repeats"] >= MIN_REPEATS and method["torch"]
        low, high = method["ci95_ms"]
        assert low <= a["latency_ms"] <= high  # the median lies in its own interval
    teacher = study_attr(study, TEACHER_LATENCY)  # the teacher timed as the students were
    assert teacher["latency_ms"] > 0 and teacher["method"]["repeats"] >= MIN_REPEATS

    rows = json.loads(_ok(kdsearch("best", "lat", "--storage", url, "--format", "json")).stdout)
    assert rows and all(r["objectives"] == ["val_accuracy", "params", "latency_ms"] for r in rows)
    assert all(r["values"][2] == r["latency_ms"] for r in rows)
    table = _ok(kdsearch("best", "lat", "--storage", url)).stdout
    assert "latency_ms" in table and "on params and latency_ms" in table

    out = tmp_path / "report"
    _ok(kdsearch("export", "lat", "--storage", url, "--out", str(out)))
    html = (out / "pareto.html").read_text()
    assert "parameters (log scale)" in html  # one panel per cost, each titled by its cost
    assert "latency per image at batch 1, ms (log scale)" in html
    summary = (out / "summary.md").read_text()
    assert "latency (ms)" in summary and "log10(params) x log10(latency_ms) x accuracy" in summary
    rows_csv = (out / "trials.csv").read_text().splitlines()
    assert "latency_ms" in rows_csv[0].split(",")


# --- limits refused before training -----------------------------------------------------------


def _opts(tmp_path: Path, n: int) -> Options:
    return Options(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="limits", n_trials=n,
                   timeout=None, data_dir=None, cache_dir=tmp_path / "cache", device="cpu")


@pytest.mark.slow
def test_max_macs_and_max_latency_refuse_students_before_training(tmp_path):
    # 300 MACs: only the width-4 students (268 and 284 MACs) fit; the rest are refused
    text = (helpers.mlp_study_text(epochs=1, n_trials=6)
            .replace("[student.train]", "max_macs = 300\n[student.train]"))
    study = run_study(parse_study(text, tmp_path / "limits.toml"), _opts(tmp_path, 6),
                      log=lambda m: None)
    refused = [t for t in study.trials if "MACs > max_macs 300" in
               t.user_attrs.get("stopped_reason", "")]
    assert refused, "six random students, none over 300 MACs: the limit went untested"
    for t in refused:
        assert t.state == TrialState.PRUNED and t.user_attrs["macs"] > 300
        assert "val_curve" not in t.user_attrs  # never trained
    assert all(t.user_attrs["macs"] <= 300 for t in _complete(study))

    # A latency no student can meet: each is timed (untrained), refused, and never trained.
    text = (helpers.mlp_study_text(epochs=1, n_trials=2)
            .replace("[student.train]", "max_latency_ms = 0.000001\n[student.train]"))
    spec = parse_study(text, tmp_path / "fast.toml")
    (tmp_path / "fast").mkdir()
    study = run_study(spec, _opts(tmp_path / "fast", 2), log=lambda m: None)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    for t in study.trials:
        assert "ms latency > max_latency_ms 1e-06" in t.user_attrs["stopped_reason"]
        assert t.user_attrs["latency_ms"] > 0 and "val_curve" not in t.user_attrs
    # a limit alone times students but leaves the objectives as they were
    assert study.metric_names == ["val_accuracy", "params"]


@pytest.mark.slow
def test_the_same_student_is_timed_once_and_ties_on_latency(tmp_path):
    """Identical students have identical latency: the second reuses the first's measurement
    (and says so) rather than differing by timing noise."""
    text = helpers.mlp_study_text(epochs=1, n_trials=2, student='family = "mlp"\ndepth = 1\nwidth = 4') \
        + 'objectives = ["latency_ms"]\n'
    study = run_study(parse_study(text, tmp_path / "one.toml"), _opts(tmp_path, 2),
                      log=lambda m: None)
    first, second = (t.user_attrs for t in study.trials)
    assert first["architecture"] == second["architecture"]
    assert second["latency_ms"] == first["latency_ms"]
    assert "reused_from_trial" not in first["latency_method"]
    assert second["latency_method"] == {**first["latency_method"], "reused_from_trial": 0}
