"""Finding a study file and loading it: `load_study("cifar_compress")` -> a frozen `StudySpec`."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from kdsearch.errors import StudyFileError, one_line
from kdsearch.spec.checks import check_input, refusal
from kdsearch.spec.limits import NAMED_INPUTS
from kdsearch.spec.reading import one_line_error, reshape
from kdsearch.spec.tables import StudySpec


def shipped_studies_dir() -> Path:
    """Studies shipped with kdsearch: `studies/` in a checkout, `kdsearch/studies` in a wheel."""
    packaged = Path(str(resources.files("kdsearch"))) / "studies"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "studies"  # kdsearch/spec/loading.py


def list_studies() -> list[str]:
    return sorted(p.stem for p in shipped_studies_dir().glob("*.toml"))


def _is_file(path: Path) -> bool:
    """`path.is_file()`, false for names no file can have (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def find_study_file(study: str | os.PathLike) -> Path:
    """A path to a .toml, a name in ./studies, or a name among the shipped studies."""
    path = Path(study)
    # a Path object is always a path, never a study's name
    if isinstance(study, os.PathLike) or study.endswith(".toml") or os.sep in study:
        if not _is_file(path):
            raise StudyFileError(f"{study}: no such study file")
        return path
    for folder in (Path("studies"), shipped_studies_dir()):
        candidate = folder / f"{study}.toml"
        if _is_file(candidate):
            return candidate
    known = ", ".join(list_studies()) or "none"
    raise StudyFileError(f"unknown study '{study}': not a .toml path, and no studies/{study}.toml "
                         f"(shipped studies: {known})")


def parse_study(text: str, path: Path) -> StudySpec:
    """Validate a study file's text; raises `StudyFileError` with one line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StudyFileError(one_line(f"{path}: not valid TOML: {e}")) from None
    raw = reshape(dict(raw), text, path)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as e:
        raise StudyFileError(one_line(one_line_error(path, e))) from None
    spec._path = str(path)
    if spec.data.dataset in NAMED_INPUTS:
        check_input(spec, *NAMED_INPUTS[spec.data.dataset])
    elif spec.data.dataset == "synthetic":
        s = spec.data.synthetic
        if spec.data.val_size >= s.n_train:  # else refused only once the data is drawn
            raise refusal(spec, "data.val_size", f"fewer validation images than "
                          f"synthetic.n_train ({s.n_train:,})", f"{spec.data.val_size:,}")
        check_input(spec, (s.channels, s.height, s.width), s.num_classes)
    return spec


def load_study(study: str | os.PathLike) -> StudySpec:
    """The study named or pointed at, checked; raises `StudyFileError` with one line."""
    path = find_study_file(study)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StudyFileError(f"{path}: cannot read: {e}") from None
    return parse_study(text, path)
