"""Hostile input: every study file and command line ends in a valid spec or one line, exit 2.

Property tests (hypothesis) on the study-file loader (a file that loads builds its teacher and
its students at every corner of the space) and the CLI's arguments, then the
failures a running study meets (NaN loss, out of memory, over-budget students, a corrupt
teacher cache, a missing data directory), each of which must leave a recorded trial state.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import tomllib
import types
import typing
from pathlib import Path

import optuna
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState
from pydantic import BaseModel

import kdsearch.cli as cli
from kdsearch.architecture import CNNArch, ConvLayer, MLPArch, MobileNetArch, ResNetArch
from kdsearch.errors import KdsearchError, StudyFileError
from kdsearch.options import Options
from kdsearch.search.space import suggest_student
from kdsearch.sizes import arch_params, count_macs
from kdsearch.spec import (
    MAX_PARAMS,
    NAMED_INPUTS,
    Baseline,
    CNNSpace,
    DataSpec,
    EarlyStoppingSpec,
    FamilyChoices,
    FamilyChoiceSpace,
    FloatChoices,
    FloatRange,
    IntChoices,
    IntRange,
    MLPSpace,
    MobileNetShape,
    MobileNetSpace,
    ResNetShape,
    ResNetSpace,
    SearchSpec,
    StrChoices,
    StudentRecipe,
    StudentSpec,
    StudySpec,
    SyntheticSpec,
    TeacherFileSpec,
    TeacherInput,
    TrainRecipe,
    load_study,
    parse_study,
    shipped_studies_dir,
)
from kdsearch.study.runner import run_study
from kdsearch.training.models import build_model, count_params
from tests.helpers import mlp_study_text, tiny_study, tiny_study_text

EXAMPLES = int(os.environ.get("KDSEARCH_FUZZ_EXAMPLES", "300"))  # raise for a longer hunt

# --- the study-file loader --------------------------------------------------------------------


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf
                                            else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(doc: dict) -> str:
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items()) + "\n"


scalars = (st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats() | st.booleans()
           | st.text(max_size=30) | st.sampled_from(["mlp", "cnn", "synthetic", "mnist", "same",
                                                     "valid", "tpe", "grid", "adam", ""]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
SHIPPED = {p.stem: tomllib.loads(p.read_text()) for p in shipped_studies_dir().glob("*.toml")}
SHIPPED["tiny"] = tomllib.loads(mlp_study_text(epochs=2, n_trials=3))


def _paths(doc, prefix=()):
    for k, v in doc.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


def _check(text: str) -> StudySpec | str:
    """The spec, after building its networks at every corner; or the one-line refusal."""
    try:
        spec = parse_study(text, Path("hostile.toml"))
    except StudyFileError as e:
        msg = str(e)
        assert msg.startswith("hostile.toml: ") and "\n" not in msg and len(msg) < 2000, msg
        return msg
    assert isinstance(spec, StudySpec)
    _builds_everywhere(spec)
    return spec


# --- a loaded study's networks: built as torch modules at every corner of the space -----------


def _input(spec: StudySpec) -> tuple[tuple[int, int, int], int] | None:
    if spec.data.dataset == "synthetic":
        s = spec.data.synthetic
        return (s.channels, s.height, s.width), s.num_classes
    return NAMED_INPUTS.get(spec.data.dataset)  # an ImageFolder's shape is known only later


def _ends(param) -> list:
    if isinstance(param, (IntRange, FloatRange)):
        high = param.high if isinstance(param, FloatRange) else (
            param.low + (param.high - param.low) // param.step * param.step)
        return sorted({param.low, high})
    if isinstance(param, (IntChoices, FloatChoices, StrChoices)):
        return sorted({min(param.choices), max(param.choices)})
    return [param]


def _staged_names(shape) -> tuple[list[str], list[str]]:
    """(discrete, float) knobs of a resnet or mobilenet (sub-)space."""
    discrete = ["stages", "blocks", "base_width", "kernel",
                *(["shortcut"] if isinstance(shape, ResNetShape) else ["expansion", "head"])]
    return discrete, ["width_growth"]


def _staged_corners(space) -> list[dict]:
    """Corners of a residual space; with the family a choice, of each family's sub-space."""
    shapes = space.shapes() if isinstance(space, FamilyChoiceSpace) else {space.family: space}
    out = []
    for family, shape in shapes.items():
        prefix = f"{family}." if isinstance(space, FamilyChoiceSpace) else ""
        head = {"family": family} if prefix else {}
        discrete, floats = _staged_names(shape)
        for values in itertools.product(*(_ends(getattr(shape, n)) for n in discrete)):
            for end in (0, -1):
                out.append({**head, **{prefix + n: v for n, v in zip(discrete, values, strict=True)},
                            **{prefix + n: _ends(getattr(shape, n))[end] for n in floats},
                            **{n: _ends(getattr(space, n))[end] for n in ("temperature", "alpha")}})
    return out


