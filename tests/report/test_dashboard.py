"""`kdsearch dashboard`: the server answers, the study and its trials render in a real browser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdsearch.options import Options
from kdsearch.report.dashboard import LEARNING_CURVES, is_loopback, publish_learning_curves
from kdsearch.spec import parse_study
from kdsearch.study.runner import run_study
from tests.helpers import ARTIFACTS, CNN_SEARCH_TABLES, REPO, study_text

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("dash")
    spec = parse_study(study_text(**CNN_SEARCH_TABLES), tmp / "dashtiny.toml")
    url = f"sqlite:///{tmp / 'study.db'}"
    run_study(spec, Options(storage=url, study_name="dashtiny", n_trials=4, timeout=None,
                               data_dir=None, cache_dir=tmp / "cache", device="cpu"),
              log=lambda m: None, after_trial=publish_learning_curves)
    return url


@pytest.fixture(scope="module")
def server(storage):
    """`kdsearch dashboard --port 0` in its own process; yields its address."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "kdsearch.cli", "dashboard", "--storage",
                             storage, "--port", "0"], stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 300  # a hang guard: the banner line is the event
    address = None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("open "):
            address = line.split()[1]
            break
    if address is None:
        proc.kill()
        pytest.fail("dashboard did not start:\n" + "".join(lines))
    yield address, "".join(lines)
    proc.terminate()
    proc.wait(timeout=120)


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


@pytest.mark.slow
def test_banner_lists_the_study_on_localhost(server):
    address, banner = server
    assert address.startswith("http://127.0.0.1:") and address.endswith("/dashboard/")
    assert "dashtiny" in banner and "4 complete" in banner
    assert "warning" not in banner


@pytest.mark.slow
def test_studies_api_carries_metric_names_and_note(server):
    address, _ = server
    base = address.removesuffix("dashboard/")
    with urllib.request.urlopen(base + "api/studies", timeout=120) as r:
        studies = json.load(r)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dashtiny"]
    study_id = studies[0]["study_id"]
    with urllib.request.urlopen(f"{base}api/studies/{study_id}", timeout=120) as r:
        detail = json.load(r)
    assert detail["objective_names"] == ["val_accuracy", "params"]
    assert len(detail["trials"]) == 4
    assert "**Teacher**" in detail["note"]["body"] and "[student]" in detail["note"]["body"]
    # Learning curves: each trial's validation accuracy per epoch, as the dashboard serves it
    # (in the trial's record alone: no copy as intermediate values).
    assert not detail["has_intermediate_values"]
    for t in detail["trials"]:
        curve = next(a["value"] for a in t["user_attrs"] if a["key"] == "val_curve")
        curve = json.loads(curve) if isinstance(curve, str) else curve
        assert len(curve) == 2 and all(0.0 <= v <= 1.0 for v in curve)


@pytest.mark.slow
def test_page_renders_study_and_trials_in_chromium(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}")
    address, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(address, timeout=120_000)
            page.get_by_text("dashtiny").first.wait_for(timeout=120_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard_studies.png"))
            page.get_by_text("dashtiny").first.click()
            # The study page: the Pareto front's axes carry the objective names.
            page.get_by_text("Pareto Front").first.wait_for(timeout=120_000)
            page.get_by_text("val_accuracy").first.wait_for(timeout=120_000)
            # kdsearch's own learning-curves graph (the dashboard draws none for two objectives)
            page.get_by_text("Learning curves: validation accuracy per epoch").first.wait_for(
                timeout=120_000)
            page.wait_for_timeout(1000)  # let the plots finish drawing
            page.screenshot(path=str(ARTIFACTS / "dashboard_study.png"), full_page=True)
            study_url = page.url.rstrip("/")
            # The note written by run-study: the teacher's numbers and the study file.
            page.goto(study_url + "/note", timeout=120_000)
            page.get_by_text("cache key").first.wait_for(timeout=120_000)
            note = page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "dashboard_note.png"), full_page=True)
            # The trial list: every trial, with the architecture and accuracies stored on it.
            page.goto(study_url + "/trials", timeout=120_000)
            page.get_by_text("arch_summary").first.wait_for(timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "dashboard_trials.png"), full_page=True)
            body = page.inner_text("body")
            # A trial's learning curve is drawn on the study page (kdsearch's graph, waited for
            # above; its data: test_learning_curves_graph_holds_every_trials_curve), not in the
            # trial's attribute list, which the dashboard shows only in part.
        finally:
            browser.close()
    assert "Teacher" in note and "val acc" in note and "[student]" in note
    assert "4 Trials" in body and body.count("Complete") >= 4
    assert "val_accuracy" in body and "test_accuracy" in body and "cnn " in body


@pytest.mark.slow
def test_learning_curves_graph_holds_every_trials_curve(storage):
    import optuna

    from kdsearch import optuna_internals

    study = optuna.load_study(study_name="dashtiny", storage=storage)
    system = optuna_internals.study_system_attrs(study)
    prefix = f"dashboard:plot_data:{LEARNING_CURVES}:"  # optuna-dashboard stores it in chunks
    chunks = sorted((int(k[len(prefix):]), v) for k, v in system.items() if k.startswith(prefix))
    assert [i for i, _ in chunks] == list(range(len(chunks)))
    figure = json.loads("".join(v for _, v in chunks))  # one graph, replaced after each trial
    curves = sorted((tuple(t["x"]), tuple(t["y"])) for t in figure["data"])
    expected = sorted((tuple(range(1, len(t.user_attrs["val_curve"]) + 1)),
                       tuple(t.user_attrs["val_curve"])) for t in study.trials)
    assert len(curves) == 4 and curves == expected


@pytest.mark.slow
def test_busy_port_is_one_line_error(storage):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-m", "kdsearch.cli", "dashboard", "--storage",
                               storage, "--port", str(port)], capture_output=True, text=True,
                              env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("kdsearch: error: cannot listen on")
    assert "Traceback" not in proc.stderr

