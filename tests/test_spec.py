from pathlib import Path

import pytest

from kdsearch.errors import StudyFileError
from kdsearch.spec import (
    NAMED_INPUTS,
    CNNSpace,
    FloatRange,
    check_input,
    find_study_file,
    list_studies,
    load_study,
    parse_study,
)
from kdsearch.training.data import NAMED
from tests.helpers import (
    RESNET_TEACHER,
    STAGED_CHOICE,
    kdsearch,
    tiny_staged_study_text,
    tiny_study_text,
)


def test_shipped_studies_load():
    names = list_studies()
    for required in ("smoke", "mnist_distill", "cifar_compress"):
        assert required in names
    for name in names:
        spec = load_study(name)
        assert spec.name == name
        assert spec.search.n_trials >= 1


def test_mnist_distill_returns_no_student_larger_than_its_teacher():
    """Its space reaches 3 x 128 (134,794 params), above the 118,282-param teacher."""
    from kdsearch.architecture import MLPArch
    from kdsearch.sizes import arch_params

    spec = load_study("mnist_distill")
    teacher = arch_params(spec.teacher, NAMED["mnist"][2], 10)
    largest = arch_params(MLPArch(hidden=[128] * 3), NAMED["mnist"][2], 10)
    assert spec.student.max_params is not None and spec.student.max_params <= teacher < largest


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
               "key 'student.family': expected one of 'mlp', 'cnn', 'resnet', 'mobilenet' or "
               "{ choices = [..] } of 'resnet' and 'mobilenet', found 'rnn'"),
    "log_zero": (tiny_study_text().replace("low = 1.0, high = 10.0", "low = 0.0, high = 10.0"),
                 "key 'student.temperature': expected low > 0 for a log range"),
    "negative_seed": (tiny_study_text().replace("seed = 0", "seed = -1"), "key 'seed'"),
    "missing_data": (tiny_study_text().replace("[data]", "[unused]"), "key '"),
    "student_misspelt": (tiny_study_text().replace("[student.train]\nepochs = 2",
                                                   "[student.train]\nepoch = 2"),
                         "key 'student.train.epoch'"),
}


def test_unknown_study_name_lists_the_shipped_ones():
    with pytest.raises(StudyFileError, match="shipped studies: .*smoke"):
        find_study_file("no_such_study")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b"description = '\xff\xfe'\n")
    with pytest.raises(StudyFileError, match="latin.toml"):
        load_study(str(path))


def test_a_path_object_is_a_file_never_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_study(find_study_file("smoke")).description  # a Path, as pathlib users pass it
    with pytest.raises(StudyFileError, match="smoke: no such study file"):
        load_study(Path("smoke"))  # not looked up among the shipped studies


def test_study_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_study_file("smoke").name == "smoke.toml"
    assert Path(find_study_file("smoke")).is_file()


# --- values the model builders cannot take: refused at load, before data or teacher -----------

CNN, MLP = tiny_study_text("cnn"), tiny_study_text("mlp")
WIDTH, KERNEL, DEPTH = "width = { choices = [4, 8] }", "kernel = { choices = [3, 5] }", \
    "depth = { low = 1, high = 2 }"
ALPHA, TEMPERATURE = "alpha = { low = 0.0, high = 1.0 }", \
    "temperature = { low = 1.0, high = 10.0, log = true }"
TEACHER = 'family = "mlp"\nhidden = [32]'
CONV_TEACHER = 'family = "cnn"\nconvs = [{ channels = CH, kernel = 7, padding = "valid" }, ' \
    '{ channels = 4, kernel = 7, padding = "valid" }]'


def _student_key(text: str, line: str) -> str:
    return text.replace("[student.train]", f"{line}\n\n[student.train]")


RESNET = tiny_staged_study_text(description="residual")
CHOICE = tiny_staged_study_text(STAGED_CHOICE, description="residual")

