"""What the README and docs/ tell a newcomer holds: the example study file loads, the stated
`[teacher.input]` defaults are the code's, and every test they cite exists."""

import re

import pytest

from kdsearch.spec import TeacherInput, parse_study
from tests.helpers import REPO

README = (REPO / "README.md").read_text()
DOCS = {p: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}


def _toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_the_readme_study_example_loads(tmp_path):
    (example,) = [b for b in _toml_blocks(README) if "[student]" in b]
    spec = parse_study(example, tmp_path / "example.toml")
    assert spec.data.dataset == "cifar10" and spec.search.n_trials == 30


def test_the_readme_states_the_teacher_input_defaults():
    d = TeacherInput()
    assert d.mean is None and d.std is None
    assert (f'`scale = {d.scale}`, no `mean`, no `std`, `layout = "{d.layout}"`'
            in " ".join(README.split()))


@pytest.mark.parametrize("doc", sorted(DOCS), ids=lambda p: p.name)
def test_cited_tests_exist(doc):
    for path, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", DOCS[doc]):
        assert (REPO / path).is_file(), f"{doc.name} cites {path}, which does not exist"
        if name:
            assert f"def {name}(" in (REPO / path).read_text(), f"{doc.name} cites {path}::{name}"