def _int_names(space) -> list[str]:
    return ["depth", "width", *(["convs_per_block", "kernel", "dense"]
                                if isinstance(space, CNNSpace) else [])]


def _float_names(space) -> list[str]:
    return ["dropout", "temperature", "alpha", *(["conv_dropout"]
                                                 if isinstance(space, CNNSpace) else [])]


def _trial_params(space, ints: dict, floats: dict) -> dict:
    """What a trial at this point of the space holds, per-layer names included."""
    params = {**ints, **floats}
    if isinstance(space, CNNSpace) and space.kernel_per_layer:
        for i in range(ints["depth"] * ints["convs_per_block"]):
            params[f"kernel_{i + 1}"] = ints["kernel"]
    if not isinstance(space, CNNSpace) and space.width_per_layer:
        params.update({f"width_{i + 1}": ints["width"] for i in range(ints["depth"])})
    return params


def corners(space) -> list[dict]:
    """Every corner of the space (each integer at either end; the floats low, then high)."""
    if not isinstance(space, MLPSpace | CNNSpace):
        return _staged_corners(space)
    ints = _int_names(space)
    floats = [{n: _ends(getattr(space, n))[end] for n in _float_names(space)} for end in (0, -1)]
    return [_trial_params(space, dict(zip(ints, values, strict=True)), f)
            for values in itertools.product(*(_ends(getattr(space, n)) for n in ints))
            for f in floats]


_META: dict[tuple, int] = {}


def _meta_params(arch, shape, classes) -> int:
    """Build `arch` and run one image through it on the meta device: every shape checked, no
    memory spent, so a 100M-parameter corner costs what a tiny one does. Its parameter count.

    Once per network: drawn spaces share most corners (389 networks among 1,428 corners in a
    run of 50 spaces), and a meta forward is tens of milliseconds of Python."""
    key = (type(arch).__name__, arch.model_dump_json(), shape, classes)
    if key not in _META:
        with torch.device("meta"):
            model = build_model(arch, shape, classes).eval()  # batch norm: one image, a 1x1 map
            out = model(torch.zeros((1, *shape), dtype=torch.uint8))
        assert tuple(out.shape) == (1, classes), arch
        _META[key] = count_params(model)
        assert _META[key] == arch_params(arch, shape, classes)
    return _META[key]


_BUILT: set[str] = set()


def _builds_everywhere(spec: StudySpec) -> None:
    known = _input(spec)
    if known is None:
        return
    shape, classes = known
    teacher = spec.teacher or spec.teacher_file  # a teacher file is not built: it is loaded
    key = json.dumps([teacher.model_dump(), spec.student.model_dump(), shape, classes],
                     sort_keys=True, default=str)
    if key in _BUILT:
        return
    if spec.teacher is not None:
        assert _meta_params(spec.teacher, shape, classes) <= MAX_PARAMS
    space = spec.student.space
    for params in corners(space):
        choice = suggest_student(optuna.trial.FixedTrial(params), space, shape)
        size = _meta_params(choice.arch, shape, classes)
        assert spec.student.max_params is not None or size <= MAX_PARAMS, (params, size)
    _BUILT.add(key)


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_spec_or_one_line(text):
    _check(text)


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(sorted(SHIPPED)), st.data())
def test_mutated_study_files_are_a_spec_or_one_line(name, data):
    """A shipped study with one key replaced, deleted or added: the realistic typo."""
    doc = json.loads(json.dumps(SHIPPED[name]))
    path = data.draw(st.sampled_from(sorted(_paths(doc))))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = data.draw(values)
    elif action == "delete":
        del parent[path[-1]]
    else:
        parent[data.draw(st.text(min_size=1, max_size=10))] = data.draw(values)
    _check(to_toml(doc))


def _form(x):
    """A parameter in any of its three forms, its values drawn from `x`."""
    return st.one_of(
        x,
        st.tuples(x, x).map(lambda t: {"low": min(t), "high": max(t)}),
        st.lists(x, min_size=1, max_size=3).map(lambda c: {"choices": c}),
    )


