"""`export` and `best` on hand-made studies: the files, one plotly.js, and one-line refusals."""

from __future__ import annotations

import json

import optuna
import pytest

from kdsearch import cli
from kdsearch.report import export as export_module
from kdsearch.report import images
from kdsearch.report.export import PLOTLY_JS, export
from kdsearch.report.images import ImageExportError
from tests.helpers import hand_study

TRIALS = [(0.8, 50, 3, 0.7), (0.75, 70, 5, 0.5)]


def _no_chrome(fig, path):
    raise ImageExportError(f"{path.name} not written (ChromeNotFoundError); static images "
                           "need a Chrome/Chromium: 'apt-get install -y chromium'")


def _error_line(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_export_without_chrome_still_writes_html_csv_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "write_image", _no_chrome)
    with pytest.raises(ImageExportError, match="apt-get install -y chromium"):
        export(hand_study(TRIALS), tmp_path, log=lambda m: None)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"trials.csv", "summary.md", "pareto.html", "hypervolume.html",
            "accuracy_vs_kernel.html", PLOTLY_JS} <= names
    assert not any(n.endswith((".png", ".svg")) for n in names)


def test_the_html_files_share_one_plotly_js(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "write_image", lambda fig, path: None)
    (tmp_path / PLOTLY_JS).write_text("stale")  # an earlier export's bundle is replaced
    written = export(hand_study(TRIALS), tmp_path, log=lambda m: None)
    htmls = [p for p in written if p.suffix == ".html"]
    assert len(htmls) == 3 and tmp_path / PLOTLY_JS in written
    bundle = (tmp_path / PLOTLY_JS).read_text()
    assert len(bundle) > 1_000_000 and "plotly" in bundle[:2000].lower()
    for html in htmls:
        text = html.read_text()
        assert f'src="{PLOTLY_JS}"' in text and len(text) < 200_000, html.name


