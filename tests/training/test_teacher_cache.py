import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import kdsearch.training.teacher_cache as tc
from kdsearch.spec import parse_study
from kdsearch.training.data import load_data
from tests.helpers import TINY_SEARCH, cli_argv, cli_env, tiny_study, tiny_study_text

CPU = torch.device("cpu")


@pytest.fixture
def setup(tmp_path):
    spec = parse_study(tiny_study_text(), tmp_path / "tiny.toml")
    return spec, load_data(spec.data), tmp_path / "cache"


def test_second_call_reuses_and_trains_nothing(setup, monkeypatch):
    spec, data, cache = setup
    logs = []
    first = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=logs.append)
    assert not first.reused
    assert set(first.logits) == {"train", "val", "test"}
    assert first.logits["val"].shape == (len(data.val), data.num_classes)

    def fail(*a, **k):
        raise AssertionError("the cached teacher was retrained")

    monkeypatch.setattr(tc, "train_teacher", fail)
    second = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=logs.append)
    assert second.reused
    assert any("reusing cached teacher" in m and "training nothing" in m for m in logs)
    assert torch.equal(second.logits["train"], first.logits["train"])
    # the reloaded weights reproduce the cached logits
    from kdsearch.training.engine import predict_logits

    assert torch.allclose(predict_logits(second.model, data.val, torch.device("cpu")),
                          first.logits["val"], atol=1e-5)


def test_key_depends_on_recipe_seed_and_data(setup):
    spec, data, _ = setup
    key = tc.teacher_key(spec, data)
    assert tc.teacher_key(spec.with_overrides(seed=1), data) != key
    recipe = spec.teacher_train.model_copy(update={"epochs": 3})
    assert tc.teacher_key(spec.model_copy(update={"teacher_train": recipe}), data) != key
    other = load_data(spec.data.model_copy(update={"split_seed": 5}))
    assert tc.teacher_key(spec, other) != key


@pytest.mark.parametrize("victim", ["model.pt", "logits.pt", "meta.json"])
def test_corrupt_or_truncated_cache_is_rebuilt_with_a_warning(setup, victim):
    spec, data, cache = setup
    first = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=lambda m: None)
    path = first.path / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    logs = []
    again = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=logs.append)
    assert not again.reused
    assert any(m.startswith("warning: cached teacher") and "rebuilding" in m for m in logs)
    third = tc.get_teacher(spec, data, cache, torch.device("cpu"), log=logs.append)
    assert third.reused


def test_loads_with_weights_only(setup, monkeypatch):
    spec, data, cache = setup
    tc.get_teacher(spec, data, cache, torch.device("cpu"), log=lambda m: None)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tc.torch, "load", spy)
    tc.get_teacher(spec, data, cache, torch.device("cpu"), log=lambda m: None)
    assert calls and all(c is True for c in calls)


# --- resuming an interrupted teacher ------------------------------------------------------------


class _Stop(Exception):
    pass


class _StopAfter:
    """A `StopSignal` that stops training after `epochs` epochs, as a deferred Ctrl-C does."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.checks, self.deferred = epochs, 0, False

    @contextmanager
    def deferring(self):
        self.deferred = True
        yield

    def check(self) -> None:
        self.checks += 1
        if self.checks == self.epochs:
            raise _Stop


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A teacher whose every epoch draws random numbers (order, flips, jitter, dropout), whose
    best epoch comes after the cut below, and the cache of it trained without a stop."""
    text = f'description = "resume"\nseed = 0\n{TINY_SEARCH}'
    spec = parse_study(text, tmp_path_factory.mktemp("study") / "s.toml")
    recipe = spec.teacher_train.model_copy(
        update={"epochs": 3, "jitter": 1, "hflip": True, "lr_schedule": "cosine"})
    spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"dropout": 0.2}),
                                   "teacher_train": recipe})
    data = load_data(spec.data)
    whole = tc.get_teacher(spec, data, tmp_path_factory.mktemp("whole"), CPU, log=lambda m: None)
    curve = whole.record.curve
    assert curve.index(max(curve)) > 0, curve  # so the resumed run must find the best itself
    return spec, data, whole


def _partial(spec, data, cache):
    return cache / "teachers" / f"{tc.teacher_key(spec, data)}.partial.pt"


def _assert_same_teacher(a, b):
    b_state = b.model.state_dict()
    for name, t in a.model.state_dict().items():
        assert torch.equal(t, b_state[name]), name
    for split in tc.SPLITS:
        assert torch.equal(a.logits[split], b.logits[split]), split
    assert a.record.curve == b.record.curve and a.record.epochs == b.record.epochs