def _int_param(low: int, high: int, odd: bool = False, bad: bool = False):
    n = st.integers(low, high).map(lambda k: 2 * k + 1 if odd else k)
    bad_n = st.sampled_from([-1, 0, 2, 4097, 100_000])
    step = st.integers(1, 3)
    return _form(bad_n if bad else n) | st.tuples(n, st.integers(0, 2), step).map(
        lambda t: {"low": t[0], "high": t[0] + t[1] * t[2], "step": t[2]})


def _float_param(low: float, high: float, bad: bool = False):
    return _form(st.sampled_from([-0.5, 0.0, 1.0, 1.5]) if bad else st.floats(low, high))


@st.composite
def student_spaces(draw) -> dict:
    """A small study file whose student space is drawn key by key, at most one key hostile."""
    family = draw(st.sampled_from(["mlp", "cnn", "resnet", "mobilenet", "choice"]))
    if family in ("resnet", "mobilenet", "choice"):
        return draw(staged_spaces(family))
    bad = draw(st.sampled_from([None] * 6 + ["depth", "width", "dropout", "temperature", "alpha",
                                             "convs_per_block", "kernel", "dense"]))
    student = {
        "family": family,
        "depth": draw(_int_param(1, 3, bad=bad == "depth")),
        "width": draw(_int_param(1, 24, bad=bad == "width")),
        "dropout": draw(_float_param(0.0, 0.9, bad=bad == "dropout")),
        "temperature": draw(_float_param(0.1, 20.0, bad=bad == "temperature")),
        "alpha": draw(_float_param(0.0, 1.0, bad=bad == "alpha")),
    }
    if family == "cnn":
        student |= {"convs_per_block": draw(_int_param(1, 3, bad=bad == "convs_per_block")),
                    "kernel": draw(_int_param(0, 4, odd=True, bad=bad == "kernel")),
                    "dense": draw(_int_param(0, 32, bad=bad == "dense")),
                    "channel_growth": draw(st.integers(1, 4)),
                    "kernel_per_layer": draw(st.booleans()),
                    "conv_dropout": draw(_float_param(0.0, 0.9))}
    else:
        student["width_per_layer"] = draw(st.booleans())
    if draw(st.booleans()):
        student["max_params"] = draw(st.integers(1, 20_000))
    side = draw(st.integers(4, 16))
    return {"data": {"dataset": "synthetic", "val_size": 20,
                     "synthetic": {"n_train": 100, "n_test": 20, "num_classes": draw(
                         st.integers(2, 5)), "channels": draw(st.integers(1, 3)),
                                   "height": side, "width": draw(st.integers(side, 16))}},
            "teacher": {"family": "mlp", "hidden": [8]}, "student": student}


def _staged_shape(draw, family: str, bad: str | None) -> dict:
    shape = {"stages": draw(_int_param(1, 3, bad=bad == "stages")),
             "blocks": draw(_int_param(1, 2, bad=bad == "blocks")),
             "base_width": draw(_int_param(1, 12, bad=bad == "base_width")),
             "width_growth": draw(_float_param(1.0, 2.5, bad=bad == "width_growth")),
             "kernel": draw(_int_param(0, 2, odd=True, bad=bad == "kernel"))}
    if family == "resnet":
        shape["shortcut"] = draw(st.sampled_from(["A", "B", {"choices": ["A", "B"]}, {"choices": ["B"]}]
                                                 + (["C", {"choices": []}] if bad == "shortcut" else [])))
    else:
        shape |= {"expansion": draw(_int_param(1, 6, bad=bad == "expansion")),
                  "head": draw(st.sampled_from([0, 8, {"choices": [0, 16]}, {"choices": [0, 2]}]))}
    return shape


@st.composite
def staged_spaces(draw, family: str) -> dict:
    """A study whose students are resnet, mobilenet or either (the family a choice)."""
    bad = draw(st.sampled_from([None] * 6 + ["stages", "blocks", "base_width", "width_growth",
                                             "kernel", "shortcut", "expansion"]))
    student: dict = {"temperature": draw(_float_param(0.1, 20.0)), "alpha": draw(_float_param(0.0, 1.0))}
    if family == "choice":
        families = draw(st.sampled_from([["resnet"], ["mobilenet"], ["resnet", "mobilenet"]]))
        student |= {"family": {"choices": families}} | {f: _staged_shape(draw, f, bad) for f in families}
    else:
        student |= {"family": family, **_staged_shape(draw, family, bad)}
    side = draw(st.integers(4, 16))
    return {"data": {"dataset": "synthetic", "val_size": 20,
                     "synthetic": {"n_train": 100, "n_test": 20, "num_classes": draw(st.integers(2, 5)),
                                   "channels": draw(st.integers(1, 3)), "height": side,
                                   "width": draw(st.integers(side, 16))}},
            "teacher": draw(st.sampled_from([{"family": "mlp", "hidden": [8]},
                                             {"family": "resnet", "blocks": [1, 1], "base_width": 4},
                                             {"family": "mobilenet", "blocks": [1], "base_width": 4,
                                              "expansion": 2}])),
            "student": student}


