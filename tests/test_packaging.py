"""What an installed kdsearch carries."""

import zipfile


def test_wheel_ships_the_study_files(tmp_path):
    """Study files must be found when kdsearch is installed non-editable."""
    import subprocess
    import sys

    from tests.helpers import REPO

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("kdsearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for study in ("smoke", "mnist_distill", "cifar_compress"):
        assert f"kdsearch/studies/{study}.toml" in names
