"""The training engine: its speed paths must not change what it computes or returns."""

from __future__ import annotations

import math

import pytest
import torch

from kdsearch.architecture import CNNArch, ConvLayer, MLPArch, ResNetArch
from kdsearch.errors import NonFiniteLossError
from kdsearch.spec import DataSpec, SyntheticSpec, TrainRecipe
from kdsearch.training.data import load_data
from kdsearch.training.engine import (
    KD,
    Hooks,
    ResumeError,
    TrainSettings,
    _prenormalise,
    accuracy,
    lr_factor,
    param_groups,
    predict_logits,
    train,
    train_threads,
)
from kdsearch.training.models import build_model
from kdsearch.training.optim import make_optimizer
from kdsearch.training.train_state import load_state, save_state

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_data(
        DataSpec(
            dataset="synthetic",
            val_size=100,
            synthetic=SyntheticSpec(
                n_train=500, n_test=100, channels=1, height=8, width=8, num_classes=3, noise=1.0
            ),
        )
    )


def _model(data, arch):
    torch.manual_seed(0)
    return build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)


CNN = CNNArch(
    convs=[ConvLayer(channels=4, pool=True), ConvLayer(channels=8, pool=True)], dense=[16]
)


@pytest.mark.slow
def test_cnn_learns_and_comes_back_in_the_default_layout(data):
    model = _model(data, CNN)
    recipe = TrainRecipe(epochs=3, batch_size=50, lr=0.01, max_norm=3.0)
    result = train(model, data, TrainSettings(recipe, CPU, seed=1))
    assert result.val_accuracy > 0.6  # 3 classes: chance is 0.33
    assert result.val_accuracy == pytest.approx(accuracy(model, data.val, CPU))
    for name, t in model.state_dict().items():
        assert t.is_contiguous(), name  # channels_last is an internal detail of training
    for m in model.modules():  # max_norm applied through the channels_last weights
        if isinstance(m, torch.nn.Conv2d):
            assert m.weight.reshape(m.weight.shape[0], -1).norm(dim=1).max() <= 3.0 + 1e-4


def test_prenormalised_training_trains_the_model_itself(data):
    model = _model(data, MLPArch(hidden=[16]))
    body, xf = _prenormalise(model, data.train.x)
    assert xf.dtype == torch.float32
    assert torch.allclose(body(xf[:10]), model(data.train.x[:10]), atol=1e-5)
    before = model[2].weight.detach().clone()
    train(model, data, TrainSettings(TrainRecipe(epochs=1, batch_size=50), CPU))
    assert not torch.equal(before, model[2].weight)


