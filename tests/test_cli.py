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


@pytest.mark.slow
def test_smoke_study_end_to_end(smoke_run):
    tmp, storage, first = smoke_run
    assert first.returncode == 0, first.stderr
    assert "training teacher" in first.stderr
    assert "Pareto front of 'smoke'" in first.stdout
    import optuna

    from kdsearch.record import TrialRecord

    study = optuna.load_study(study_name="smoke", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:
        assert {"depth", "width", "kernel", "temperature"} <= set(t.params)
        assert 0 <= t.values[0] <= 1 and t.values[1] == TrialRecord.of(t).params

    again = kdsearch("run-study", "smoke", "--storage", storage, "--cache-dir", str(tmp / "c"),
                     "--n-trials", "5")
    assert again.returncode == 0, again.stderr
    assert "reusing cached teacher" in again.stderr and "training teacher" not in again.stderr
    study = optuna.load_study(study_name="smoke", storage=storage)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 5
    assert len(study.trials) == 5


@pytest.mark.slow
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


@pytest.mark.slow
def test_missing_data_is_one_line(tmp_path):
    result = kdsearch("run-study", "mnist_distill", "--data-dir", str(tmp_path / "nowhere"),
                      "--storage", f"sqlite:///{tmp_path}/x.db", "--cache-dir", str(tmp_path / "c"),
                      env={"KDSEARCH_OFFLINE": "1"})
    line = _one_line_error(result)
    assert "--data-dir" in line and str(tmp_path / "nowhere") in line


@pytest.mark.slow
def test_best_on_unknown_study_names_the_known_ones(smoke_run):
    _, storage, _ = smoke_run
    line = _one_line_error(kdsearch("best", "nope", "--storage", storage))
    assert "no study 'nope'" in line and "smoke" in line


# --- a teacher from a file: an ONNX model in NHWC, as a Keras export would be -------------------

FILE_STUDY = helpers.study_text(
    description=None, seed=None,
    data='dataset = "synthetic"\nval_size = 100\nsynthetic = { n_train = 400, n_test = 150, '
         "channels = 3, height = 8, width = 8, num_classes = 3, noise = 1.5 }",
    teacher='file = "FILE"', teacher_train=None,
    teacher_input='scale = 255.0\nmean = [0.5]\nstd = [0.25]\nlayout = "NHWC"',
    student='family = "mlp"\ndepth = 1\nwidth = { choices = [8, 16] }',
    student_train="epochs = 2\nbatch_size = 64\nviews = 2\nhflip = true\ntranslate = 1",
    search='n_trials = 2\nsampler = "random"')


def _onnx_teacher(study_path, out, classes: int = 3):
    """Train a small NHWC model on the study's own training split and export it to ONNX."""
    import torch
    from torch import nn

    from kdsearch.spec import load_study
    from kdsearch.training.data import load_data

    data = load_data(load_study(str(study_path)).data)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 3, 32), nn.ReLU(), nn.Linear(32, classes))
    x = ((data.train.x.float() / 255 - 0.5) / 0.25).permute(0, 2, 3, 1)  # what the file is fed
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), data.train.y).backward()
        opt.step()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(net.eval(), (x[:4],), str(out), dynamic_shapes=({0: batch},), verbose=False)
    return data