def _every_student(space, shape) -> list | None:
    """Every student of a small space, through the trial's own suggest path; None if many.
    Residual spaces: every discrete value, the floats at their ends (sizes grow with each)."""
    if not isinstance(space, MLPSpace | CNNSpace):
        return _every_staged_student(space, shape)
    names = _int_names(space)
    grids = [list(range(p.low, p.high + 1, p.step)) if isinstance(p, IntRange)
             else sorted(set(p.choices)) if isinstance(p, IntChoices) else [p]
             for p in (getattr(space, n) for n in names)]
    floats = {n: _ends(getattr(space, n))[0] for n in _float_names(space)}
    points = []
    for values in itertools.product(*grids):
        ints = dict(zip(names, values, strict=True))
        params = _trial_params(space, ints, floats)
        per_layer = sorted(k for k in params if k.startswith(("kernel_", "width_")))
        grid = grids[names.index(per_layer[0].split("_")[0])] if per_layer else []
        points += [{**params, **dict(zip(per_layer, seq, strict=True))}
                   for seq in itertools.product(grid, repeat=len(per_layer))]
        if len(points) > 2000:
            return None
    return [suggest_student(optuna.trial.FixedTrial(p), space, shape).arch for p in points]


def _every_staged_student(space, shape) -> list | None:
    shapes = space.shapes() if isinstance(space, FamilyChoiceSpace) else {space.family: space}
    points = []
    for family, sub in shapes.items():
        prefix = f"{family}." if isinstance(space, FamilyChoiceSpace) else ""
        discrete, floats = _staged_names(sub)
        grids = [list(range(p.low, p.high + 1, p.step)) if isinstance(p, IntRange)
                 else sorted(set(p.choices)) if isinstance(p, IntChoices | StrChoices) else [p]
                 for p in (getattr(sub, n) for n in discrete)]
        for values in itertools.product(*grids, _ends(sub.width_growth)):
            points.append({**({"family": family} if prefix else {}),
                           **{prefix + n: v for n, v in zip([*discrete, *floats], values, strict=True)},
                           "temperature": _ends(space.temperature)[0], "alpha": _ends(space.alpha)[0]})
        if len(points) > 2000:
            return None
    return [suggest_student(optuna.trial.FixedTrial(p), space, shape).arch for p in points]