REFUSED = {  # case: (study text, what the one line must say)
    "shortcut_c": (RESNET.replace('["A", "B"]', '["A", "C"]'),
                   "key 'student.shortcut': expected shortcuts: one of 'A', 'B', found 'C' among "
                   "the choices"),
    "resnet_kernel_even": (RESNET.replace("kernel = 3\nshortcut", "kernel = 4\nshortcut"),
                           "key 'student.kernel': expected odd kernel sizes"),
    "resnet_kernel_9": (RESNET.replace("kernel = 3\nshortcut", "kernel = 9\nshortcut"),
                        "key 'student.kernel': expected kernel sizes from 1 to 7, found 9"),
    "resnet_stages_7": (RESNET.replace("stages = { low = 1, high = 2 }", "stages = 7"),
                        "key 'student.stages': expected stages from 1 to 6, found 7"),
    "resnet_growth_below_1": (RESNET.replace("width_growth = 2.0", "width_growth = 0.5"),
                              "key 'student.width_growth': expected a width growth from 1 to 4, "
                              "found 0.5"),
    "resnet_last_stage_past_the_cap": (
        RESNET.replace("stages = { low = 1, high = 2 }", "stages = 6").replace(
            "base_width = { choices = [4, 6] }", "base_width = 1024"),
        "key 'student.base_width': expected at most 4,096 channels in the last stage (base_width x "
        "width_growth^(stages - 1)), found 1024 x 2^5 = 32,768"),
    "impossible_max_params_resnet": (_student_key(RESNET, "max_params = 100"),
                                     "key 'student.max_params': expected at least 368, the smallest "
                                     "student of this space on 8x8 inputs of 4 classes, found 100"),
    "mobilenet_expansion_9": (CHOICE.replace("expansion = { choices = [2, 4] }", "expansion = 9"),
                              "key 'student.mobilenet.expansion': expected expansion ratios from 1 "
                              "to 8, found 9"),
    "choice_without_its_table": (CHOICE[:CHOICE.index("[student.mobilenet]")] + CHOICE[
        CHOICE.index("[student.train]"):], "key 'student.mobilenet': expected a "
        "[student.mobilenet] table, since family 'mobilenet' is among the choices, found none"),
    "choice_of_cnn": (CHOICE.replace('["resnet", "mobilenet"]', '["resnet", "cnn"]'),
                      "key 'student.family.choices.1': expected 'resnet' or 'mobilenet', found "
                      "'cnn'"),
    "searched_lr_0": (RESNET.replace("low = 0.02, high = 0.2, log = true", "low = 0.0, high = 0.2"),
                      "key 'student.train.lr': expected a learning rate in (0, 10], found low = 0.0"),
    "batch_size_choice_0": (RESNET.replace("batch_size = 64", "batch_size = { choices = [0, 64] }"),
                            "key 'student.train.batch_size': expected batch sizes from 1 to 65,536, "
                            "found 0 among the choices"),
    "warmup_past_the_budget": (RESNET.replace('lr_schedule = "onecycle"',
                                              'lr_schedule = "onecycle"\nwarmup_epochs = 1'),
                               "key 'student.train.warmup_epochs': expected fewer warm-up epochs "
                               "than epochs (1), found 1"),
    "label_smoothing_1": (RESNET.replace("label_smoothing = 0.1", "label_smoothing = 1.0"),
                          "key 'student.train.label_smoothing': expected less than 1"),
    "resnet_teacher_too_large": (RESNET.replace(RESNET_TEACHER, 'family = "resnet"\nblocks = [18, 18, '
                                                '18, 18, 18, 18]\nbase_width = 1024'),
                                 "key 'teacher': expected at most 100,000,000 params, found "),
    "teacher_family_unknown": (RESNET.replace(RESNET_TEACHER, 'family = "vit"'),
                               "key 'teacher.family': expected one of 'mlp', 'cnn', 'resnet', "
                               "'mobilenet', found 'vit'"),
    "cnn_width_0": (CNN.replace(WIDTH, "width = 0"),
                    "key 'student.width': expected channels from 1 to 4,096, found 0"),
    "cnn_width_100000": (CNN.replace(WIDTH, "width = 100000"),
                         "key 'student.width': expected channels from 1 to 4,096, found 100,000"),
    "channels_past_the_cap": (CNN.replace(WIDTH, "width = 1024").replace(DEPTH, "depth = 4"),
                              "key 'student.width': expected at most 4,096 channels in the last "
                              "block (width x channel_growth^(depth - 1)), found 1024 x 2^3 = 8,192"),
    "kernel_0": (CNN.replace(KERNEL, "kernel = { choices = [0, 3] }"),
                 "key 'student.kernel': expected kernel sizes from 1 to 15, found 0 among the "
                 "choices"),
    "kernel_31": (CNN.replace(KERNEL, "kernel = 31"),
                  "key 'student.kernel': expected kernel sizes from 1 to 15, found 31"),
    "kernel_even": (CNN.replace(KERNEL, "kernel = { choices = [3, 4] }"),
                    "key 'student.kernel': expected odd kernel sizes"),
    "kernel_range_odd_step": (CNN.replace(KERNEL, "kernel = { low = 3, high = 7 }"),
                              "key 'student.kernel': expected odd kernel sizes: a range needs an "
                              "even step, found step = 1"),
    "kernel_past_the_input": (CNN.replace(KERNEL, "kernel = 9"),
                              "key 'student.kernel': expected kernels no larger than the 8x8 "
                              "input, found 9"),
    "cnn_depth_0": (CNN.replace(DEPTH, "depth = { low = 0, high = 2 }"),
                    "key 'student.depth': expected conv blocks from 1 to 16, found low = 0"),
    "convs_per_block_0": (CNN.replace("convs_per_block = 1", "convs_per_block = 0"),
                          "key 'student.convs_per_block': expected convs per block from 1 to 8, "
                          "found 0"),
    "dense_negative": (CNN.replace("dense = 0", "dense = { choices = [-16, 0] }"),
                       "key 'student.dense': expected dense widths (0 = none) from 0 to 16,384, "
                       "found -16 among the choices"),
    "dropout_1": (_student_key(CNN, "dropout = 1.0"),
                  "key 'student.dropout': expected a dropout in [0, 1), found 1.0"),
    "conv_dropout_range_to_1": (_student_key(CNN, "conv_dropout = { low = 0.0, high = 1.0 }"),
                                "key 'student.conv_dropout': expected a dropout in [0, 1), "
                                "found high = 1.0"),
    "alpha_above_1": (CNN.replace(ALPHA, "alpha = { low = 0.0, high = 1.5 }"),
                      "key 'student.alpha': expected an alpha in [0, 1] (the soft targets' "
                      "weight), found high = 1.5"),
    "alpha_negative": (CNN.replace(ALPHA, "alpha = -0.1"), "key 'student.alpha': expected an "
                       "alpha in [0, 1] (the soft targets' weight), found -0.1"),
    "temperature_0": (CNN.replace(TEMPERATURE, "temperature = 0.0"),
                      "key 'student.temperature': expected a temperature > 0, found 0.0"),
    "temperature_negative": (CNN.replace(TEMPERATURE, "temperature = { choices = [-1.0, 2.0] }"),
                             "key 'student.temperature': expected a temperature > 0, found -1.0 "
                             "among the choices"),
    "temperature_nan": (CNN.replace(TEMPERATURE, "temperature = nan"),
                        "key 'student.temperature': expected a finite number, found nan"),
    "mlp_depth_0": (MLP.replace(DEPTH, "depth = 0"),
                    "key 'student.depth': expected hidden layers from 1 to 32, found 0"),
    "mlp_width_negative": (MLP.replace(WIDTH, "width = -4"),
                           "key 'student.width': expected units per layer from 1 to 16,384, "
                           "found -4"),
    "mlp_width_huge": (MLP.replace(WIDTH, "width = { choices = [8, 100000] }"),
                       "key 'student.width': expected units per layer from 1 to 16,384, found "
                       "100,000 among the choices"),
    "mlp_too_large_to_allocate": (MLP.replace(WIDTH, "width = 16384").replace(DEPTH, "depth = 8"),
                                  "key 'student.max_params': expected a cap: this space reaches "
                                  "1,880,276,995 params, past the 100,000,000 a network may have, "
                                  "found none"),
    "max_params_past_the_cap": (_student_key(CNN, "max_params = 1000000000"),
                                "key 'student.max_params': expected less than or equal to "
                                "100000000, found 1000000000"),
    "impossible_max_params_cnn": (_student_key(CNN, "max_params = 200"),
                                  "key 'student.max_params': expected at least 235, the smallest "
                                  "student of this space on 8x8 inputs of 3 classes, found 200"),
    "impossible_max_macs_cnn": (_student_key(CNN, "max_macs = 2495"),
                                "key 'student.max_macs': expected at least 2,496, the MACs of the "
                                "cheapest student of this space on 8x8 inputs of 3 classes, found 2,495"),
    "impossible_max_macs_mlp": (_student_key(MLP, "max_macs = 10"),
                                "key 'student.max_macs': expected at least 268, the MACs of the "
                                "cheapest student of this space on 8x8 inputs of 3 classes, found 10"),
    "impossible_max_macs_resnet": (_student_key(RESNET, "max_macs = 100"),
                                   "key 'student.max_macs': expected at least 20,752, the MACs of "
                                   "the cheapest student of this space on 8x8 inputs of 4 classes"),
    "impossible_max_params_mlp": (_student_key(MLP, "max_params = 10"),
                                  "key 'student.max_params': expected at least 275, the smallest "
                                  "student of this space on 8x8 inputs of 3 classes, found 10"),
    "empty_choices": (CNN.replace(WIDTH, "width = { choices = [] }"),
                      "key 'student.width': expected a non-empty list of choices, found []"),
    "empty_float_choices": (CNN.replace(ALPHA, "alpha = { choices = [] }"),
                            "key 'student.alpha': expected a non-empty list of choices, found []"),
    "float_among_int_choices": (CNN.replace(WIDTH, "width = { choices = [4, 8.5] }"),
                                "key 'student.width': expected whole numbers as choices, found "
                                "8.5 among them"),
    "bool_as_width": (CNN.replace(WIDTH, "width = true"), "key 'student.width': expected a whole "
                      "number, a range { low = .., high = .. } or { choices = [..] }, found True"),
    "step_not_dividing": (CNN.replace(DEPTH, "depth = { low = 1, high = 2, step = 2 }"),
                          "key 'student.depth': expected a step that divides high - low"),
    "teacher_width_0": (CNN.replace(TEACHER, 'family = "mlp"\nhidden = [32, 0]'),
                        "key 'teacher.hidden.1': expected greater than or equal to 1, found 0"),
    "teacher_width_negative": (CNN.replace(TEACHER, 'family = "mlp"\nhidden = [-8]'),
                               "key 'teacher.hidden.0': expected greater than or equal to 1"),
    "teacher_too_large": (CNN.replace(TEACHER, 'family = "mlp"\nhidden = [16384, 16384, 16384]'),
                          "key 'teacher': expected at most 100,000,000 params, found 538,017,795"),
    "teacher_channels_0": (CNN.replace(TEACHER, CONV_TEACHER.replace("CH", "0")),
                           "key 'teacher.convs.0.channels': expected greater than or equal to 1"),
    "teacher_dense_0": (CNN.replace(TEACHER, CONV_TEACHER.replace("CH", "4") + "\ndense = [0]"),
                        "key 'teacher.dense.0': expected greater than or equal to 1"),
    "teacher_convs_collapse": (CNN.replace(TEACHER, CONV_TEACHER.replace("CH", "4")),
                               "key 'teacher.convs': expected conv layers that fit a 8x8 input, "
                               "found conv layer 2 (7x7, valid) leaves no pixels of a 8x8 input"),
    "val_size_not_below_n_train": (CNN.replace("val_size = 100", "val_size = 400"),
                                   "key 'data.val_size': expected fewer validation images than "
                                   "synthetic.n_train (400), found 400"),
    "synthetic_past_memory": (CNN.replace("n_train = 400", "n_train = 10000000"),
                              "key 'data.synthetic.n_train': expected at most 268,435,456 pixel "
                              "values"),
}


