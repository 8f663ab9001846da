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
from tests.helpers import kdsearch


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


@pytest.mark.parametrize("args, found", [([], "neither"), (["--trial", "0", "--max-macs", "5"], "both")])
def test_compress_needs_a_trial_or_limits_not_both(tmp_path, args, found):
    proc = kdsearch("compress", "hand", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--out",
                    str(tmp_path / "o"), *args, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "kdsearch: error: compress: expected --trial N or limits (--max-params, --max-macs, "
        f"--max-latency-ms), found {found}"]
