"""`kdsearch compress` and `kdsearch evaluate`: picking, the folder, and the round trip."""

from __future__ import annotations

import json
import re

import optuna
import pytest
import torch

from kdsearch.compress import load_model, pick_trial
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


def test_pick_by_budget_is_best_val_within_it(smoke):
    study, _, _ = smoke
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    budget = sorted(t.user_attrs["params"] for t in done)[1]
    picked = pick_trial(study, max_params=budget)
    fits = [t for t in done if t.user_attrs["params"] <= budget]
    assert picked.user_attrs["val_accuracy"] == max(t.user_attrs["val_accuracy"] for t in fits)
    assert picked.user_attrs["params"] <= budget


def test_pick_errors_are_kdsearch_errors(smoke):
    study, _, _ = smoke
    with pytest.raises(KdsearchError, match="no trial 99"):
        pick_trial(study, number=99)
    with pytest.raises(KdsearchError, match="no complete trial .* <= 1 params"):
        pick_trial(study, max_params=1)


def test_compress_then_evaluate_in_a_fresh_process(smoke):
    study, url, tmp = smoke
    out = tmp / "model"
    proc = kdsearch("compress", "smoke", "--storage", url, "--cache-dir", str(tmp / "cache"),
                    "--trial", str(pick_trial(study).number), "--epochs", "2", "--out", str(out),
                    "--device", "cpu", "--lr-schedule", "cosine")
    card = (out / "MODEL_CARD.md").read_text()
    card_acc = float(re.search(r"\| test accuracy \| ([0-9.]+) \|", card).group(1))
    assert f"test accuracy {card_acc:.4f}" in proc.stdout
    assert "kdsearch compress smoke --storage" in card and "--epochs 2" in card
    assert "fewer parameters" in card and "CPU latency" in card

    # The folder stands alone: weights load with weights_only, the architecture is JSON.
    meta = json.loads((out / "architecture.json").read_text())
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 4
    assert meta["lr_schedule"] == "cosine" and "(cosine learning rate)" in card
    state = torch.load(out / "model.pt", weights_only=True)
    model, _ = load_model(out)
    n_weights = sum(v.numel() for k, v in state.items() if k.endswith(("weight", "bias")))
    assert n_weights == meta["params"]

    # A fresh process, no study: the same accuracy as the card, from both files.
    ev = kdsearch("evaluate", str(out), "--device", "cpu")
    assert f"test accuracy {card_acc:.4f}" in ev.stdout
    assert f"model.torchscript.pt: test accuracy {card_acc:.4f}" in ev.stdout
    assert "warning" not in ev.stderr


def test_evaluate_a_non_model_folder_is_one_line(tmp_path):
    proc = kdsearch("evaluate", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("kdsearch: error:") and "Traceback" not in proc.stderr


def test_a_resnet_study_runs_compresses_and_evaluates_through_the_cli(tmp_path):
    """Batch norm and residual blocks survive every step: a resnet teacher and students
    (searched lr, onecycle, label smoothing), the model folder, TorchScript and ONNX."""
    path = tmp_path / "tiny_resnet.toml"
    path.write_text('description = "tiny resnet"\nseed = 0\n' + tiny_staged_study_text())
    common = ("--storage", f"sqlite:///{tmp_path / 's.db'}", "--cache-dir", str(tmp_path / "c"),
              "--device", "cpu")
    kdsearch("run-study", str(path), *common)
    out = tmp_path / "model"
    proc = kdsearch("compress", "tiny_resnet", *common, "--max-params", "100000", "--epochs", "1",
                    "--out", str(out))
    meta = json.loads((out / "architecture.json").read_text())
    assert meta["architecture"]["family"] == "resnet" and "not written" not in proc.stdout
    model, _ = load_model(out)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) >= 3
    card_acc = meta["test_accuracy"]
    ev = kdsearch("evaluate", str(out), "--device", "cpu")
    assert f"test accuracy {card_acc:.4f}" in ev.stdout
    assert f"model.torchscript.pt: test accuracy {card_acc:.4f}" in ev.stdout
    # The ONNX file gives the same logits as the model (batch norm folded in eval mode).
    import onnxruntime

    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (logits,) = session.run(None, {"images": x.numpy()})
    assert torch.allclose(torch.from_numpy(logits), model(x).detach(), atol=1e-4)