def test_cli_export_error_is_one_line(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hand_study(TRIALS[:1], storage=url)
    monkeypatch.setattr(images, "write_image", lambda fig, path: (_ for _ in ()).throw(
        ImageExportError("pareto.png not written; static images need a Chrome/Chromium")))
    assert cli.main(["export", "hand", "--storage", url, "--out", str(tmp_path / "out")]) == 2
    assert _error_line(capsys) == ["kdsearch: error: HTML, CSV and summary written; pareto.png "
                                   "not written; static images need a Chrome/Chromium"]


def test_export_of_a_study_with_nothing_complete_is_one_line_and_writes_nothing(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    study = hand_study([], storage=url)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    out = tmp_path / "out"
    assert cli.main(["export", "hand", "--storage", url, "--out", str(out)]) == 2
    assert _error_line(capsys) == [
        "kdsearch: error: study 'hand' has no complete trial to export (1 trial: 1 pruned)"]
    assert not out.exists()


def test_export_out_naming_a_file_is_one_line(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hand_study(TRIALS, storage=url)
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert cli.main(["export", "hand", "--storage", url, "--out", str(target)]) == 2
    assert _error_line(capsys) == [
        f"kdsearch: error: --out {target}: expected a folder, found an existing file"]
    assert target.read_text() == "mine"


@pytest.mark.parametrize("command", ["best", "export"])
def test_a_study_kdsearch_did_not_create_is_one_line(tmp_path, capsys, command):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    theirs = optuna.create_study(storage=url, study_name="theirs", directions=["minimize"])
    theirs.add_trial(optuna.trial.create_trial(value=1.0))
    extra = ["--out", str(tmp_path / "out")] if command == "export" else []
    assert cli.main([command, "theirs", "--storage", url, *extra]) == 2
    (line,) = _error_line(capsys)
    assert line.startswith("kdsearch: error: study 'theirs' was not created by kdsearch")


def test_cli_best_json(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hand_study(TRIALS, storage=url)
    assert cli.main(["best", "hand", "--storage", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["number"], r["params"], r["val_accuracy"]) for r in rows] == [(0, 50, 0.8)]


def test_export_module_reads_the_study_once(tmp_path, monkeypatch):
    """Every file from one snapshot: one read of the trials, however many files."""
    monkeypatch.setattr(images, "write_image", lambda fig, path: None)
    calls = []
    real = export_module.read_rows
    monkeypatch.setattr(export_module, "read_rows", lambda s: calls.append(1) or real(s))
    study = hand_study(TRIALS)
    reads = []
    get_trials = study.get_trials
    monkeypatch.setattr(study, "get_trials", lambda *a, **k: reads.append(1) or get_trials(*a, **k))
    export(study, tmp_path, log=lambda m: None)
    assert calls == [1] and reads == [1]


@pytest.mark.slow
@pytest.mark.skipif(images.find_chrome() is None, reason="no Chrome/Chromium")
def test_export_writes_real_png_and_svg(tmp_path):
    study = hand_study([(0.8, 50, 3, 0.7), (0.85, 60, 5, 0.2), (0.7, 50, 3, 0.0)])
    written = export(study, tmp_path, log=lambda m: None)
    pngs = [p for p in written if p.suffix == ".png"]
    assert {p.stem for p in pngs} == {"pareto", "hypervolume", "accuracy_vs_kernel"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "pareto.svg").read_text().lstrip().startswith("<svg")
    summary = (tmp_path / "summary.md").read_text()
    assert "Hypervolume of the front" in summary and "![pareto](pareto.png)" in summary




class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *a, **k):
        self.calls.append((a, k))


def test_cli_export_without_a_browser_skips_images_in_one_line_and_never_starts_kaleido(
        tmp_path, monkeypatch, capsys):
    import kaleido
    import plotly.graph_objects as go

    url = f"sqlite:///{tmp_path / 'h.db'}"
    hand_study(TRIALS, storage=url)
    monkeypatch.setattr(images, "find_chrome", lambda: None)
    started, rendered = _Recorder(), _Recorder()
    monkeypatch.setattr(kaleido, "start_sync_server", started)
    monkeypatch.setattr(go.Figure, "write_image", rendered)  # the call that used to hang
    out = tmp_path / "out"
    assert cli.main(["export", "hand", "--storage", url, "--out", str(out)]) == 2
    lines = _error_line(capsys)
    assert len(lines) == 1 and lines[0].startswith(
        "kdsearch: error: HTML, CSV and summary written; PNG and SVG skipped: no Chrome/Chromium")
    assert "apt-get install -y chromium" in lines[0] and "kaleido.get_chrome_sync()" in lines[0]
    assert started.calls == [] and rendered.calls == []
    names = {p.name for p in out.iterdir()}
    assert {"trials.csv", "summary.md", "pareto.html", PLOTLY_JS} <= names
    assert not any(n.endswith((".png", ".svg")) for n in names)


def test_find_chrome_follows_browser_path(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "nothing-here"))
    assert images.find_chrome() is None
    monkeypatch.setenv("BROWSER_PATH", "/bin/true")
    assert images.find_chrome() == "/bin/true"


def test_a_browser_that_never_answers_fails_in_one_line_at_the_deadline(tmp_path, monkeypatch):
    import threading

    import plotly.graph_objects as go

    release = threading.Event()
    monkeypatch.setattr(images, "find_chrome", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(images, "IMAGE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(go.Figure, "write_image", lambda self, *a, **k: release.wait())
    try:
        with pytest.raises(ImageExportError, match=r"pareto.png not written: Chrome did not answer "
                                                   r"within 0.5 s") as e:
            images.write_image(go.Figure(), tmp_path / "pareto.png")
        assert "\n" not in str(e.value)
    finally:
        release.set()


def test_a_browser_that_dies_at_start_fails_in_one_line_without_waiting(tmp_path, monkeypatch, capfd):
    """A 'browser' that exits at once (/bin/false): kaleido's server thread dies and would leave
    write_image waiting forever; the deadline is set far off to show it is not what ends it."""
    import plotly.graph_objects as go

    monkeypatch.setenv("BROWSER_PATH", "/bin/false")
    monkeypatch.setattr(images, "IMAGE_TIMEOUT_S", 10_000)
    with images.one_browser():
        with pytest.raises(ImageExportError, match="pareto.png not written: Chrome/Chromium did "
                                                   "not start; PNG and SVG skipped"):
            images.write_image(go.Figure(), tmp_path / "pareto.png")
    assert "Traceback" not in capfd.readouterr().err