@pytest.mark.parametrize("case", sorted(BAD) + sorted(REFUSED))
def test_a_study_file_the_loader_cannot_take_is_refused_at_load_in_one_line(tmp_path, case):
    """Malformed files (BAD) and values the model builders cannot take (REFUSED) alike: one line
    that names the file and, past the TOML syntax, the key, what was expected and what was found."""
    text, fragment = {**BAD, **REFUSED}[case]
    assert text not in (CNN, MLP, RESNET, CHOICE), "the edit did not apply"
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    with pytest.raises(StudyFileError) as info:
        load_study(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and fragment in message
    if case != "syntax":
        assert message.startswith(f"{path}: key '") and "expected" in message and "found" in message


def test_the_smallest_student_is_allowed_exactly(tmp_path):
    spec = parse_study(_student_key(CNN, "max_params = 235"), tmp_path / "tight.toml")
    assert spec.student.max_params == 235
    spec = parse_study(_student_key(CNN, "max_macs = 2496"), tmp_path / "tight.toml")
    assert spec.student.max_macs == 2496


def test_a_latency_limit_is_not_judged_at_load(tmp_path):
    """A latency is measured on the run's device, so no limit can be refused before the run:
    each trial times its student and prunes it, saying why (tests/test_objectives.py)."""
    spec = parse_study(_student_key(CNN, "max_latency_ms = 0.000001"), tmp_path / "fast.toml")
    assert spec.student.max_latency_ms == 1e-6


MOBILE_HEAD = RESNET.replace("num_classes = 4", "num_classes = 100").replace(
    RESNET[RESNET.index('family = "resnet"\nstages'):RESNET.index("[student.train]")],
    'family = "mobilenet"\nstages = 1\nblocks = 1\nbase_width = 32\nwidth_growth = 1.0\n'
    "kernel = 3\nexpansion = 1\nhead = { choices = [0, 8] }\n\n")


def test_a_narrow_head_is_the_smallest_student_when_the_classes_are_many(tmp_path):
    """A head replaces a classifier on the last stage's width: with 100 classes a head of 8
    costs less than none, so the lowest corner (head 0) is not the smallest student."""
    from kdsearch.architecture import MobileNetArch
    from kdsearch.sizes import arch_params, count_macs

    shape = (1, 8, 8)
    students = [MobileNetArch(blocks=[1], base_width=32, width_growth=1.0, kernel=3, expansion=1,
                              head=h) for h in (0, 8)]
    params = [arch_params(a, shape, 100) for a in students]
    macs = [count_macs(a, shape, 100) for a in students]
    assert params[1] < params[0] and MOBILE_HEAD != RESNET  # (MACs: the head's conv costs more)
    smallest, fewest = min(params), min(macs)
    spec = parse_study(_student_key(MOBILE_HEAD, f"max_params = {smallest}\nmax_macs = {fewest}"),
                       tmp_path / "head.toml")
    assert (spec.student.max_params, spec.student.max_macs) == (smallest, fewest)
    with pytest.raises(StudyFileError, match=f"expected at least {smallest:,}, the smallest"):
        parse_study(_student_key(MOBILE_HEAD, f"max_params = {smallest - 1}"), tmp_path / "h.toml")
    with pytest.raises(StudyFileError, match=f"expected at least {fewest:,}, the MACs"):
        parse_study(_student_key(MOBILE_HEAD, f"max_macs = {fewest - 1}"), tmp_path / "h.toml")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["teacher_width_0", "empty_choices", "float_among_int_choices",
                                  "impossible_max_params_cnn"])