@pytest.mark.slow
@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None)
@given(student_spaces())
def test_drawn_spaces_load_only_if_every_corner_builds(doc):
    """A space loads only if its students build at every corner; `max_params` and `max_macs`
    only if one fits, and a refusal names the smallest (cheapest) student exactly (checked
    against every student here)."""
    wanted = doc["student"].pop("max_params", None)
    result = _check(to_toml(doc))
    if isinstance(result, str):
        return
    space, syn = result.student.space, result.data.synthetic
    shape = (syn.channels, syn.height, syn.width)
    archs = _every_student(space, shape)
    if archs is None:
        return
    smallest = min(arch_params(a, shape, syn.num_classes) for a in archs)
    for max_params in {wanted or smallest, smallest, smallest - 1} - {0}:
        doc["student"]["max_params"] = max_params
        if max_params >= smallest:
            assert isinstance(_check(to_toml(doc)), StudySpec), (max_params, smallest)
        else:
            assert f"expected at least {smallest:,}, the smallest student" in _check(to_toml(doc))
    del doc["student"]["max_params"]
    fewest = min(count_macs(a, shape, syn.num_classes) for a in archs)
    for max_macs in {fewest, fewest - 1} - {0}:  # the networks are built above: only loaded here
        doc["student"]["max_macs"] = max_macs
        if max_macs >= fewest:
            assert parse_study(to_toml(doc), Path("hostile.toml")).student.max_macs == max_macs
        else:
            with pytest.raises(StudyFileError, match=f"expected at least {fewest:,}, the MACs of"):
                parse_study(to_toml(doc), Path("hostile.toml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_studies_build_at_every_corner(name):
    text = (shipped_studies_dir() / f"{name}.toml").read_text() if name != "tiny" else to_toml(
        SHIPPED[name])
    assert isinstance(_check(text), StudySpec)


@pytest.mark.parametrize("text", [
    'name = "a/b"\n', "[data]\ndataset = 5\n", "student = 3\n", "teacher = []\n",
    '[teacher]\ntrain = "fast"\n', "search = { n_trials = 1e400 }\n", "\x00",
    'description = "\\ud800"\n', "[student]\nmax_params = -1\n",
])
def test_known_hostile_files(text):
    _check(text)


def test_control_characters_in_a_key_stay_on_one_line():
    # Found by hypothesis: a newline in an unknown key's name split the message in two.
    good = mlp_study_text(epochs=1, n_trials=1)
    with pytest.raises(StudyFileError) as err:
        parse_study(good.replace("[data]\n", '[data]\n"a\\nb" = []\n'), Path("s.toml"))
    assert str(err.value) == "s.toml: key 'data.a\\nb': expected no such key, found []"


# --- the command line ---------------------------------------------------------------------------

_WORK = Path(tempfile.mkdtemp(prefix="kd_hostile_"))
_STUDY = tiny_study(_WORK)
_ARGS = st.one_of(
    st.sampled_from(["run-study", "teacher", "best", "export", "studies", "--help", "--version",
                     "--storage", "--n-trials", "--timeout", "--seed", "--device", "--out",
                     "--cache-dir", "--data-dir", "--study-name", "--artifact-dir", "smoke",
                     str(_STUDY), "-1", "0", "nan", "1e999", "inf", "sqlite://", "postgresql://",
                     "postgresql+psycopg://u:pw@127.0.0.1:1/x", "sqlite:////nonexistent/dir/x.db",
                     "mysql://x", "x" * 300, "a/../../b.toml", "=", "--", "-", "--storage=",
                     ]),
    st.text(max_size=40),
)


def _fake_run(spec, opts, log=print, on_epoch=None):
    assert opts.n_trials >= 1
    raise KdsearchError("stub run")


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(_ARGS, max_size=7))
# Found by hypothesis, fixed: a URL's password echoed by argparse, a control character
# splitting the line, a name too long for the file system, a NUL byte.
@example(argv=["postgresql+psycopg://u:pw@127.0.0.1:1/x"])
@example(argv=["run-study", "\x1e"])
@example(argv=["run-study", "x" * 300])
@example(argv=["run-study", "a\x00b.toml"])
def test_any_command_line_ends_in_one_line_or_success(argv, capsys, monkeypatch):
    monkeypatch.chdir(_WORK)
    monkeypatch.setenv("KDSEARCH_STORAGE", f"sqlite:///{_WORK / 'k.db'}")
    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(_WORK / "cache"))
    monkeypatch.setattr("kdsearch.study.runner.run_study", _fake_run)
    monkeypatch.setattr("kdsearch.study.runner.prepare", _fake_run)
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("kdsearch: error: "), (argv, err)
    assert "pw@" not in err


# --- failures inside a running study -------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # one teacher for the module's runs


def _run(tmp_path, cache_dir, text_changes=(), n_trials=2) -> optuna.Study:
    text = mlp_study_text(epochs=1, n_trials=n_trials)
    for old, new in text_changes:
        text = text.replace(old, new)
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    spec = load_study(str(path))
    opts = Options(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="tiny",
                      n_trials=n_trials, timeout=None, data_dir=None, cache_dir=cache_dir,
                      device="cpu")
    return run_study(spec, opts, log=lambda m: None)


def _reasons(study: optuna.Study) -> list[tuple[str, str]]:
    return [(t.state.name, t.user_attrs.get("stopped_reason", "")) for t in study.trials]


@pytest.mark.slow
def test_nan_loss_is_a_pruned_trial(tmp_path, cache_dir, monkeypatch):
    # NaN that still flows through autograd, as a real diverging loss would
    monkeypatch.setattr("kdsearch.training.engine.kd_loss", lambda s, *a, **k: s.sum() * float("nan"))
    study = _run(tmp_path, cache_dir, [('width = { choices = [4, 8, 16] }',
                                        'width = { choices = [4, 8, 16] }\nalpha = 0.5')])
    assert [s for s, _ in _reasons(study)] == ["PRUNED", "PRUNED"]
    assert all(r.startswith("non-finite loss: loss became nan during epoch 1")
               for _, r in _reasons(study))


@pytest.mark.slow
@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    MemoryError(),
], ids=["cuda", "cpu-allocator", "python"])
def test_out_of_memory_is_a_pruned_trial(error, tmp_path, cache_dir, monkeypatch):
    def oom(*args, **kwargs):
        raise error

    monkeypatch.setattr("kdsearch.training.student.train", oom)
    study = _run(tmp_path, cache_dir)
    assert [s for s, _ in _reasons(study)] == ["PRUNED", "PRUNED"]
    assert all(r.startswith("out of memory on cpu with") for _, r in _reasons(study))


