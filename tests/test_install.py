"""A torch and a torchvision that do not belong together are named in one line, with the fix."""

import pytest

from kdsearch.install import expected_torch, mismatch
from tests.helpers import kdsearch, tiny_study


@pytest.mark.parametrize("torch_v, vision_v, requires, fits", [
    ("2.14.1", "0.29.1", ["torch (>=2.14.0)"], True),
    ("2.5.0+cpu", "0.20.0", ["torch==2.5.0"], True),
    ("2.5.1+cu124", "0.20.1+cu124", ["numpy", "torch==2.5.1"], True),
    ("2.14.1+cpu", "0.20.0+cu124", ["torch==2.5.0"], False),  # the pair pip made in the issue
    ("2.14.1", "0.20.1", [], False),  # no pin: torchvision 0.N is torch 2.(N - 15)
    ("2.4.0", "0.29.0", ["torch (>=2.14.0)"], False),
])
def test_the_pair_is_judged_by_the_release_torchvision_was_built_for(torch_v, vision_v, requires,
                                                                     fits):
    line = mismatch(torch_v, vision_v, requires)
    assert (line is None) == fits
    if not fits:
        assert torch_v in line and vision_v in line and "pip install" in line
        assert "\n" not in line


def test_a_pin_wins_over_the_numbering():
    assert expected_torch("0.20.0", ["torch==2.5.0"]) == "2.5.0"
    assert expected_torch("0.20.0", []) == "2.5"
    assert expected_torch("0.14.0", []) is None  # before torch 2: no rule, no guess


@pytest.mark.slow
def test_a_torchvision_that_does_not_load_is_one_line_before_any_data(tmp_path):
    """A stand-in torchvision, first on the path, that fails as a mismatched build does."""
    site = tmp_path / "site"
    (site / "torchvision").mkdir(parents=True)
    (site / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    info = site / "torchvision-0.20.0+cu124.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\n"
                                   "Version: 0.20.0+cu124\nRequires-Dist: torch==2.5.0\n")
    study = tiny_study(tmp_path, epochs=1, n_trials=1)
    import os

    from tests.helpers import REPO

    env = {"PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    proc = kdsearch("run-study", str(study), "--storage", f"sqlite:///{tmp_path / 's.db'}",
                    check=False, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "torchvision 0.20.0+cu124 is built for torch 2.5.0" in proc.stderr
    assert "--force-reinstall" in proc.stderr
    assert not (tmp_path / "s.db").exists()  # refused before the storage is opened

    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\n"
                                   "Version: 0.29.1\nRequires-Dist: torch (>=2.14.0)\n")
    proc = kdsearch("teacher", str(study), check=False, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "torchvision::nms does not exist" in proc.stderr and "does not load" in proc.stderr