def test_refusals_through_the_cli_are_one_line_exit_2(tmp_path, case):
    text, fragment = REFUSED[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    proc = kdsearch("run-study", str(path), "--storage", f"sqlite:///{tmp_path / 's.db'}",
                    "--cache-dir", str(tmp_path / "cache"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("kdsearch: error: ")
    assert fragment in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "cache").exists()


def test_named_inputs_agree_with_the_loader():
    assert {name: (shape, classes) for name, (_, classes, shape) in NAMED.items()} == NAMED_INPUTS


def test_an_image_folder_study_is_checked_once_its_shape_is_known(tmp_path):
    text = _student_key(CNN, "max_params = 200").replace(
        'dataset = "synthetic"', f'dataset = "imagefolder"\npath = "{tmp_path}"')
    spec = parse_study(text, tmp_path / "folder.toml")  # the shape is not known yet
    check_input(spec, (1, 5, 5), 3)  # smaller images, a smaller head: the smallest student fits
    with pytest.raises(StudyFileError, match=r"folder.toml: key 'student.max_params': expected "
                       r"at least 235, .* on 8x8 inputs of 3 classes, found 200"):
        check_input(spec.with_overrides(seed=1), (1, 8, 8), 3)


# --- a teacher from a file, and fixed views -----------------------------------------------------

def _file_study(input_lines: str = "", student_train: str = "") -> str:
    text = tiny_study_text(teacher=f'file = "t.onnx"\n{input_lines}', teacher_train=None)
    return text.replace("[student.train]\n", f"[student.train]\n{student_train}\n")


def test_a_teacher_file_resolves_against_the_study_file(tmp_path):
    spec = parse_study(_file_study('[teacher.input]\nlayout = "NHWC"\nscale = 1.0'),
                       tmp_path / "sub" / "s.toml")
    assert spec.teacher is None and spec.teacher_file.input.layout == "NHWC"
    assert spec.teacher_path(spec.teacher_file.file) == (tmp_path / "sub" / "t.onnx").resolve()
    assert spec.teacher_path("/abs/t.onnx") == Path("/abs/t.onnx")


@pytest.mark.parametrize(("text", "expected"), [
    (_file_study('format = "keras"'), "key 'teacher.format': expected 'torchscript', 'export' or"),
    (_file_study('[teacher.input]\nlayout = "NWHC"'), "key 'teacher.input.layout'"),
    (_file_study("[teacher.input]\nstd = [0.5, 0.0]"),
     "key 'teacher.input.std': expected positive numbers, found [0.5, 0.0]"),
    (_file_study("[teacher.input]\nmean = [0.1, 0.2]"),
     "key 'teacher.input.mean': expected 1 value, found 2"),
    (_file_study("[teacher.input]\nscale = 0"), "key 'teacher.input.scale'"),
    (_file_study('torchvision = "resnet18"'), "key 'teacher.torchvision': expected file or torchvision"),
    (_file_study().replace('file = "t.onnx"', 'torchvision = "resnet18"'),
     "key 'teacher.weights': expected weights = PATH"),
    (_file_study().replace("[student.train]", "[teacher.train]\nepochs = 1\n[student.train]"),
     "key 'teacher.train': expected no training recipe for a teacher from a file"),
    (_file_study(student_train="hflip = true"), "key 'student.train.views': expected views >= 1"),
    (_file_study(student_train="views = 3"), "key 'student.train.views': expected hflip = true or"),
    (_file_study(student_train="views = 3\njitter = 2\nhflip = true"), "key 'student.train.jitter'"),
    (_file_study(student_train="jitter = 2\ntranslate = 2"), "key 'student.train.translate'"),
    (tiny_study_text().replace("lr = 0.003\n\n[student]", "lr = 0.003\nviews = 2\nhflip = true\n\n"
                               "[student]", 1), "key 'teacher.train.views': expected views only"),
])
def test_teacher_file_and_views_mistakes_are_one_line(tmp_path, text, expected):
    with pytest.raises(StudyFileError) as err:
        parse_study(text, tmp_path / "s.toml")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_views_with_a_teacher_file_load(tmp_path):
    spec = parse_study(_file_study(student_train="views = 4\nhflip = true\ntranslate = 2"),
                       tmp_path / "s.toml")
    r = spec.student.train
    assert (r.views, r.hflip, r.translate) == (4, True, 2) and not r.augments()


def test_residual_teachers_and_students_load_and_old_recipes_dump_as_before():
    spec = parse_study(CHOICE, Path("choice.toml"))
    assert spec.teacher.family == "resnet" and spec.teacher.blocks == [1, 1]
    assert spec.student.space.family.choices == ["resnet", "mobilenet"]
    mobile = parse_study(RESNET.replace(RESNET_TEACHER, 'family = "mobilenet"\nblocks = [1]'),
                         Path("m.toml"))
    assert mobile.teacher.family == "mobilenet"
    # The teacher cache key hashes the recipe's JSON: the keys added for short budgets stay out
    # of it at their defaults, so existing studies keep their trained teachers.
    assert set(spec.teacher_train.model_dump()) == {
        "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "lr_schedule",
        "jitter", "hflip", "max_norm"}
    assert spec.student.train.model_dump()["label_smoothing"] == 0.1
