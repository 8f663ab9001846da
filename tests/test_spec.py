from pathlib import Path

import pytest

from kdsearch.errors import StudyFileError
from kdsearch.spec import CNNSpace, FloatRange, find_study_file, list_studies, load_study, parse_study
from tests.helpers import tiny_study_text


def test_shipped_studies_load():
    names = list_studies()
    for required in ("smoke", "mnist_distill", "cifar_compress"):
        assert required in names
    for name in names:
        spec = load_study(name)
        assert spec.name == name
        assert spec.search.n_trials >= 1


def test_cifar_compress_space_contains_the_seed_student():
    spec = load_study("cifar_compress")
    space = spec.student.space
    assert isinstance(space, CNNSpace)
    assert 2 in range(space.depth.low, space.depth.high + 1)
    assert 2 in range(space.convs_per_block.low, space.convs_per_block.high + 1)
    assert 8 in space.width.choices and 3 in space.kernel.choices and 128 in space.dense.choices
    assert isinstance(space.temperature, FloatRange) and space.temperature.log
    assert space.temperature.low <= 1.0


def test_tiny_study_parses(tmp_path):
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    assert spec.name == "tiny"
    assert spec.teacher_train.epochs == 2
    assert spec.student.train.epochs == 2


BAD = {
    "syntax": ("[data\ndataset = 'mnist'", "not valid TOML"),
    "unknown_key": ("colour = 'blue'\n" + tiny_study_text(), "key 'colour'"),
    "bad_dataset": (tiny_study_text().replace('"synthetic"', '"imagenet"'), "key 'data.dataset'"),
    "reversed_range": (tiny_study_text().replace("low = 1, high = 2", "low = 3, high = 1"),
                       "key 'student.depth': expected low <= high"),
    "width_text": (tiny_study_text().replace("{ choices = [4, 8] }", '"wide"'), "key 'student.width'"),
    "zero_epochs": (tiny_study_text().replace("epochs = 2\nbatch_size = 64\nlr = 0.003\n\n[student]",
                                              "epochs = 0\nbatch_size = 64\nlr = 0.003\n\n[student]"),
                    "key 'teacher.train.epochs'"),
    "family": (tiny_study_text().replace('family = "cnn"', 'family = "rnn"'),
               "key 'student.family': expected one of 'mlp', 'cnn', found 'rnn'"),
    "log_zero": (tiny_study_text().replace("low = 1.0, high = 10.0", "low = 0.0, high = 10.0"),
                 "key 'student.temperature': expected low > 0 for a log range"),
    "negative_seed": (tiny_study_text().replace("seed = 0", "seed = -1"), "key 'seed'"),
    "missing_data": (tiny_study_text().replace("[data]", "[unused]"), "key '"),
    "student_misspelt": (tiny_study_text().replace("[student.train]\nepochs = 2",
                                                   "[student.train]\nepoch = 2"),
                         "key 'student.train.epoch'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_study_files_give_one_line_naming_file_and_key(tmp_path, case):
    text, fragment = BAD[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    with pytest.raises(StudyFileError) as info:
        load_study(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert fragment in message
    if "key '" in fragment:
        assert "expected" in message and "found" in message


def test_unknown_study_name_lists_the_shipped_ones():
    with pytest.raises(StudyFileError, match="shipped studies: .*smoke"):
        find_study_file("no_such_study")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b"description = '\xff\xfe'\n")
    with pytest.raises(StudyFileError, match="latin.toml"):
        load_study(str(path))


def test_study_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_study_file("smoke").name == "smoke.toml"
    assert Path(find_study_file("smoke")).is_file()
