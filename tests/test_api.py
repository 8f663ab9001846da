"""The Python API as a notebook uses it: run a tiny study, read its front and trials, compress a
trial, load and evaluate the model; and the same answers as the CLI's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import kdsearch
from kdsearch.errors import KdsearchError, UsageError
from tests.helpers import cli_env, tiny_study
from tests.helpers import kdsearch as run_cli

NOTEBOOK = """
import json, sys
import kdsearch

assert "torch" not in sys.modules and "optuna" not in sys.modules  # import kdsearch is cheap
study_file, storage, cache, out = sys.argv[1:5]

study = kdsearch.run_study(study_file, storage=storage, cache_dir=cache, device="cpu",
                           log=lambda m: None)
n_first = len(study.trials)
again = kdsearch.run_study(study_file, storage=storage, cache_dir=cache, n_trials=4,
                           device="cpu", log=lambda m: None)   # resumes: one more trial
front = kdsearch.front("api", storage=storage)
trials = kdsearch.trials(again)
best = front[0]
result = kdsearch.compress_trial("api", out, trial=best["number"], epochs=1, storage=storage,
                                 cache_dir=cache, device="cpu", log=lambda m: None)
model = kdsearch.load_model(out)
import torch
x = torch.zeros((2, 1, 8, 8), dtype=torch.uint8)
logits = model(x)
checked = kdsearch.evaluate(out, cache_dir=cache, device="cpu")
print(json.dumps({"n_first": n_first, "front": front, "trials": trials,
                  "compressed": result.trial, "files": result.files,
                  "logits": list(logits.shape), "training": model.training,
                  "eval": checked["test_accuracy"], "card": result.test_accuracy}))
"""


@pytest.mark.slow
def test_a_notebook_runs_reads_compresses_and_loads(tmp_path):
    study_file = tiny_study(tmp_path, epochs=1, name="api", n_trials=3)
    storage = f"sqlite:///{tmp_path / 'api.db'}"
    proc = subprocess.run([sys.executable, "-c", NOTEBOOK, str(study_file), storage,
                           str(tmp_path / "cache"), str(tmp_path / "student")],
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    assert got["n_first"] == 3 and len(got["trials"]) == 4
    assert [t["number"] for t in got["trials"]] == [0, 1, 2, 3]
    on_front = {t["number"] for t in got["trials"] if t["pareto"]}
    assert on_front == {r["number"] for r in got["front"]} and on_front
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in got["trials"])
    assert got["compressed"] == got["front"][0]["number"]
    assert {"model.pt", "architecture.json", "MODEL_CARD.md"} <= set(got["files"])
    assert got["logits"] == [2, 3] and got["training"] is False
    assert got["eval"] == pytest.approx(got["card"])

    # The API's front is what `kdsearch best --format json` prints, key for key.
    cli = run_cli("best", "api", "--storage", storage, "--format", "json")
    assert json.loads(cli.stdout) == got["front"]


def test_device_is_checked_once_in_one_line():
    with pytest.raises(UsageError, match=r"expected auto, cpu, cuda or cuda:N, found 'gpu'"):
        kdsearch.api.options(device="gpu")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(UsageError) as e:
        kdsearch.api.options(device=f"cuda:{count}")
    expected = (f"this machine has {count} CUDA device" if count
                else "no CUDA device is available")
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert kdsearch.api.options(device="cpu").device == "cpu"


@pytest.mark.slow
def test_cli_refuses_a_gpu_index_the_machine_lacks(tmp_path):
    study_file = tiny_study(tmp_path, epochs=1, n_trials=1)
    proc = run_cli("run-study", str(study_file), "--storage", f"sqlite:///{tmp_path / 's.db'}",
                   "--device", "cuda:7", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--device cuda:7" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s.db").exists()  # refused before the storage is opened


def test_compress_trial_wants_a_trial_or_limits(tmp_path):
    for kwargs, found in (({}, "neither"), ({"trial": 0, "max_params": 10}, "both")):
        with pytest.raises(KdsearchError, match=f"found {found}"):
            kdsearch.compress_trial("x", tmp_path / "out", storage="sqlite:///x.db", **kwargs)


@pytest.mark.slow
def test_reading_an_unknown_study_names_the_known_ones(tmp_path):
    study_file = tiny_study(tmp_path, epochs=1, name="known", n_trials=1)
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    kdsearch.run_study(str(study_file), storage=storage, cache_dir=tmp_path / "c", device="cpu",
                       log=lambda m: None)
    with pytest.raises(KdsearchError, match="no study 'nope'.*known"):
        kdsearch.front("nope", storage=storage)
    assert len(kdsearch.trials("known", storage=storage)) == 1


def test_workers_need_the_environment_they_run_in(tmp_path):
    with pytest.raises(UsageError, match="env=os.environ"):
        kdsearch.run_study(str(tiny_study(tmp_path)), workers=2)


def test_importing_kdsearch_first_keeps_openmp_passive_unless_told_otherwise():
    """A notebook imports kdsearch before torch: OpenMP then sleeps when idle, as in the CLI."""
    code = "import os, kdsearch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in cli_env().items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE"
