"""Whether the installed torch and torchvision belong together.

Where PyTorch's CPU index cannot be reached, pip can pair a CPU torch with a CUDA torchvision
built for another torch; `import torchvision` then dies in a 40-line traceback ending in
"operator torchvision::nms does not exist". kdsearch names the pair and the fix in one line
instead, before any data command imports torchvision.
"""

from __future__ import annotations

import re
from importlib import metadata

from kdsearch.errors import KdsearchError

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class InstallError(KdsearchError):
    """torch and torchvision do not fit together."""


def _release(version: str) -> tuple[int, ...]:
    """2.14.1+cpu -> (2, 14, 1)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def expected_torch(torchvision_version: str, requires: list[str]) -> str | None:
    """The torch release a torchvision was built for: its exact pin (`torch==2.5.0`), else
    torchvision's numbering since torch 2.0 (torchvision 0.N goes with torch 2.(N - 15))."""
    for req in requires:
        pin = re.fullmatch(r"torch\s*\(?\s*==\s*([0-9][^,;\s)]*)\)?\s*(;.*)?", req.strip())
        if pin:
            return pin.group(1).split("+")[0]
    release = _release(torchvision_version)
    if len(release) >= 2 and release[0] == 0 and release[1] >= 15:
        return f"2.{release[1] - 15}"
    return None


def mismatch(torch_version: str, torchvision_version: str, requires: list[str]) -> str | None:
    """One line naming both versions and the fix, or None when they fit."""
    wanted = expected_torch(torchvision_version, requires)
    if wanted is None:
        return None
    have = _release(torch_version)
    if have[: len(_release(wanted))] == _release(wanted):
        return None
    return (f"torchvision {torchvision_version} is built for torch {wanted}, but torch "
            f"{torch_version} is installed: {fix(torch_version)}")


def fix(torch_version: str) -> str:
    index = CPU_INDEX if "+cu" not in torch_version else "the index your torch came from"
    return (f"reinstall them as a pair, e.g. python3 -m pip install --force-reinstall "
            f"torch=={torch_version.split('+')[0]} torchvision --index-url {index}")


def check_torchvision() -> None:
    """Refuse a torch / torchvision pair that cannot work, in one line. The metadata is read
    first (no import); the import itself is then tried, so a pair whose versions fit but whose
    builds do not (CPU torch, CUDA torchvision) is named too."""
    try:
        torch_version = metadata.version("torch")
        torchvision_version = metadata.version("torchvision")
        requires = metadata.requires("torchvision") or []
    except metadata.PackageNotFoundError as e:
        raise InstallError(f"{e.name} is not installed: python3 -m pip install torch torchvision "
                           f"(CPU only: add --index-url {CPU_INDEX})") from None
    problem = mismatch(torch_version, torchvision_version, requires)
    if problem:
        raise InstallError(problem)
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # RuntimeError: operator torchvision::nms does not exist, ...
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise InstallError(f"torchvision {torchvision_version} does not load with torch "
                           f"{torch_version} ({first}): {fix(torch_version)}") from None