@pytest.mark.slow
def test_student_over_max_params_is_refused_before_training(tmp_path, cache_dir, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("an over-budget student was trained")

    monkeypatch.setattr("kdsearch.training.student.train", never)
    # 275 is the space's smallest student (1 x 4 units): the file loads, the two drawn are larger
    study = _run(tmp_path, cache_dir, [("[student.train]", "max_params = 275\n\n[student.train]")])
    assert [s for s, _ in _reasons(study)] == ["PRUNED", "PRUNED"]
    assert all(r.startswith("over budget: ") and "> max_params 275" in r for _, r in _reasons(study))


@pytest.mark.slow
def test_unexpected_error_is_recorded_then_raised(tmp_path, cache_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr("kdsearch.training.student.train", boom)
    with pytest.raises(ValueError, match="boom"):
        _run(tmp_path, cache_dir)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert _reasons(study) == [("FAIL", "error: ValueError: boom")]


@pytest.mark.slow
def test_corrupt_teacher_cache_is_rebuilt_with_a_warning(tmp_path, cache_dir):
    _run(tmp_path, cache_dir, n_trials=1)
    (logits,) = Path(cache_dir).glob("teachers/*/logits.pt")
    logits.write_bytes(b"\x00garbage")
    messages: list[str] = []
    path = tiny_study(tmp_path / "again" if (tmp_path / "again").mkdir() is None else tmp_path)
    spec = load_study(str(path))
    opts = Options(storage=f"sqlite:///{tmp_path / 'again' / 's.db'}", study_name="tiny",
                      n_trials=1, timeout=None, data_dir=None, cache_dir=cache_dir, device="cpu")
    study = run_study(spec, opts, log=messages.append)
    assert any("is corrupt (logits.pt does not match its checksum); rebuilding it" in m
               for m in messages), messages
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_missing_data_directory_is_one_line(tmp_path, capsys):
    study = tmp_path / "folder.toml"
    study.write_text(mlp_study_text(epochs=1, n_trials=1).replace(
        'dataset = "synthetic"', f'dataset = "imagefolder"\npath = "{tmp_path / "nowhere"}"'))
    code = cli.main(["run-study", str(study), "--storage", f"sqlite:///{tmp_path / 's.db'}",
                     "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"kdsearch: error: data directory {tmp_path / 'nowhere'} does not exist\n"
    assert not os.path.exists(tmp_path / "s.db")  # refused before touching the study


def test_image_folder_study_is_checked_once_its_images_are_read(tmp_path, capsys):
    """Its shape is unknown at load; the refusal comes after reading, before the teacher."""
    from PIL import Image

    for split, n in (("train", 6), ("test", 2)):
        for cls in ("a", "b", "c"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (8, 8), color=40 * i).save(tmp_path / "imgs" / split / cls / f"{i}.png")
    study = tmp_path / "folder.toml"
    study.write_text(mlp_study_text(epochs=1, n_trials=1).replace(
        'dataset = "synthetic"', f'dataset = "imagefolder"\npath = "{tmp_path / "imgs"}"').replace(
        "val_size = 100", "val_size = 3").replace("[student.train]", "max_params = 10\n[student.train]"))
    code = cli.main(["run-study", str(study), "--storage", f"sqlite:///{tmp_path / 's.db'}",
                     "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"kdsearch: error: {study}: key 'student.max_params': expected at least 275, "
                   "the smallest student of this space on 8x8 inputs of 3 classes, found 10\n")
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "c" / "teachers").exists()


# --- strict types: every key of every table, given a value of the wrong TOML type -------------

_TEACHERS = {"mlp": {"family": "mlp", "hidden": [8]},
             "cnn": {"family": "cnn", "convs": [{"channels": 4}]},
             "resnet": {"family": "resnet", "blocks": [1], "base_width": 4},
             "mobilenet": {"family": "mobilenet", "blocks": [1], "base_width": 4, "expansion": 2}}
_SHAPE = {"stages": 1, "blocks": 1, "base_width": 4, "width_growth": 2.0, "kernel": 3}
_STUDENTS = {"mlp": {"family": "mlp", "depth": 1, "width": 4},
             "resnet": {"family": "resnet", **_SHAPE},
             "mobilenet": {"family": "mobilenet", **_SHAPE, "expansion": 2},
             "choice": {"family": {"choices": ["resnet", "mobilenet"]}, "resnet": _SHAPE,
                        "mobilenet": {**_SHAPE, "expansion": 2}}}


def _study(teacher: str = "mlp", student: str = "cnn", file_teacher: bool = False) -> dict:
    doc = tomllib.loads(tiny_study_text())
    doc["teacher"] = dict(_TEACHERS[teacher], train=doc["teacher"]["train"])
    if file_teacher:
        doc["teacher"] = {"file": "t.onnx"}
    if student != "cnn":
        doc["student"] = dict(json.loads(json.dumps(_STUDENTS[student])), train=doc["student"]["train"])
    return doc


# (the table as the file names it, its model, a study that has it): every table of the schema
_TABLES = [
    ("", StudySpec, _study()), ("data", DataSpec, _study()), ("data.synthetic", SyntheticSpec, _study()),
    ("teacher", MLPArch, _study()), ("teacher", CNNArch, _study("cnn")),
    ("teacher.convs.0", ConvLayer, _study("cnn")), ("teacher", ResNetArch, _study("resnet")),
    ("teacher", MobileNetArch, _study("mobilenet")), ("teacher.train", TrainRecipe, _study()),
    ("teacher", TeacherFileSpec, _study(file_teacher=True)),
    ("teacher.input", TeacherInput, _study(file_teacher=True)),
    ("student", CNNSpace, _study()), ("student", MLPSpace, _study(student="mlp")),
    ("student", ResNetSpace, _study(student="resnet")),
    ("student", MobileNetSpace, _study(student="mobilenet")),
    ("student", FamilyChoiceSpace, _study(student="choice")),
    ("student.family", FamilyChoices, _study(student="choice")),
    ("student.resnet", ResNetShape, _study(student="choice")),
    ("student.mobilenet", MobileNetShape, _study(student="choice")),
    ("student", StudentSpec, _study()), ("student.train", StudentRecipe, _study()),
    ("search", SearchSpec, _study()), ("search.early_stopping", EarlyStoppingSpec, _study()),
    ("search.baselines.0", Baseline, _study()),
]
# keys the file never writes as such: the loader's own names for `[teacher]` and `[student]`
_NOT_KEYS = {(StudySpec, "teacher_file"), (StudySpec, "teacher_train"), (StudySpec, "source"),
             (StudentSpec, "space")}
_PARAMS = {IntRange: "a whole number, a range", FloatRange: "a number, a range",
           StrChoices: "or { choices = [..] } of them"}


def _wrong_values(annotation) -> list[tuple[str, object, str, str]]:
    """(key suffix, a value of the wrong type, what the error must expect, what it must find)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _wrong_values(args[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        param = next((words for kind, words in _PARAMS.items() if kind in members), None)
        if param is not None:  # a search parameter: a value, a range or choices
            wrong = [5] if StrChoices in members else ["2", True]
            return [("", w, param, repr(w)) for w in wrong]
        if len(members) == 1:
            return _wrong_values(members[0])
        if all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
            return [("", 5, "a table", "5")]  # a teacher of any family
        if set(members) == {int, float, str}:  # a baseline's value of a search parameter
            return [("", w, "a whole number, a number or a string", repr(w)) for w in (True, [1])]
        raise AssertionError(f"no wrong values for {annotation}")
    if origin is typing.Literal:
        return [("", 5 if isinstance(args[0], str) else "x", repr(args[0]), "5")]
    if origin is list:
        return [("", "x", "a list", "'x'"), *((".0" + k, [w], e, f) for k, w, e, f in
                                            _wrong_values(args[0]))]
    if origin is dict:
        return [("", "x", "a table", "'x'"), ("", [1], "a table", "[1]"),
                *((".k" + k, {"k": w}, e, f) for k, w, e, f in _wrong_values(args[1]))]
    words = {bool: ("true or false", ["true", 1]), int: ("a whole number", ["2", 2.5, True]),
             float: ("a number", ["0.5", True]), str: ("a string", [5, True])}
    if annotation in words:
        expected, wrong = words[annotation]
        return [("", w, expected, repr(w)) for w in wrong]
    if issubclass(annotation, BaseModel):
        return [("", 5, "a table", "5")]
    if annotation is typing.Any:
        return []
    raise AssertionError(f"no wrong values for {annotation}")



def _wrong_cases() -> list:
    cases = []
    for table, model, doc in _TABLES:
        for name, field in model.model_fields.items():
            if (model, name) in _NOT_KEYS:
                continue
            for suffix, value, expected, found in _wrong_values(field.annotation):
                if name == "family" and model is not FamilyChoices:  # what tells the tables apart
                    expected = "one of 'mlp', 'cnn', 'resnet', 'mobilenet'"
                key = ".".join(filter(None, [table, name])) + suffix
                cases.append(pytest.param(doc, table, name, value, key, expected, found,
                                          id=f"{key}={value!r}"))
    return cases


def _tables_of(model: type[BaseModel], seen: set) -> set:
    """Every model reachable from `model`: the tables a study file can hold."""
    if model in seen:
        return seen
    seen.add(model)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            a = stack.pop()
            stack += typing.get_args(a)
            if isinstance(a, type) and issubclass(a, BaseModel):
                _tables_of(a, seen)
    return seen


def test_the_strict_type_cases_cover_every_table_of_the_schema():
    # a parameter's range and choices: _PARAM_CASES below
    covered = {model for _, model, _ in _TABLES} | {IntRange, FloatRange, IntChoices, FloatChoices,
                                                    StrChoices}
    assert _tables_of(StudySpec, set()) - covered == set()
    assert len(_wrong_cases()) > 250


@pytest.mark.parametrize(("doc", "table", "name", "value", "key", "expected", "found"),
                         _wrong_cases())
def test_a_value_of_the_wrong_type_is_refused_naming_key_type_and_value(
        doc, table, name, value, key, expected, found):
    doc = json.loads(json.dumps(doc))
    parent = doc
    for part in filter(None, table.split(".")):
        if part.isdigit():
            parent = parent.setdefault(int(part), {}) if isinstance(parent, dict) else parent[int(part)]
        else:
            parent = parent.setdefault(part, [{"label": "b"}] if part == "baselines" else {})
    parent[name] = value
    with pytest.raises(StudyFileError) as err:
        parse_study(to_toml(doc), Path("typed.toml"))
    message = str(err.value)
    assert message.startswith(f"typed.toml: key '{key}': expected "), message
    assert expected in message and message.endswith(f", found {found}"), message


# the tables of a search parameter's range and choices, written in place of a value
_PARAM_CASES = [
    ("depth", {"low": "1", "high": 2}, "a whole number as the range's low", "'1'"),
    ("depth", {"low": 1, "high": 2.0}, "a whole number as the range's high", "2.0"),
    ("kernel", {"low": 3, "high": 5, "step": "2"}, "a whole step of at least 1", "'2'"),
    ("temperature", {"low": 1.0, "high": "2"}, "a number as the range's high", "'2'"),
    ("temperature", {"low": 1.0, "high": 2.0, "log": "true"}, "true or false for log", "'true'"),
    ("width", {"choices": [4, "8"]}, "whole numbers as choices", "'8' among them"),
    ("width", {"choices": "4"}, "a non-empty list of choices", "'4'"),
    ("alpha", {"choices": [0.5, True]}, "finite numbers as choices", "True among them"),
]


@pytest.mark.parametrize(("name", "value", "expected", "found"), _PARAM_CASES)
def test_a_range_or_choices_of_the_wrong_type_is_refused(name, value, expected, found):
    doc = _study()
    doc["student"][name] = value
    with pytest.raises(StudyFileError) as err:
        parse_study(to_toml(doc), Path("typed.toml"))
    assert str(err.value) == f"typed.toml: key 'student.{name}': expected {expected}, found {found}"


def test_a_shortcut_choice_of_the_wrong_type_is_refused():
    doc = _study(student="resnet")
    doc["student"]["shortcut"] = {"choices": ["A", 1]}
    with pytest.raises(StudyFileError, match="key 'student.shortcut': expected shortcuts: one of "
                       "'A', 'B', found 1 among the choices"):
        parse_study(to_toml(doc), Path("typed.toml"))


@pytest.mark.parametrize(("table", "name", "value"), [
    ("student.train", "lr", 1), ("student.train", "momentum", 0), ("teacher.train", "warmup_epochs", 1),
    ("teacher.train", "max_norm", 3), ("student", "max_latency_ms", 2), ("search", "timeout", 60),
    ("data.synthetic", "noise", 1), ("search.early_stopping", "quantile", 0),
])
def test_an_integer_where_a_float_belongs_is_still_taken(table, name, value):
    doc = _study()
    parent = doc
    for part in table.split("."):
        parent = parent.setdefault(part, {})
    parent[name] = value
    spec = parse_study(to_toml(doc), Path("typed.toml"))
    loaded = spec
    for part in table.replace("teacher.train", "teacher_train").split("."):
        loaded = getattr(loaded, part)
    assert getattr(loaded, name) == value and isinstance(getattr(loaded, name), float)


def test_an_integer_scale_is_still_taken_for_a_teacher_file():
    doc = _study(file_teacher=True)
    doc["teacher"]["input"] = {"scale": 1}
    spec = parse_study(to_toml(doc), Path("typed.toml"))
    assert spec.teacher_file.input.scale == 1.0