def test_prenormalising_matches_per_batch_normalising(data, monkeypatch):
    """Same seed, same batches: the two input paths give the same weights (to float error)."""
    recipe = TrainRecipe(epochs=2, batch_size=50)
    fast = _model(data, MLPArch(hidden=[16]))
    train(fast, data, TrainSettings(recipe, CPU, seed=3))
    monkeypatch.setattr("kdsearch.training.engine.PRENORM_MAX_BYTES", 0)
    slow = _model(data, MLPArch(hidden=[16]))
    train(slow, data, TrainSettings(recipe, CPU, seed=3))
    for a, b in zip(fast.parameters(), slow.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_distillation_from_cached_logits_and_augmented_live_teacher(data):
    teacher = _model(data, MLPArch(hidden=[32]))
    logits = teacher(data.train.x).detach()
    student = _model(data, CNN)
    kd = KD(temperature=4.0, alpha=0.7)
    r1 = train(student, data, TrainSettings(TrainRecipe(epochs=1, batch_size=50), CPU, kd=kd,
                                            teacher_logits=logits))
    aug = TrainRecipe(epochs=1, batch_size=50, jitter=1, hflip=True)
    r2 = train(_model(data, CNN), data, TrainSettings(aug, CPU, kd=kd, teacher=teacher))
    assert r1.epochs_run == r2.epochs_run == 1
    with pytest.raises(ValueError, match="teacher model"):
        train(_model(data, CNN), data, TrainSettings(aug, CPU, kd=kd, teacher_logits=logits))


def test_non_finite_loss_is_reported(data):
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train(_model(data, MLPArch(hidden=[8])), data, TrainSettings(
            TrainRecipe(epochs=2, lr=10.0), CPU, kd=KD(alpha=0.5),
            teacher_logits=torch.full((len(data.train), 3), float("nan"))))


@pytest.mark.slow
def test_on_epoch_can_stop_training(data):
    class Stop(Exception):
        pass

    seen = []

    def hook(epoch, acc):
        seen.append(epoch)
        raise Stop

    model = _model(data, CNN)
    with pytest.raises(Stop):
        train(model, data, TrainSettings(TrainRecipe(epochs=5, batch_size=100), CPU,
                                         hooks=Hooks(on_epoch=hook)))
    assert seen == [1]
    assert all(t.is_contiguous() for t in model.state_dict().values())


def test_optimizers_are_fused_where_supported():
    model = torch.nn.Linear(3, 2)
    for name in ("adam", "sgd"):
        opt = make_optimizer(model, TrainRecipe(optimizer=name))
        assert opt.defaults.get("fused") in (True, None)  # None: this torch has no fused CPU path


def test_small_mlps_train_on_one_thread_and_the_setting_comes_back(data, monkeypatch):
    big = build_model(MLPArch(hidden=[1200, 1200]), (1, 28, 28), 10)
    small = _model(data, MLPArch(hidden=[16]))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert train_threads(small, 128, CPU) == 1
    assert train_threads(big, 128, CPU) == 4  # 306M multiply-accumulates a batch
    assert train_threads(_model(data, CNN), 128, CPU) == 4  # convolutions split well
    assert train_threads(small, 128, CPU, live_teacher=True) == 4
    assert train_threads(small, 128, torch.device("meta")) == 4  # only the CPU is limited
    monkeypatch.undo()

    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        hooks = Hooks(progress=lambda *_: seen.append(torch.get_num_threads()))
        train(small, data, TrainSettings(TrainRecipe(epochs=1, batch_size=50), CPU, hooks=hooks))
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_input_dropout_drops_pixels_in_training_only():
    torch.manual_seed(0)
    model = build_model(MLPArch(hidden=[8], input_dropout=0.5), (1, 8, 8), 3)
    assert isinstance(model[1], torch.nn.Dropout) and model[1].p == 0.5
    x = torch.full((4, 1, 8, 8), 200, dtype=torch.uint8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


class _Stop(Exception):
    pass


def _saved(state: dict, path) -> dict:
    """A state through the disk and back, loaded the only way the cache loads one."""
    torch.save(state, path)
    return torch.load(path, weights_only=True, map_location="cpu")


RESUMABLE = [  # every random draw of the loop: batch order, flips, jitter, dropout
    (CNNArch(convs=[ConvLayer(channels=4, pool=True)], dense=[16], dropout=0.2),
     TrainRecipe(epochs=4, batch_size=64, lr=0.01, lr_schedule="cosine", jitter=1, hflip=True)),
    (MLPArch(hidden=[32], dropout=0.3, input_dropout=0.1),
     TrainRecipe(epochs=4, batch_size=64, lr=0.05, optimizer="sgd", max_norm=2.0)),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,recipe", RESUMABLE, ids=["cnn-adam-aug", "mlp-sgd"])
def test_training_resumed_after_an_epoch_ends_bit_identical(data, arch, recipe, tmp_path):
    # The last epoch's weights, not the best's: the best one may be saved before the cut.
    whole = _model(data, arch)
    full = train(whole, data, TrainSettings(recipe, CPU, seed=3))

    states = []

    def stop_after_2(epoch, val_acc):
        if epoch == 2:
            raise _Stop

    cut = _model(data, arch)
    with pytest.raises(_Stop):
        train(cut, data, TrainSettings(recipe, CPU, seed=3, hooks=Hooks(
            on_epoch=stop_after_2,
            checkpoint=lambda s: states.append(_saved(s, tmp_path / f"{s['epoch']}.pt")))))
    assert [s["epoch"] for s in states] == [1, 2]  # saved before on_epoch could stop it
    torch.manual_seed(123)  # whatever the global generator did meanwhile is overwritten
    resumed_model = _model(data, arch)  # fresh weights: the state replaces them
    resumed = train(resumed_model, data, TrainSettings(recipe, CPU, seed=3, resume=states[-1]))

    assert resumed.curve == full.curve and resumed.epochs_run == recipe.epochs
    assert resumed.val_accuracy == full.val_accuracy
    resumed_state = resumed_model.state_dict()
    for name, t in whole.state_dict().items():
        assert torch.equal(t, resumed_state[name]), name
    assert torch.equal(predict_logits(whole, data.test, CPU),
                       predict_logits(resumed_model, data.test, CPU))


def test_a_state_from_another_recipe_or_format_is_refused(data):
    arch, recipe = RESUMABLE[1]
    states = []
    train(_model(data, arch), data, TrainSettings(recipe, CPU, seed=3,
                                                  hooks=Hooks(checkpoint=states.append)))
    other = recipe.model_copy(update={"lr": 0.01})
    with pytest.raises(ResumeError, match="another recipe"):
        train(_model(data, arch), data, TrainSettings(other, CPU, seed=3, resume=states[0]))
    with pytest.raises(ResumeError, match="format"):
        train(_model(data, arch), data,
              TrainSettings(recipe, CPU, seed=3, resume={**states[0], "format": 0}))
    wider = MLPArch(hidden=[64], dropout=0.3, input_dropout=0.1)
    with pytest.raises(ResumeError, match="RuntimeError"):
        train(_model(data, wider), data, TrainSettings(recipe, CPU, seed=3, resume=states[0]))


def test_a_saved_state_loads_only_for_its_own_run(data, tmp_path):
    """`load_state`: what `compress` and the teacher resume from, or why not, in one line."""
    arch, recipe = RESUMABLE[1]
    states = []
    train(_model(data, arch), data, TrainSettings(recipe, CPU, seed=3,
                                                  hooks=Hooks(checkpoint=states.append)))
    path, owner = tmp_path / "run.partial.pt", {"trial": 4, "temperature": 2.5}
    assert load_state(path, recipe, 3, owner) == (None, None)  # nothing saved yet
    save_state(path, {**states[1], "owner": owner})
    assert not list(tmp_path.glob("*.tmp*"))
    state, problem = load_state(path, recipe, 3, owner)
    assert problem is None and state["epoch"] == 2 and state["owner"] == owner
    for args, why in (((recipe, 4, owner), "another recipe or seed"),
                      ((recipe, 3, {**owner, "trial": 5}), "trial 4, not 5"),
                      ((recipe.model_copy(update={"lr": 0.5}), 3, owner), "another recipe")):
        state, problem = load_state(path, *args)
        assert state is None and why in problem and "\n" not in problem
    path.write_bytes(b"not a state")
    state, problem = load_state(path, recipe, 3, owner)
    assert state is None and problem.startswith("is unreadable (")
    torch.save([1, 2], path)
    assert load_state(path, recipe, 3, owner)[1] == "does not fit (not a training state (a list))"


def test_schedules_warm_up_then_decay_and_cosine_is_unchanged_without_warm_up():
    total = 100
    # cosine without warm-up: the formula every existing study was trained with
    for step in (0, 1, 37, 99, 100, 120):
        old = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        assert lr_factor(step, total, 0, "cosine") == pytest.approx(old)
    assert [lr_factor(s, total, 4, "onecycle") for s in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert lr_factor(4, total, 4, "onecycle") == 1.0  # the peak, then linearly down
    assert lr_factor(52, total, 4, "onecycle") == pytest.approx(0.5)
    assert lr_factor(total, total, 4, "onecycle") == 0.0
    assert lr_factor(4, total, 4, "cosine") == 1.0 and lr_factor(3, total, 4, "constant") == 1.0
    assert lr_factor(50, total, 4, "constant") == 1.0
    assert TrainRecipe(epochs=10, lr_schedule="onecycle").warmup() == 3.0  # unset: 30%
    assert TrainRecipe(epochs=10, lr_schedule="cosine").warmup() == 0.0


def test_no_decay_on_norms_and_biases_and_nesterov_as_asked(data):
    model = _model(data, ResNetArch(blocks=[1], base_width=4))
    recipe = TrainRecipe(optimizer="sgd", weight_decay=5e-4, decay_norms_and_biases=False,
                         nesterov=False)
    decayed, free = param_groups(model, recipe)
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
             for p in m.parameters()}
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert norms <= {id(p) for p in free["params"]} and not norms & {id(p) for p in decayed["params"]}
    assert {p.ndim for p in decayed["params"]} == {2, 4}  # conv and linear weights only
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))
    assert len(param_groups(model, recipe.model_copy(update={"decay_norms_and_biases": True}))) == 1
    opt = make_optimizer(model, recipe)
    assert opt.defaults["nesterov"] is False and len(opt.param_groups) == 2
    assert make_optimizer(model, recipe.model_copy(update={"nesterov": True})).defaults["nesterov"]
    # Nesterov without momentum is refused by torch; the recipe then runs plain SGD.
    assert not make_optimizer(model, TrainRecipe(optimizer="sgd", momentum=0)).defaults["nesterov"]


@pytest.mark.slow
def test_a_batch_norm_model_skips_a_final_batch_of_one(data):
    """400 training images in batches of 133: the last holds one image, which batch norm in
    training mode cannot normalise where the map is 1x1 ('Expected more than 1 value per
    channel'): the fourth stage of an 8x8 input."""
    assert len(data.train) % 133 == 1
    model = _model(data, ResNetArch(blocks=[1, 1, 1, 1], base_width=4))
    recipe = TrainRecipe(epochs=2, batch_size=133, optimizer="sgd", lr=0.05,
                         lr_schedule="onecycle", label_smoothing=0.1)
    result = train(model, data, TrainSettings(recipe, CPU, seed=0))
    assert result.epochs_run == 2 and 0.0 <= result.val_accuracy <= 1.0


@pytest.mark.slow
def test_batch_progress_reports_within_each_epoch_and_leaves_training_unchanged(data,
                                                                                monkeypatch):
    """Progress bars move inside an epoch; listening must not change what is learned."""
    import kdsearch.training.engine as engine

    recipe = TrainRecipe(epochs=2, batch_size=64, lr=0.01)
    quiet = train(_model(data, CNN), data, TrainSettings(recipe, CPU, seed=3))
    monkeypatch.setattr(engine, "BATCH_PROGRESS_SECONDS", 0.0)  # hear every batch
    heard = []
    loud = train(_model(data, CNN), data, TrainSettings(
        recipe, CPU, seed=3, hooks=Hooks(on_batches=lambda *a: heard.append(a))))
    steps = -(-len(data.train) // recipe.batch_size)
    assert steps > 1
    assert heard == [(e, s, steps) for e in (1, 2) for s in range(1, steps + 1)]
    assert loud.curve == quiet.curve


def test_batch_progress_always_hears_the_end_of_each_epoch(data, monkeypatch):
    import kdsearch.training.engine as engine

    monkeypatch.setattr(engine, "BATCH_PROGRESS_SECONDS", 1e9)  # never by time
    heard = []
    recipe = TrainRecipe(epochs=2, batch_size=64, lr=0.01)
    train(_model(data, MLPArch(hidden=[8])), data,
          TrainSettings(recipe, CPU, hooks=Hooks(on_batches=lambda *a: heard.append(a))))
    steps = -(-len(data.train) // recipe.batch_size)
    assert heard == [(1, steps, steps), (2, steps, steps)]


def test_evaluation_batches_change_the_speed_not_the_answer(data, monkeypatch):
    """On the CPU a CNN is evaluated in small batches (faster there), an MLP in large ones;
    the predictions are the same at any batch size."""
    import kdsearch.training.evaluate as engine

    cnn, mlp = _model(data, CNN), _model(data, MLPArch(hidden=[16]))
    assert engine.eval_batch(cnn, CPU) == engine.EVAL_BATCH_CNN_CPU < engine.EVAL_BATCH
    assert engine.eval_batch(mlp, CPU) == engine.EVAL_BATCH
    assert engine.eval_batch(cnn, torch.device("cuda")) == engine.EVAL_BATCH
    small = predict_logits(cnn, data.test, CPU)
    acc = accuracy(cnn, data.test, CPU)
    monkeypatch.setattr(engine, "eval_batch", lambda model, device: len(data.test))
    assert torch.allclose(predict_logits(cnn, data.test, CPU), small, atol=1e-5)
    assert accuracy(cnn, data.test, CPU) == acc


CRASHER = """
import torch
from kdsearch.architecture import ResNetArch
from kdsearch.spec import DataSpec, SyntheticSpec, TrainRecipe
from kdsearch.training.data import load_data
from kdsearch.training.engine import TrainSettings, train
from kdsearch.training.models import build_model

torch.set_num_threads(1)
data = load_data(DataSpec(dataset="synthetic", val_size=64, synthetic=SyntheticSpec(
    n_train=1024, n_test=64, channels=3, height=32, width=32, num_classes=10)))
arch = ResNetArch(blocks=[1, 1], base_width=6, width_growth=2.0, shortcut="B")
model = build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)
train(model, data, TrainSettings(TrainRecipe(epochs=2, batch_size=128, lr=0.05, optimizer="sgd"),
                                 torch.device("cpu"), seed=0))
print("trained")
"""


@pytest.mark.slow
def test_a_strided_1x1_convolution_over_few_channels_trains_on_one_thread():
    """oneDNN's channels_last backward of a 1x1 stride-2 convolution over fewer than 8 input
    channels (a shortcut-B resnet of base width 6) corrupts memory on one CPU thread (torch
    2.14.1, AVX2: double free, segfault). In a separate process: a crash ends only that one."""
    import subprocess
    import sys

    from tests.helpers import REPO

    done = subprocess.run([sys.executable, "-c", CRASHER], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]
