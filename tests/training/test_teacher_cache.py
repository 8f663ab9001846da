import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import kdsearch.training.teacher_cache as tc
from kdsearch.spec import parse_study
from kdsearch.study.resolve import load_file_teacher, teacher_plan, views_settings
from kdsearch.training import teacher_store, teacher_views
from kdsearch.training.data import load_data
from tests.helpers import CNN_SEARCH_TABLES, cli_argv, cli_env, study_text, tiny_study, tiny_study_text

CPU = torch.device("cpu")


def _get(spec, data, cache, **kwargs):
    """The study's teacher as the study/ layer asks for it: its plan, the file loaded once."""
    plan = teacher_plan(spec)
    return tc.get_teacher(plan, data, cache, CPU, loaded=load_file_teacher(plan, data, CPU),
                          **kwargs)


@pytest.fixture
def setup(tmp_path):
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    return spec, load_data(spec.data), tmp_path / "cache"


def test_second_call_reuses_and_trains_nothing(setup, monkeypatch):
    spec, data, cache = setup
    logs = []
    first = _get(spec, data, cache, log=logs.append)
    assert not first.reused
    assert set(first.logits) == {"train", "val", "test"}
    assert first.logits["val"].shape == (len(data.val), data.num_classes)

    def fail(*a, **k):
        raise AssertionError("the cached teacher was retrained")

    monkeypatch.setattr(tc, "train_teacher", fail)
    second = _get(spec, data, cache, log=logs.append)
    assert second.reused
    assert any("reusing cached teacher" in m and "training nothing" in m for m in logs)
    assert torch.equal(second.logits["train"], first.logits["train"])
    # the reloaded weights reproduce the cached logits
    from kdsearch.training.engine import predict_logits

    assert torch.allclose(predict_logits(second.model, data.val, torch.device("cpu")),
                          first.logits["val"], atol=1e-5)


def test_key_depends_on_recipe_seed_and_data(setup):
    spec, data, _ = setup
    key = teacher_store.teacher_key(teacher_plan(spec), data)
    assert teacher_store.teacher_key(teacher_plan(spec.with_overrides(seed=1)), data) != key
    recipe = spec.teacher_train.model_copy(update={"epochs": 3})
    assert teacher_store.teacher_key(teacher_plan(spec.model_copy(update={"teacher_train": recipe})), data) != key
    other = load_data(spec.data.model_copy(update={"split_seed": 5}))
    assert teacher_store.teacher_key(teacher_plan(spec), other) != key


@pytest.mark.parametrize("victim", ["model.pt", "logits.pt", "meta.json"])
def test_corrupt_or_truncated_cache_is_rebuilt_with_a_warning(setup, victim):
    spec, data, cache = setup
    first = _get(spec, data, cache, log=lambda m: None)
    path = first.path / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    logs = []
    again = _get(spec, data, cache, log=logs.append)
    assert not again.reused
    assert any(m.startswith("warning: cached teacher") and "rebuilding" in m for m in logs)
    third = _get(spec, data, cache, log=logs.append)
    assert third.reused


def test_loads_with_weights_only(setup, monkeypatch):
    spec, data, cache = setup
    _get(spec, data, cache, log=lambda m: None)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tc.torch, "load", spy)
    _get(spec, data, cache, log=lambda m: None)
    assert calls and all(c is True for c in calls)


# --- resuming an interrupted teacher ------------------------------------------------------------


class _Stop(Exception):
    pass


class _StopAfter:
    """A `StopSignal` that stops training after `epochs` epochs, as a first Ctrl-C does."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.checks, self.deferred = epochs, 0, False

    @contextmanager
    def training(self, what, now=""):
        self.deferred = True
        yield

    def at_batch(self, done, per_epoch) -> None:
        pass

    def at_epoch(self) -> None:
        self.checks += 1
        if self.checks == self.epochs:
            raise _Stop

    def check(self) -> None:
        pass


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A teacher whose every epoch draws random numbers (order, flips, jitter, dropout), whose
    best epoch comes after the cut below, and the cache of it trained without a stop."""
    spec = parse_study(study_text(description="resume", **CNN_SEARCH_TABLES),
                       tmp_path_factory.mktemp("study") / "s.toml")
    recipe = spec.teacher_train.model_copy(
        update={"epochs": 3, "jitter": 1, "hflip": True, "lr_schedule": "cosine"})
    spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"dropout": 0.2}),
                                   "teacher_train": recipe})
    data = load_data(spec.data)
    whole = _get(spec, data, tmp_path_factory.mktemp("whole"), log=lambda m: None)
    curve = whole.record.curve
    assert curve.index(max(curve)) > 0, curve  # so the resumed run must find the best itself
    return spec, data, whole