@pytest.mark.slow
def test_interrupted_teacher_resumes_and_ends_bit_identical(resumable, tmp_path):
    spec, data, whole = resumable
    cache, logs = tmp_path / "cache", []
    stop = _StopAfter(1)
    with pytest.raises(_Stop):
        tc.get_teacher(spec, data, cache, CPU, log=logs.append, stop=stop)
    assert stop.deferred
    partial = _partial(spec, data, cache)
    assert torch.load(partial, weights_only=True)["epoch"] == 1
    assert not (cache / "teachers" / tc.teacher_key(spec, data)).exists()
    assert any("teacher stopped: epochs 1-1 of 3 are checkpointed" in m for m in logs)
    assert not list(partial.parent.glob("*.tmp*"))  # written through a temporary file

    logs.clear()
    resumed = tc.get_teacher(spec, data, cache, CPU, log=logs.append)
    assert any(m.startswith("resuming teacher from epoch 1 of 3") for m in logs), logs
    assert not resumed.reused
    _assert_same_teacher(whole, resumed)
    assert not partial.exists()  # the finished teacher needs no checkpoint
    reloaded = tc.get_teacher(spec, data, cache, CPU, log=logs.append)
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
        tc.get_teacher(spec, data, cache, CPU, log=lambda m: None)
    monkeypatch.undo()
    partial = _partial(spec, data, cache)
    assert torch.load(partial, weights_only=True)["epoch"] == 1
    assert not list(partial.parent.glob("*.tmp*"))
    logs = []
    resumed = tc.get_teacher(spec, data, cache, CPU, log=logs.append)
    assert any(m.startswith("resuming teacher from epoch 1 of 3") for m in logs), logs
    _assert_same_teacher(whole, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage", "other-recipe", "other-weights"])
def test_a_bad_partial_checkpoint_warns_once_and_starts_over(resumable, tmp_path, damage):
    spec, data, whole = resumable
    cache = tmp_path / "cache"
    with pytest.raises(_Stop):
        tc.get_teacher(spec, data, cache, CPU, log=lambda m: None, stop=_StopAfter(2))
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
    again = tc.get_teacher(spec, data, cache, CPU, log=logs.append)
    warnings = [m for m in logs if m.startswith("warning: teacher checkpoint")]
    assert len(warnings) == 1 and "\n" not in warnings[0], logs
    assert "training the teacher from the start" in warnings[0]
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
    _, err = proc.communicate(timeout=60)
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


def _file_setup(tmp_path, student_train: str = ""):
    """A tiny study whose teacher is a TorchScript file next to it, with the model it holds."""
    text = tiny_study_text().replace('[teacher]\nfamily = "mlp"\nhidden = [32]',
                                     '[teacher]\nfile = "t.pt"\n[teacher.input]\nmean = [0.5]')
    text = text.replace("[teacher.train]\nepochs = 2\nbatch_size = 64\nlr = 0.003\n", "")
    text = text.replace("[student.train]\n", f"[student.train]\n{student_train}\n")
    spec = parse_study(text, tmp_path / "s.toml")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    torch.jit.save(torch.jit.script(net), str(tmp_path / "t.pt"))
    return spec, load_data(spec.data), net


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_a_teacher_file_is_measured_cached_and_keyed_by_its_content(tmp_path):
    spec, data, net = _file_setup(tmp_path)
    cache, logs = tmp_path / "cache", []
    first = tc.get_teacher(spec, data, cache, CPU, log=logs.append)
    with torch.no_grad():
        want = net(data.val.x.float() / 255.0 - 0.5)
    torch.testing.assert_close(first.logits["val"], want)
    assert first.model is None and first.record.kind == "file" and first.record.params == 64 * 3 + 3
    assert first.record.val_accuracy == float((want.argmax(1) == data.val.y).float().mean())
    again = tc.get_teacher(spec, data, cache, CPU, log=logs.append)
    assert again.reused and torch.equal(again.logits["test"], first.logits["test"])
    key = tc.teacher_key(spec, data)
    with torch.no_grad():
        net[1].weight.add_(1.0)
    torch.jit.save(torch.jit.script(net), str(tmp_path / "t.pt"))  # re-exported, same name
    assert tc.teacher_key(spec, data) != key


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_views_logits_are_the_teachers_on_each_view_cached_by_views(tmp_path, monkeypatch,
                                                                    capsys):
    from kdsearch.training.views import render_views

    spec, data, net = _file_setup(tmp_path, "views = 3\nhflip = true\ntranslate = 1")
    cache = tmp_path / "cache"
    teacher = tc.attach_views(tc.get_teacher(spec, data, cache, CPU, log=lambda m: None),
                              spec, data, cache, CPU, log=lambda m: None)
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

    monkeypatch.setattr(tc, "view_logits", lambda *a, **k: pytest.fail("views recomputed"))
    again = tc.attach_views(tc.get_teacher(spec, data, cache, CPU, log=lambda m: None),
                            spec, data, cache, CPU, log=lambda m: None)
    assert torch.equal(again.views["train"].logits, teacher.views["train"].logits)
    other = spec.model_copy(update={"seed": 1})
    assert tc.views_key(teacher.record.key, other) != tc.views_key(teacher.record.key, spec)