def _onnx_accuracy(path, split) -> float:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = ((split.x.numpy().astype(np.float32) / 255.0 - 0.5) / 0.25).transpose(0, 2, 3, 1)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return float((out.argmax(1) == split.y.numpy()).mean())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_a_study_distils_from_an_onnx_nhwc_teacher_file(tmp_path):
    import optuna

    from kdsearch.record import study_teacher

    study_path = tmp_path / "byo.toml"
    study_path.write_text(FILE_STUDY.replace("FILE", "teacher.onnx"))  # next to the study file
    data = _onnx_teacher(study_path, tmp_path / "teacher.onnx")
    val_acc, test_acc = _onnx_accuracy(tmp_path / "teacher.onnx", data.val), \
        _onnx_accuracy(tmp_path / "teacher.onnx", data.test)
    assert val_acc > 0.5  # trained: a mislaid layout or normalisation would show

    storage, cache = f"sqlite:///{tmp_path}/s.db", str(tmp_path / "c")
    shown = kdsearch("teacher", str(study_path), "--cache-dir", cache, cwd="/")
    assert shown.returncode == 0, shown.stderr
    assert f"val_acc   {val_acc:.4f}" in shown.stdout and f"test_acc  {test_acc:.4f}" in shown.stdout
    assert "teacher   onnx teacher.onnx" in shown.stdout

    run = kdsearch("run-study", str(study_path), "--storage", storage, "--cache-dir", cache)
    assert run.returncode == 0, run.stderr
    assert "reusing cached teacher" in run.stderr  # the logits measured by `teacher` above
    study = optuna.load_study(study_name="byo", storage=storage)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 2
    teacher = study_teacher(study)
    assert teacher.kind == "file" and teacher.macs == 0
    assert teacher.val_accuracy == pytest.approx(val_acc, abs=1e-12)
    assert teacher.test_accuracy == pytest.approx(test_acc, abs=1e-12)
    assert teacher.params == 8 * 8 * 3 * 32 + 32 + 32 * 3 + 3  # the ONNX initializers
    assert "teacher: onnx teacher.onnx" in run.stdout

    out = tmp_path / "model"
    done = kdsearch("compress", "byo", "--storage", storage, "--cache-dir", cache, "--trial", "0",
                    "--epochs", "1", "--out", str(out), cwd="/")  # finds the file from anywhere
    assert done.returncode == 0, done.stderr
    assert "onnx teacher.onnx" in (out / "MODEL_CARD.md").read_text()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_a_teacher_file_with_the_wrong_classes_is_one_line_before_any_study(tmp_path):
    study_path = tmp_path / "byo.toml"
    study_path.write_text(FILE_STUDY.replace("FILE", str(tmp_path / "five.onnx")))
    _onnx_teacher(study_path, tmp_path / "five.onnx", classes=5)
    result = kdsearch("run-study", str(study_path), "--storage", f"sqlite:///{tmp_path}/s.db",
                      "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    *logged, line = result.stderr.strip().splitlines()
    assert line.startswith("kdsearch: error:") and all(ln.startswith("data ") for ln in logged)
    assert "five.onnx" in line and "expected 3, found 5" in line
    assert not (tmp_path / "s.db").exists()  # refused before the storage was touched


@pytest.mark.slow
def test_read_only_commands_never_write_to_a_storage(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    for args in (["best", "smoke"], ["export", "smoke", "--out", str(tmp_path / "o")]):
        line = _one_line_error(kdsearch(*args, "--storage", f"sqlite:///{empty}"))
        assert f"no kdsearch studies in sqlite:///{empty}" in line
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


@pytest.mark.slow
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


@pytest.mark.slow  # a CLI process; _foreign_logs_off is tested in process below
def test_a_corrupt_pt2_teacher_ends_in_our_line_alone(tmp_path):
    """torch logs a whole traceback at WARNING before it raises; none of it reaches the user."""
    import zipfile

    from tests.helpers import tiny_study_text

    with zipfile.ZipFile(tmp_path / "t.pt2", "w") as z:  # a zip, but no torch.export archive
        z.writestr("archive/version", "1")
        z.writestr("archive/models/model.json", "{bad")
    (tmp_path / "s.toml").write_text(tiny_study_text(teacher='file = "t.pt2"', teacher_train=None,
                                                     teacher_input="mean = [0.5]"))
    r = kdsearch("run-study", str(tmp_path / "s.toml"), "--storage", f"sqlite:///{tmp_path}/s.db",
                 "--cache-dir", str(tmp_path / "c"), "--device", "cpu")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("kdsearch: error: ") and "t.pt2" in lines[-1], r.stderr
    assert all(line.startswith(("kdsearch: ", "data ")) for line in lines), r.stderr


def test_library_logs_are_off_for_a_command_and_back_after(caplog):
    import logging

    from kdsearch.cli import _foreign_logs_off

    with caplog.at_level(logging.DEBUG), _foreign_logs_off():
        logging.getLogger("sqlalchemy.pool").error("Exception during reset or similar")
        logging.getLogger("torch.export").warning("Ran into the following error")
    assert caplog.records == []
    logging.getLogger("sqlalchemy.pool").error("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]