def _partial(spec, data, cache):
    return cache / "teachers" / f"{teacher_store.teacher_key(teacher_plan(spec), data)}.partial.pt"


def _assert_same_teacher(a, b):
    b_state = b.model.state_dict()
    for name, t in a.model.state_dict().items():
        assert torch.equal(t, b_state[name]), name
    for split in teacher_store.SPLITS:
        assert torch.equal(a.logits[split], b.logits[split]), split
    assert a.record.curve == b.record.curve and a.record.epochs == b.record.epochs


@pytest.mark.slow
def test_interrupted_teacher_resumes_and_ends_bit_identical(resumable, tmp_path):
    spec, data, whole = resumable
    cache, logs = tmp_path / "cache", []
    stop = _StopAfter(1)
    with pytest.raises(_Stop):
        _get(spec, data, cache, log=logs.append, stop=stop)
    assert stop.deferred
    partial = _partial(spec, data, cache)
    assert torch.load(partial, weights_only=True)["epoch"] == 1
    assert not (cache / "teachers" / teacher_store.teacher_key(teacher_plan(spec), data)).exists()
    assert any("teacher stopped: epochs 1-1 of 3 are checkpointed" in m for m in logs)
    assert not list(partial.parent.glob("*.tmp*"))  # written through a temporary file

    logs.clear()
    resumed = _get(spec, data, cache, log=logs.append)
    assert any(m.startswith("resuming teacher from epoch 1 of 3") for m in logs), logs
    assert not resumed.reused
    _assert_same_teacher(whole, resumed)
    assert not partial.exists()  # the finished teacher needs no checkpoint
    reloaded = _get(spec, data, cache, log=logs.append)
    assert reloaded.reused
    _assert_same_teacher(whole, reloaded)


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(resumable, tmp_path,
                                                                  monkeypatch):
    """A Ctrl-C without a `StopSignal` (the `teacher` command) may land mid-write."""
    spec, data, whole = resumable
    cache, real_save, calls = tmp_path / "cache", torch.save, []

    def save_then_die_on_the_second(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(tc.torch, "save", save_then_die_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        _get(spec, data, cache, log=lambda m: None)
    monkeypatch.undo()
    partial = _partial(spec, data, cache)
    assert torch.load(partial, weights_only=True)["epoch"] == 1
    assert not list(partial.parent.glob("*.tmp*"))
    logs = []
    resumed = _get(spec, data, cache, log=logs.append)
    assert any(m.startswith("resuming teacher from epoch 1 of 3") for m in logs), logs
    _assert_same_teacher(whole, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage", "other-recipe", "other-weights"])
def test_a_bad_partial_checkpoint_warns_once_and_starts_over(resumable, tmp_path, damage):
    spec, data, whole = resumable
    cache = tmp_path / "cache"
    with pytest.raises(_Stop):
        _get(spec, data, cache, log=lambda m: None, stop=_StopAfter(2))
    partial = _partial(spec, data, cache)
    if damage == "truncated":
        partial.write_bytes(partial.read_bytes()[: partial.stat().st_size // 2])
    elif damage == "garbage":
        partial.write_bytes(b"not a checkpoint\n" * 10)
    else:  # readable, but saved for another recipe, or weights of another architecture
        state = torch.load(partial, weights_only=True)
        if damage == "other-recipe":
            state["recipe"] = {**state["recipe"], "lr": 1.0}
        else:
            state["model"] = {k: v[:1] for k, v in state["model"].items()}
        torch.save(state, partial)
    logs = []
    again = _get(spec, data, cache, log=logs.append)
    warnings = [m for m in logs if m.startswith("warning: teacher checkpoint")]
    assert len(warnings) == 1 and "\n" not in warnings[0], logs
    assert "training the teacher from the start" in warnings[0]
    if damage.startswith("other"):
        assert "does not fit this teacher (" in warnings[0]
    if damage != "other-weights":  # found to misfit only when the weights go in
        assert not any(m.startswith("resuming teacher") for m in logs)
    _assert_same_teacher(whole, again)
    assert not partial.exists()


@pytest.mark.slow
def test_ctrl_c_during_the_teacher_stops_at_an_epoch_and_the_rerun_resumes(tmp_path):
    """The real path: `run-study`, SIGINT while the teacher trains, the same command again."""
    study = tiny_study(tmp_path, epochs=1, n_trials=1)
    study.write_text(study.read_text().replace("[teacher.train]\nepochs = 1",
                                               "[teacher.train]\nepochs = 300"))
    cache = tmp_path / "cache"
    argv = cli_argv("run-study", study, "--storage", f"sqlite:///{tmp_path / 's.db'}",
                    "--cache-dir", cache)
    proc = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob("teachers/*.partial.pt")):  # at least one epoch checkpointed
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)  # a hang guard only
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "kdsearch: stopped by SIGINT" in err
    [partial] = cache.glob("teachers/*.partial.pt")
    done = torch.load(partial, weights_only=True)["epoch"]
    assert 1 <= done < 300
    assert f"teacher stopped: epochs 1-{done} of 300 are checkpointed" in err  # at a boundary

    again = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming teacher from epoch {done} of 300" in again.stderr
    assert not partial.exists()
    assert len([p for p in cache.glob("teachers/*") if p.is_dir()]) == 1


# --- a teacher from a file, and the views' logits -------------------------------------------------


def _file_study(tmp_path, student_train: str = "", teacher_input: str = "mean = [0.5]"):
    """A tiny study whose teacher is the TorchScript file `t.pt` next to it."""
    text = tiny_study_text(teacher='file = "t.pt"', teacher_train=None, teacher_input=teacher_input)
    text = text.replace("[student.train]\n", f"[student.train]\n{student_train}\n")
    (tmp_path / "s.toml").write_text(text)
    spec = parse_study(text, tmp_path / "s.toml")
    return spec, load_data(spec.data)


def _fit(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    """A few full-batch steps: a teacher well above chance, its soft targets still soft."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def _file_setup(tmp_path, student_train: str = ""):
    """A tiny study whose teacher is a TorchScript file next to it, with the model it holds
    (trained on what kdsearch feeds it: pixels / 255 - 0.5)."""
    spec, data = _file_study(tmp_path, student_train)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    _fit(net, data.train.x.float() / 255.0 - 0.5, data.train.y)
    torch.jit.save(torch.jit.script(net), str(tmp_path / "t.pt"))
    return spec, data, net


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_a_teacher_file_is_measured_cached_and_keyed_by_its_content(tmp_path):
    spec, data, net = _file_setup(tmp_path)
    cache, logs = tmp_path / "cache", []
    first = _get(spec, data, cache, log=logs.append)
    with torch.no_grad():
        want = net(data.val.x.float() / 255.0 - 0.5)
    torch.testing.assert_close(first.logits["val"], want)
    assert first.model is None and first.record.kind == "file" and first.record.params == 64 * 3 + 3
    assert first.record.val_accuracy == float((want.argmax(1) == data.val.y).float().mean())
    again = _get(spec, data, cache, log=logs.append)
    assert again.reused and torch.equal(again.logits["test"], first.logits["test"])
    key = teacher_store.teacher_key(teacher_plan(spec), data)
    with torch.no_grad():
        net[1].weight.add_(1.0)
    torch.jit.save(torch.jit.script(net), str(tmp_path / "t.pt"))  # re-exported, same name
    assert teacher_store.teacher_key(teacher_plan(spec), data) != key


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_a_flip_averaged_teacher_file_is_measured_and_cached_apart(tmp_path):
    spec, data, net = _file_setup(tmp_path)
    text = (tmp_path / "s.toml").read_text().replace('file = "t.pt"',
                                                    'file = "t.pt"\nflip_average = true')
    flipped = parse_study(text, tmp_path / "s.toml")
    cache, logs = tmp_path / "cache", []
    plain = _get(spec, data, cache, log=logs.append)
    teacher = _get(flipped, data, cache, log=logs.append)
    assert not teacher.reused and teacher.record.key != plain.record.key
    assert (plain.record.description, teacher.record.description) == (
        "torchscript t.pt", "torchscript t.pt, flip-averaged")
    x = data.val.x.float() / 255.0 - 0.5
    with torch.no_grad():
        want = (net(x) + net(torch.flip(x, dims=(3,)))) / 2
    torch.testing.assert_close(teacher.logits["val"], want)
    assert teacher.record.val_accuracy == float((want.argmax(1) == data.val.y).float().mean())
    assert "flip-averaged" in teacher.record.description
    assert any("each image and its mirror" in line for line in logs)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_views_logits_are_the_teachers_on_each_view_cached_by_views(tmp_path, monkeypatch,
                                                                    capsys):
    from kdsearch.training.views import render_views

    spec, data, net = _file_setup(tmp_path, "views = 3\nhflip = true\ntranslate = 1")
    cache = tmp_path / "cache"
    loaded = load_file_teacher(teacher_plan(spec), data, CPU)
    teacher = teacher_views.attach_views(_get(spec, data, cache, log=lambda m: None),
                                         views_settings(spec), data, cache, CPU,
                                         log=lambda m: None, loaded=loaded)
    # Minutes on CIFAR-10: a bar counts every image of every view, to the last.
    assert "teacher on 3 views: 100%" in capsys.readouterr().err
    for split in ("train", "val"):
        v = teacher.views[split]
        assert v.logits.shape == (3, len(data.split(split)), 3)
        torch.testing.assert_close(v.logits[0], teacher.logits[split])  # view 0: the image
        idx = torch.arange(len(data.split(split)))
        with torch.no_grad():
            shown = render_views(data.split(split).x, v.table, idx, torch.full_like(idx, 2))
            torch.testing.assert_close(v.logits[2], net(shown.float() / 255.0 - 0.5))

    monkeypatch.setattr(teacher_views, "view_logits",
                        lambda *a, **k: pytest.fail("views recomputed"))
    again = teacher_views.attach_views(_get(spec, data, cache, log=lambda m: None),
                                       views_settings(spec), data, cache, CPU, log=lambda m: None)
    assert torch.equal(again.views["train"].logits, teacher.views["train"].logits)
    other = spec.model_copy(update={"seed": 1})
    assert (teacher_store.views_key(teacher.record.key, views_settings(other))
            != teacher_store.views_key(teacher.record.key, views_settings(spec)))


# --- a teacher file that cannot be right as it is fed ----------------------------------------


class _Rescaling(torch.nn.Module):
    """Keras's `Rescaling(1 / 255)` and `Normalization` layers: the model takes raw 0..255
    pixels and scales and centres them itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 255.0 - 0.5) / 0.25


def _rescaling_teacher(tmp_path, teacher_input: str):
    """A model that rescales its own input (trained on raw pixels), saved as `t.pt`."""
    spec, data = _file_study(tmp_path, teacher_input=teacher_input)
    torch.manual_seed(0)
    net = torch.nn.Sequential(_Rescaling(), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    _fit(net, data.train.x.float(), data.train.y)
    torch.jit.save(torch.jit.script(net), str(tmp_path / "t.pt"))
    return spec, data


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_a_teacher_file_near_chance_is_refused_naming_the_input_settings(tmp_path):
    """The default scale = 255 on a model that rescales itself divides twice: near chance."""
    from kdsearch.errors import TeacherFileError

    spec, data = _rescaling_teacher(tmp_path, "layout = \"NCHW\"")  # every default in force
    with pytest.raises(TeacherFileError) as refused:
        _get(spec, data, tmp_path / "cache", log=lambda m: None)
    line = str(refused.value)
    assert "\n" not in line and str(tmp_path / "t.pt") in line
    assert "near chance (0.3333 for 3 classes)" in line
    assert "now scale = 255, mean = none (0), std = none (1), layout = \"NCHW\"" in line
    assert "applied exactly once" in line and "wants scale = 1" in line
    assert not list((tmp_path / "cache" / "teachers").glob("*/logits.pt"))  # nothing cached

    # Declared as the model wants it (scale = 1), the same file is a good teacher.
    spec, data = _file_study(tmp_path, teacher_input="scale = 1.0")
    logs = []
    teacher = _get(spec, data, tmp_path / "cache", log=logs.append)
    assert teacher.record.val_accuracy >= 0.5
    assert not any(m.startswith("warning") for m in logs), logs


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_a_teacher_file_with_one_hot_soft_targets_is_named_in_a_warning(tmp_path):
    """scale = 1 on a model that expects [0, 1]: right answers, 255x the logits, no soft
    targets left at the study's lowest temperature (1.0 in the tiny study)."""
    spec, data, net = _file_setup(tmp_path)
    loud, _ = _file_study(tmp_path, teacher_input="mean = [0.5]\nscale = 1.0")
    loud = loud.model_copy(update={"teacher_file": loud.teacher_file.model_copy(
        update={"input": loud.teacher_file.input.model_copy(update={"mean": [127.5]})})})
    logs = []
    teacher = _get(loud, data, tmp_path / "cache", log=logs.append)  # not refused: accurate
    assert teacher.record.val_accuracy >= 0.5
    [warning] = [m for m in logs if m.startswith("warning")]
    assert "\n" not in warning and "t.pt" in warning
    assert "soft targets carry almost nothing" in warning and "at T = 1" in warning
    assert "now scale = 1, mean = [127.5]" in warning
    again = []
    _get(loud, data, tmp_path / "cache", log=again.append)  # a cached teacher: named again
    assert any(m == warning for m in again)

    fine = []
    _get(spec, data, tmp_path / "cache", log=fine.append)  # scale = 255 as trained: quiet
    assert not any(m.startswith("warning") for m in fine), fine


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_the_teacher_command_refuses_a_teacher_near_chance_in_one_line(tmp_path, capsys):
    from kdsearch import cli

    _rescaling_teacher(tmp_path, "mean = [0.5]")
    code = cli.main(["teacher", str(tmp_path / "s.toml"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("kdsearch: error:") and "near chance" in line and "scale" in line
