"""`kdsearch compress` and `kdsearch evaluate`: picking, the folder, and the round trip."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import optuna
import pytest
import torch

from kdsearch.compress import dominating_trial, load_model, pick_trial
from kdsearch.errors import KdsearchError
from kdsearch.options import Options
from kdsearch.spec import load_study
from kdsearch.study.runner import run_study
from tests.helpers import kdsearch, tiny_staged_study_text


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    url = f"sqlite:///{tmp / 's.db'}"
    study = run_study(load_study("smoke"), Options(
        storage=url, study_name="smoke", n_trials=3, timeout=None, data_dir=None,
        cache_dir=tmp / "cache", device="cpu"), log=lambda m: None)
    return study, url, tmp


@pytest.mark.slow
def test_pick_by_budget_is_best_val_within_it(smoke):
    study, _, _ = smoke
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    budget = sorted(t.user_attrs["params"] for t in done)[1]
    picked = pick_trial(study, max_params=budget)
    fits = [t for t in done if t.user_attrs["params"] <= budget]
    assert picked.user_attrs["val_accuracy"] == max(t.user_attrs["val_accuracy"] for t in fits)
    assert picked.user_attrs["params"] <= budget


@pytest.mark.slow
def test_pick_errors_are_kdsearch_errors(smoke):
    study, _, _ = smoke
    with pytest.raises(KdsearchError, match="no trial 99"):
        pick_trial(study, number=99)
    with pytest.raises(KdsearchError, match="no complete trial .* <= 1 params"):
        pick_trial(study, max_params=1)


def _complete(number: int, params: int, val_acc: float) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        values=[val_acc, params], user_attrs={"architecture": {"family": "mlp"}, "params": params,
                                              "val_accuracy": val_acc})


def test_dominating_trial_has_fewer_or_equal_params_and_higher_val_acc():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for params, acc in [(100, 0.80), (100, 0.90), (50, 0.85), (200, 0.95), (100, 0.90)]:
        study.add_trial(_complete(0, params, acc))
    t = study.get_trials()
    assert dominating_trial(study, t[0]).number == 1  # equal params, higher acc: the best of 1, 2
    assert dominating_trial(study, t[2]) is None  # fewest params
    assert dominating_trial(study, t[3]) is None  # most accurate
    assert dominating_trial(study, t[1]) is None  # a tie in both is no domination


def test_dominating_trial_follows_the_study_objectives():
    # A MACs and latency study: fewer params is no domination; every chosen cost must be no worse.
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(["val_accuracy", "macs", "latency_ms"])
    for params, macs, ms, acc in [(100, 1_000, 2.0, 0.80), (50, 2_000, 1.0, 0.90),
                                  (200, 1_000, 2.0, 0.85), (300, 900, 1.5, 0.95)]:
        study.add_trial(optuna.trial.create_trial(
            values=[acc, macs, ms],
            user_attrs={"architecture": {"family": "mlp"}, "params": params, "macs": macs,
                        "latency_ms": ms, "val_accuracy": acc}))
    t = study.get_trials()
    assert dominating_trial(study, t[1]) is None  # more MACs elsewhere are no help to it
    assert dominating_trial(study, t[0]).number == 3  # no worse on MACs and latency, more accurate
    assert dominating_trial(study, t[2]).number == 3  # trial 2's params do not count here
    assert dominating_trial(study, t[3]) is None


def test_the_final_model_trains_on_every_image_at_the_trials_lr(tmp_path):
    from kdsearch.compress.retrain import EPOCH_FACTOR, retrain_recipe
    from kdsearch.spec import parse_study

    text = tiny_staged_study_text(student_train=(
        'epochs = 4\nbatch_size = 64\noptimizer = "sgd"\nlr = { low = 0.02, high = 0.2, log = true }'
        '\nearly_fraction = 0.25\nearly_epochs = 2'))
    spec = parse_study(text, tmp_path / "s.toml")
    assert spec.student.train.early_epochs == 2  # the search ranks on cheap first epochs
    trial = optuna.trial.create_trial(
        params={"lr": 0.05}, distributions={"lr": optuna.distributions.FloatDistribution(
            0.02, 0.2, log=True)}, values=[0.5, 10])
    recipe = retrain_recipe(spec, trial)
    assert (recipe.early_fraction, recipe.early_epochs) == (1.0, 0)  # ... the final model not
    assert recipe.epochs == 4 * EPOCH_FACTOR and recipe.lr == 0.05
    assert retrain_recipe(spec, trial, epochs=40, lr_schedule="cosine").model_dump(
        include={"epochs", "lr_schedule"}) == {"epochs": 40, "lr_schedule": "cosine"}


@pytest.mark.slow
def test_compress_seed_gives_independent_retrainings_and_repeats_itself(smoke):
    from kdsearch.compress import compress

    study, url, tmp = smoke
    opts = Options(storage=url, study_name="smoke", n_trials=None, timeout=None, data_dir=None,
                   cache_dir=tmp / "cache", device="cpu")
    number = pick_trial(study).number
    weights = {}
    for name, seed in (("default", None), ("s1", 1), ("s1_again", 1)):
        compress(study, tmp / f"seed_{name}", number=number, epochs=1, seed=seed, opts=opts,
                 log=lambda m: None)
        meta = json.loads((tmp / f"seed_{name}" / "architecture.json").read_text())
        weights[name] = (meta["seed"], torch.load(tmp / f"seed_{name}" / "model.pt",
                                                  weights_only=True))
        assert f"seed {meta['seed']})" in (tmp / f"seed_{name}" / "MODEL_CARD.md").read_text()
    (s0, w0), (s1, w1), (s1b, w1b) = weights.values()
    assert s0 != s1 == s1b
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # another start: other weights
    assert all(torch.equal(w1[k], w1b[k]) for k in w1)  # the same seed: the same retraining


@pytest.mark.slow
def test_compress_then_evaluate_in_a_fresh_process(smoke):
    study, url, tmp = smoke
    out = tmp / "model"
    # A copy of the best trial that scored less: dominated, so compress warns and names who.
    best = pick_trial(study)
    study.add_trial(optuna.trial.create_trial(
        params=best.params, distributions=best.distributions, values=[best.values[0] - 0.01,
                                                                      best.values[1]],
        user_attrs={**best.user_attrs, "val_accuracy": best.values[0] - 0.01}))
    copy = study.trials[-1]
    winner = dominating_trial(study, copy)
    assert winner is not None
    proc = kdsearch("compress", "smoke", "--storage", url, "--cache-dir", str(tmp / "cache"),
                    "--trial", str(copy.number), "--epochs", "2", "--out", str(out),
                    "--device", "cpu", "--lr-schedule", "cosine")
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1
    assert f"trial {copy.number} is dominated by trial {winner.number} " in warned[0]
    card = (out / "MODEL_CARD.md").read_text()
    card_acc = float(re.search(r"\| test accuracy \| ([0-9.]+) \|", card).group(1))
    assert f"test accuracy {card_acc:.4f}" in proc.stdout
    assert "kdsearch compress smoke --storage" in card and "--epochs 2" in card
    assert "fewer parameters" in card and "CPU latency" in card
    assert re.search(r"\| PyTorch \(`model.pt`\) \| \d+ \| \d+ µs \|", card)
    assert re.search(r"\| ONNX Runtime \(`model.onnx`\) \| \d+ \| \d+ µs \|", card)
    assert (out / "model.pt2").is_file() and (out / "model.onnx").is_file()
    assert not (out / "model.torchscript.pt").exists()

    # The folder stands alone: weights load with weights_only, the architecture is JSON.
    meta = json.loads((out / "architecture.json").read_text())
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 4
    assert meta["lr_schedule"] == "cosine" and "(cosine learning rate, student seed " in card
    state = torch.load(out / "model.pt", weights_only=True)
    model, _ = load_model(out)
    n_weights = sum(v.numel() for k, v in state.items() if k.endswith(("weight", "bias")))
    assert n_weights == meta["params"]

    # A fresh process, no study: the same accuracy as the card, from both files.
    ev = kdsearch("evaluate", str(out), "--device", "cpu")
    assert f"test accuracy {card_acc:.4f}" in ev.stdout
    assert f"model.pt2: test accuracy {card_acc:.4f}" in ev.stdout
    assert f"model.onnx: test accuracy {card_acc:.4f}" in ev.stdout
    assert "warning" not in ev.stderr.lower()

    # Without kdsearch on the path: torch.export and ONNX Runtime in a fresh interpreter, at a
    # batch size the export never saw, give the logits of the weights in model.pt.
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, *meta["input_shape"]), dtype=torch.uint8)
    torch.save(x, tmp / "x.pt")
    script = (
        "import sys, torch, onnxruntime as ort\n"
        "x = torch.load(sys.argv[1], weights_only=True)\n"
        "pt2 = torch.export.load(sys.argv[2]).module()(x)\n"
        "s = ort.InferenceSession(sys.argv[3], providers=['CPUExecutionProvider'])\n"
        "onnx = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]\n"
        "torch.save({'pt2': pt2.detach(), 'onnx': torch.from_numpy(onnx)}, sys.argv[4])\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    fresh = subprocess.run([sys.executable, "-c", script, str(tmp / "x.pt"), str(out / "model.pt2"),
                            str(out / "model.onnx"), str(tmp / "logits.pt")], cwd=tmp, env=env,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    logits = torch.load(tmp / "logits.pt", weights_only=True)
    with torch.inference_mode():
        expected = model(x)
    assert logits["pt2"].shape == logits["onnx"].shape == (5, meta["num_classes"])
    torch.testing.assert_close(logits["pt2"], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits["onnx"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_evaluate_a_non_model_folder_is_one_line(tmp_path):
    proc = kdsearch("evaluate", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("kdsearch: error:") and "Traceback" not in proc.stderr


def test_pick_within_several_limits_on_a_hand_study():
    from tests.helpers import hand_study

    # (val acc, params): MACs are 10x the params
    study = hand_study([(0.5, 10, 3, 0.5), (0.8, 100, 3, 0.5), (0.7, 50, 3, 0.5),
                        (0.9, 400, 3, 0.5)])
    assert pick_trial(study, max_macs=1_000).number == 1  # 0.8 at 1,000 MACs
    assert pick_trial(study, max_macs=999).number == 2  # 0.7 at 500
    assert pick_trial(study, max_params=100, max_macs=600).number == 2  # both limits hold
    with pytest.raises(KdsearchError, match=r"has <= 99 MACs \(the least of each: 100 MACs\)"):
        pick_trial(study, max_macs=99)
    # no trial of this study was timed: a latency limit cannot be judged, and says so
    with pytest.raises(KdsearchError, match="--max-latency-ms: study 'hand' measured no latency"):
        pick_trial(study, max_latency_ms=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("args, found", [([], "neither"), (["--trial", "0", "--max-macs", "5"], "both")])
def test_compress_needs_a_trial_or_limits_not_both(tmp_path, args, found):
    proc = kdsearch("compress", "hand", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--out",
                    str(tmp_path / "o"), *args, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "kdsearch: error: compress: expected --trial N or limits (--max-params, --max-macs, "
        f"--max-latency-ms), found {found}"]


@pytest.mark.slow
def test_a_resnet_study_runs_compresses_and_evaluates_through_the_cli(tmp_path):
    """Batch norm and residual blocks survive every step: a resnet teacher and students
    (searched lr, onecycle, label smoothing), the model folder and every export format."""
    path = tmp_path / "tiny_resnet.toml"
    path.write_text(tiny_staged_study_text(description="tiny resnet"))
    common = ("--storage", f"sqlite:///{tmp_path / 's.db'}", "--cache-dir", str(tmp_path / "c"),
              "--device", "cpu")
    kdsearch("run-study", str(path), *common)
    out = tmp_path / "model"
    proc = kdsearch("compress", "tiny_resnet", *common, "--max-params", "100000", "--epochs", "1",
                    "--out", str(out))
    meta = json.loads((out / "architecture.json").read_text())
    assert meta["architecture"]["family"] == "resnet" and "not written" not in proc.stdout
    assert (out / "model.pt2").is_file() and (out / "model.onnx").is_file()
    model, _ = load_model(out)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) >= 3
    card_acc = meta["test_accuracy"]
    ev = kdsearch("evaluate", str(out), "--device", "cpu")
    for name in ("", "model.pt2: ", "model.onnx: "):
        assert f"{name}test accuracy {card_acc:.4f}" in ev.stdout, ev.stdout


# --- honest copies: the folder is written whole, and evaluate holds every copy to the card ---


@pytest.fixture(scope="module")
def folder(smoke):
    from kdsearch.compress import compress

    study, _, tmp = smoke
    out = tmp / "base"
    compress(study, out, number=pick_trial(study).number, epochs=1,
             opts=Options(cache_dir=tmp / "cache", device="cpu"), log=lambda m: None)
    return out, tmp


def _copy(folder, tmp_path):
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(folder[0], dst)
    return dst


@pytest.mark.slow
def test_the_folder_is_written_whole_and_model_pt2_carries_no_data(folder):
    import zipfile

    out, tmp = folder
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp left
    meta = json.loads((out / "architecture.json").read_text())
    assert meta["files"] == ["model.pt", "architecture.json", "model.pt2", "model.onnx"]
    with zipfile.ZipFile(out / "model.pt2") as z:
        members = {i.filename.split("/", 1)[1]: i.file_size for i in z.infolist()}
    weights = torch.load(out / "model.pt", weights_only=True)
    raw = sum(v for k, v in members.items() if k.startswith("data/weights/weight_"))
    # The weights stored raw, once each; no sample inputs (they were a view of the test set).
    assert raw == sum(t.numel() * t.element_size() for t in weights.values())
    assert members["data/sample_inputs/model.pt"] == 0
    assert not [k for k in members if k.startswith("data/") and not re.fullmatch(
        r"data/(weights/weight_\d+|constants/tensor_\d+|(weights|constants)/model_\w+_config\.json"
        r"|sample_inputs/model\.pt)", k)]
    assert (out / "model.pt2").stat().st_size < (out / "model.onnx").stat().st_size + 64 * 1024


@pytest.mark.slow
def test_evaluate_refuses_a_swapped_model_pt2_whose_payload_never_runs(folder, tmp_path):
    from tests.payloads import craft

    model = _copy(folder, tmp_path)
    marker = tmp_path / "marker"
    crafted = craft("sample_inputs", model / "model.pt2", tmp_path, marker, shape=(1, 8, 8))
    crafted.replace(model / "model.pt2")
    proc = kdsearch("evaluate", str(model), "--device", "cpu", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"kdsearch: error: {model / 'model.pt2'}: refused: ")
    assert not marker.exists()


def _evaluate_error(model, match):
    from kdsearch.compress.evaluate import FolderError, evaluate

    with pytest.raises(FolderError, match=match) as e:
        evaluate(model, Options(device="cpu"))
    assert "\n" not in str(e.value)
    return str(e.value)


def _onnx(model_file, net, shape):
    from kdsearch.compress.folder import export_onnx

    assert export_onnx(net, shape, model_file) is None


class _Foreign(torch.nn.Module):
    """Another model: colour 8x8 images in; or, given `cls`, one that always picks that class."""

    def __init__(self, inputs: int = 192, cls: int | None = None):
        super().__init__()
        self.fc = torch.nn.Linear(inputs, 4)
        if cls is not None:
            with torch.no_grad():
                self.fc.weight.zero_()
                self.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), 4).float())

    def forward(self, x):
        return self.fc(x.float().flatten(1))


@pytest.mark.slow
def test_evaluate_names_a_missing_a_foreign_and_a_disagreeing_copy(folder, tmp_path):
    from kdsearch.spec import DataSpec
    from kdsearch.training.data import load_data

    model = _copy(folder, tmp_path)
    meta = json.loads((model / "architecture.json").read_text())
    (model / "model.pt2").unlink()
    _evaluate_error(model, "model.pt2: listed in MODEL_CARD.md but missing")

    model = _copy(folder, tmp_path / "b")
    _onnx(model / "model.onnx", _Foreign(), (3, 8, 8))
    _evaluate_error(model, r"model.onnx: takes tensor\(uint8\) \[.*\], this folder's model takes uint8 "
                           r"\[N, 1, 8, 8\]: not this folder's model")

    # Same shapes, another model: one class always, the class whose share is furthest from the card.
    model = _copy(folder, tmp_path / "c")
    test_y = load_data(DataSpec.model_validate(meta["data"])).test.y
    shares = torch.bincount(test_y, minlength=4).float() / len(test_y)
    cls = int((shares - meta["test_accuracy"]).abs().argmax())
    assert abs(shares[cls] - meta["test_accuracy"]) > 0.02
    _onnx(model / "model.onnx", _Foreign(64, cls), (1, 8, 8))
    msg = _evaluate_error(model, "model.onnx: test accuracy .*, the card says .*: off by more than 0.5 points")
    assert f"test accuracy {float(shares[cls]):.4f}" in msg

    model = _copy(folder, tmp_path / "d")
    (model / "model.torchscript.pt").write_bytes(b"left over")
    _evaluate_error(model, "model.torchscript.pt: not listed in MODEL_CARD.md: a file of another model")

    model = _copy(folder, tmp_path / "e")
    card = (model / "MODEL_CARD.md").read_text()
    (model / "MODEL_CARD.md").write_text(re.sub(r"\| test accuracy \| [0-9.]+ \|", "| test accuracy | 0.9999 |", card))
    _evaluate_error(model, "MODEL_CARD.md: states test accuracy 0.9999, architecture.json")


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_evaluate_refuses_a_fifo_or_a_device_for_a_copy(folder, tmp_path):
    import os

    model = _copy(folder, tmp_path)
    (model / "model.pt2").unlink()
    os.mkfifo(model / "model.pt2")
    _evaluate_error(model, "model.pt2: a FIFO, not a regular file")
    (model / "model.pt2").unlink()
    (model / "model.pt2").symlink_to("/dev/zero")
    _evaluate_error(model, "model.pt2: a character device, not a regular file")
    (model / "model.pt").unlink()
    os.mkfifo(model / "model.pt")
    from kdsearch.compress.evaluate import evaluate
    from kdsearch.errors import KdsearchError

    with pytest.raises(KdsearchError, match="model.pt: a FIFO, not a regular file"):  # the weights too
        evaluate(model, Options(device="cpu"))


@pytest.mark.slow
def test_compress_out_onto_a_file_or_a_foreign_folder_is_refused_before_training(smoke, tmp_path):
    _, url, tmp = smoke
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    for out, said in ((taken, "an existing file, not a folder"), (other, "a folder with other files")):
        proc = kdsearch("compress", "smoke", "--storage", url, "--cache-dir", str(tmp / "cache"),
                        "--trial", "0", "--epochs", "1", "--out", str(out), "--device", "cpu", check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"kdsearch: error: --out {out}: {said}")
    assert taken.read_text() == "mine" and [p.name for p in other.iterdir()] == ["cat.jpg"]


@pytest.mark.slow
def test_a_failed_write_leaves_the_old_folder_and_no_temporary_one(folder, tmp_path):
    from kdsearch.compress.folder import write_folder

    model = _copy(folder, tmp_path)
    before = {p.name: p.read_bytes() for p in model.iterdir()}

    def half(tmp):
        (tmp / "model.pt").write_bytes(b"new")
        raise KeyboardInterrupt  # killed half-way

    with pytest.raises(KeyboardInterrupt):
        write_folder(model, half)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    write_folder(model, lambda tmp: (tmp / "architecture.json").write_text("{}"))  # replaced whole
    assert sorted(p.name for p in model.iterdir()) == ["architecture.json"]


# --- a trained teacher exported as files, and a study distilling from them -----------------------


@pytest.mark.slow
def test_teacher_export_gives_files_a_study_distills_from_at_the_same_accuracy(tmp_path):
    from tests.helpers import kdsearch as run
    from tests.helpers import study_text

    data = ('dataset = "synthetic"\nval_size = 100\nsynthetic = { n_train = 400, n_test = 200, '
            "channels = 3, height = 8, width = 8, num_classes = 3, noise = 1.0 }")
    trained = tmp_path / "trained.toml"
    trained.write_text(study_text(data=data, teacher='family = "resnet"\nblocks = [1, 1]\n'
                                  "base_width = 4", teacher_train="epochs = 3\nbatch_size = 64\n"
                                  'optimizer = "sgd"\nlr = 0.05'))
    cache = str(tmp_path / "cache")
    # --export as a newcomer types it: relative to the working directory
    out = run("teacher", str(trained), "--storage", f"sqlite:///{tmp_path}/a.db", "--cache-dir",
              cache, "--export", "teachers/", "--name", "tiny_resnet", cwd=tmp_path)
    files = [tmp_path / "teachers" / f"tiny_resnet{s}" for s in (".pt2", ".onnx", ".md")]
    assert all(f.is_file() for f in files), out.stdout
    test_acc = float(next(line.split()[1] for line in out.stdout.splitlines()
                          if line.startswith("test_acc")))
    card = files[2].read_text()
    assert f"**{test_acc:.4f}**" in card and "scale = 1.0" in card
    # Again onto the same files: refused, nothing overwritten.
    again = run("teacher", str(trained), "--storage", f"sqlite:///{tmp_path}/a.db", "--cache-dir",
                cache, "--export", str(tmp_path / "teachers"), "--name", "tiny_resnet", check=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    for suffix in (".pt2", ".onnx"):
        user = tmp_path / f"user{suffix}.toml"
        user.write_text(study_text(data=data, teacher=f'file = "teachers/tiny_resnet{suffix}"',
                                   teacher_train=None, teacher_input="scale = 1.0"))
        loaded = run("teacher", str(user), "--storage", f"sqlite:///{tmp_path}/b.db",
                     "--cache-dir", cache)
        got = float(next(line.split()[1] for line in loaded.stdout.splitlines()
                         if line.startswith("test_acc")))
        assert got == pytest.approx(test_acc, abs=1 / 200 + 1e-9), suffix


def _compress_quietly(smoke, out, seed, logs=None):
    from kdsearch.compress import compress

    study, url, tmp = smoke
    opts = Options(storage=url, study_name="smoke", n_trials=None, timeout=None, data_dir=None,
                   cache_dir=tmp / "cache", device="cpu")
    return compress(study, out, number=pick_trial(study).number, epochs=3, seed=seed, opts=opts,
                    log=(logs.append if logs is not None else lambda m: None))


def _stop_after_epoch(monkeypatch, smoke, out, seed, epoch):
    """A compress stopped (as by Ctrl-C) in the epoch after `epoch`, before its checkpoint."""
    from kdsearch.compress import retrain

    real, logs = retrain.save_state, []

    def stop_in_the_next_epoch(path, state):
        if state["epoch"] == epoch + 1:
            raise KeyboardInterrupt
        real(path, state)

    monkeypatch.setattr(retrain, "save_state", stop_in_the_next_epoch)
    with pytest.raises(KeyboardInterrupt):
        _compress_quietly(smoke, out, seed, logs)
    monkeypatch.undo()
    return logs


def _same_weights(a, b):
    wa, wb = (torch.load(f / "model.pt", weights_only=True) for f in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def whole(smoke):
    """An uninterrupted 3-epoch compress of the smoke study's best trial, seed 5."""
    out = smoke[2] / "resume_whole"
    _compress_quietly(smoke, out, 5)
    return out


