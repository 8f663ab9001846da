"""Export and its figures, on studies built by hand (no training): data steps and drawings."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from kdsearch import cli
from kdsearch.report import reports
from kdsearch.report.plots import accuracy_figure, hypervolume_figure
from kdsearch.report.reports import (
    DISTILLED,
    PLAIN,
    ImageExportError,
    accuracy_axes,
    accuracy_by,
    export,
    hypervolume_history,
)
from tests.helpers import teacher_summary

TEACHER = teacher_summary(description="cnn teacher", val_accuracy=0.97, test_accuracy=0.96)


def _study(trials: list[tuple[float, int, int, float]], family: str = "cnn",
           storage: str | None = None) -> optuna.Study:
    """Trials of (val acc, params, kernel, alpha), each a one-conv-per-layer CNN of 2 layers."""
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="hand",
                                storage=storage)
    study.set_metric_names(["val_accuracy", "params"])
    study.set_user_attr("teacher", TEACHER)
    study.set_user_attr("study_spec", {"student": {"space": {"family": family}},
                                       "search": {"sampler": "tpe"}})
    for acc, params, kernel, alpha in trials:
        arch = {"family": "cnn", "convs": [{"channels": 4, "kernel": kernel}] * 2, "dense": []}
        study.add_trial(create_trial(
            values=[acc, params],
            params={"kernel": kernel, "alpha": alpha, "temperature": 2.0},
            distributions={"kernel": CategoricalDistribution([3, 5]),
                           "alpha": FloatDistribution(0.0, 1.0),
                           "temperature": FloatDistribution(1.0, 20.0)},
            user_attrs={"val_accuracy": acc, "test_accuracy": acc - 0.01, "params": params,
                        "macs": params * 10, "arch_summary": f"cnn k{kernel}",
                        "architecture": arch, "n_layers": 2, "epochs": 1}))
    return study


def test_hypervolume_history_by_hand():
    # Reference: the teacher's 1000 params, chance 0.5. (0.9, 10): 2 decades x 0.4 = 0.8;
    # (0.7, 100) is dominated; (0.95, 100) adds 1 decade x 0.05: 0.85.
    study = _study([(0.9, 10, 3, 0.5), (0.7, 100, 3, 0.5), (0.95, 100, 5, 0.5)])
    h = hypervolume_history(study)
    assert h.numbers == [0, 1, 2]
    assert h.values == pytest.approx([0.8, 0.8, 0.85])
    assert (h.ref_params, h.ref_acc) == (1000.0, 0.5)
    assert "1,000 params" in h.reference and "0.500" in h.reference
    fig = hypervolume_figure(h)
    assert list(fig.data[0].y) == pytest.approx([0.8, 0.8, 0.85])


def test_hypervolume_history_equals_the_hypervolume_of_all_trials_so_far():
    import random

    from kdsearch.report.reports import hypervolume

    rng = random.Random(1)
    trials = [(rng.randint(50, 100) / 100, rng.choice([10, 30, 100, 300, 900]), 3, 0.5)
              for _ in range(60)]
    h = hypervolume_history(_study(trials))
    points = [(acc, params) for acc, params, _, _ in trials]
    brute = [hypervolume(points[: i + 1], h.ref_params, h.ref_acc) for i in range(len(points))]
    assert h.values == pytest.approx(brute)


def test_hypervolume_never_falls():
    study = _study([(0.6 + 0.3 * math.sin(i), 10 + 37 * i, 3, 0.5) for i in range(12)])
    values = hypervolume_history(study).values
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_accuracy_by_kernel_splits_plain_and_distilled_and_takes_the_best():
    study = _study([(0.8, 50, 3, 0.7), (0.85, 60, 3, 0.2), (0.75, 70, 5, 0.5),
                    (0.7, 50, 3, 0.0), (0.72, 70, 5, 0.0)])
    assert accuracy_axes(study) == ["layers", "kernel"]
    data = accuracy_by(study, "kernel")
    assert data.statistic == "best" and list(data.groups) == [DISTILLED, PLAIN]
    assert [(p.x, p.best) for p in data.groups[DISTILLED]] == [(3, 0.85), (5, 0.75)]
    assert [(p.x, p.best) for p in data.groups[PLAIN]] == [(3, 0.7), (5, 0.72)]
    fig = accuracy_figure(data)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [list(t.y) for t in lines] == [[0.85, 0.75], [0.7, 0.72]]
    assert fig.layout.xaxis.title.text == "kernel (filter) size"


def test_mlp_study_has_no_kernel_plot():
    assert accuracy_axes(_study([(0.8, 50, 3, 0.5)], family="mlp")) == ["layers"]


def test_export_without_chrome_still_writes_html_csv_and_says_how(tmp_path, monkeypatch):
    study = _study([(0.8, 50, 3, 0.7), (0.75, 70, 5, 0.5)])

    def no_chrome(fig, path):
        raise ImageExportError(f"{path.name} not written (ChromeNotFoundError); static images "
                               "need a Chrome/Chromium: 'apt-get install -y chromium'")

    monkeypatch.setattr(reports, "write_image", no_chrome)
    with pytest.raises(ImageExportError, match="apt-get install -y chromium"):
        export(study, tmp_path, log=lambda m: None)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"trials.csv", "summary.md", "pareto.html", "hypervolume.html",
            "accuracy_vs_kernel.html"} <= names
    assert not any(n.endswith((".png", ".svg")) for n in names)


def test_cli_export_error_is_one_line(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _study([(0.8, 50, 3, 0.7)], storage=url)
    monkeypatch.setattr(reports, "write_image", lambda fig, path: (_ for _ in ()).throw(
        ImageExportError("pareto.png not written; static images need a Chrome/Chromium")))
    assert cli.main(["export", "hand", "--storage", url, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kdsearch: error: HTML, CSV and summary written; pareto.png not written; "
                   "static images need a Chrome/Chromium"]


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="no system Chromium")
def test_export_writes_real_png_and_svg(tmp_path):
    study = _study([(0.8, 50, 3, 0.7), (0.85, 60, 5, 0.2), (0.7, 50, 3, 0.0)])
    written = export(study, tmp_path, log=lambda m: None)
    pngs = [p for p in written if p.suffix == ".png"]
    assert {p.stem for p in pngs} == {"pareto", "hypervolume", "accuracy_vs_kernel"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "pareto.svg").read_text().lstrip().startswith("<svg")
    summary = (tmp_path / "summary.md").read_text()
    assert "Hypervolume of the front" in summary and "![pareto](pareto.png)" in summary