@pytest.mark.slow
def test_a_stopped_compress_resumes_from_its_last_epoch_and_ends_bit_identical(
        smoke, whole, monkeypatch):
    from kdsearch.compress.retrain import partial_path

    out = smoke[2] / "resume_stopped"
    logs = _stop_after_epoch(monkeypatch, smoke, out, 5, epoch=2)
    partial = partial_path(out)
    assert partial.parent == out.parent.resolve() and not out.exists()
    assert torch.load(partial, weights_only=True)["epoch"] == 2
    assert any(f"compress stopped: epochs 1-2 of 3 are checkpointed in {partial}; the same "
               "command resumes from there" in m for m in logs), logs
    assert not list(partial.parent.glob("*.tmp*"))  # written through a temporary file

    logs = []
    r = _compress_quietly(smoke, out, 5, logs)
    assert any(m.startswith("resuming from epoch 2 of 3") for m in logs), logs
    assert _same_weights(whole, out)
    card = json.loads((whole / "architecture.json").read_text())
    assert r.test_accuracy == card["test_accuracy"] and r.epochs == 3
    assert not partial.exists()  # the folder holds the model now


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["other-seed", "garbage", "other-weights"])
def test_a_checkpoint_of_another_run_warns_once_and_retrains_from_the_start(
        smoke, whole, monkeypatch, damage):
    from kdsearch.compress.retrain import partial_path

    out = smoke[2] / f"resume_{damage}"
    partial = partial_path(out)
    # a stop of the same command with another seed, or its checkpoint damaged afterwards
    _stop_after_epoch(monkeypatch, smoke, out, 6 if damage == "other-seed" else 5, epoch=1)
    if damage == "garbage":
        partial.write_bytes(b"not a checkpoint\n" * 10)
    elif damage == "other-weights":  # found to misfit only as the weights go in
        state = torch.load(partial, weights_only=True)
        state["model"] = {k: v[:1] for k, v in state["model"].items()}
        torch.save(state, partial)
    logs = []
    _compress_quietly(smoke, out, 5, logs)
    warnings = [m for m in logs if m.startswith("warning: compress checkpoint")]
    assert len(warnings) == 1 and "retraining from the start" in warnings[0], logs
    assert not any(m.startswith("resuming") for m in logs) or damage == "other-weights"
    assert _same_weights(whole, out)  # exactly the run never stopped
    assert not partial.exists()
