"""Short early epochs (`early_fraction`, `early_epochs`): a cheaper fidelity for the first rungs.

What must hold: early epochs see about `early_fraction` of the images and the later ones all of
them; the learning-rate schedule counts the steps really taken; a run is reproducible from its
seed; fixed views stay aligned with their cached logits; and the defaults change nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdsearch.errors import StudyFileError
from kdsearch.spec import DataSpec, SyntheticSpec, TrainRecipe, load_study
from kdsearch.training import engine
from kdsearch.training.data import load_data
from kdsearch.training.engine import Hooks, TrainSettings, train
from kdsearch.training.epoch_plan import epoch_images, epoch_steps, steps_until
from kdsearch.training.optim import make_optimizer, make_schedule
from kdsearch.training.views import ViewSet, make_views, view_logits
from tests.helpers import tiny_staged_study_text, view_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_data(DataSpec(dataset="synthetic", val_size=100, synthetic=SyntheticSpec(
        n_train=500, n_test=100, channels=1, height=8, width=8, num_classes=3, noise=1.0)))


class Counter(nn.Module):
    """Records how many images each training forward pass sees (and which pixels)."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return x.float() / 255.0


def _student(seen: list, shape=(1, 8, 8), classes=3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Counter(seen), nn.Flatten(), nn.Linear(math.prod(shape), 16), nn.ReLU(),
                         nn.Linear(16, classes))


def test_the_plan_shortens_only_the_early_epochs():
    recipe = TrainRecipe(epochs=5, batch_size=64, early_fraction=0.25, early_epochs=2)
    assert epoch_images(500, recipe) == [125, 125, 500, 500, 500]
    assert epoch_steps(500, recipe) == [2, 2, 8, 8, 8]
    assert epoch_images(500, TrainRecipe(epochs=5)) == [500] * 5
    assert steps_until(1.5, [2, 2, 8, 8, 8]) == 3 and steps_until(3, [2, 2, 8, 8, 8]) == 12
    for warmup in (0.0, 0.3, 1.5, 2.5, 3.7):  # equal epochs: the rounding of before
        assert steps_until(warmup, [7] * 5) == round(warmup * 7)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_the_schedule_counts_the_steps_really_taken(schedule):
    recipe = TrainRecipe(epochs=5, batch_size=64, lr=0.1, lr_schedule=schedule, warmup_epochs=2.5,
                         early_fraction=0.25, early_epochs=2)
    steps = epoch_steps(500, recipe)
    optimizer = make_optimizer(nn.Linear(2, 2), recipe)
    lambdas = make_schedule(optimizer, recipe, steps).lr_lambdas[0]
    total, warmup = sum(steps), steps_until(2.5, steps)
    assert lambdas.keywords["total"] == total == 2 + 2 + 8 + 8 + 8
    assert warmup == 2 + 2 + 4
    assert lambdas(warmup - 1) == 1.0 and lambdas(warmup - 2) < 1.0  # warm-up ends at 2.5 epochs
    assert lambdas(total) == pytest.approx(0.0, abs=1e-12)  # and the decay at the last step


def test_early_epochs_train_on_a_seeded_fraction_then_on_all(data, monkeypatch):
    monkeypatch.setattr(engine, "BATCH_PROGRESS_SECONDS", 0.0)  # hear every batch
    recipe = TrainRecipe(epochs=4, batch_size=64, lr=0.01, early_fraction=0.3, early_epochs=2)
    runs = []
    for _ in range(2):
        seen, heard = [], []
        model = _student(seen)
        result = train(model, data, TrainSettings(recipe, CPU, seed=5, hooks=Hooks(
            on_batches=lambda *a, heard=heard: heard.append(a))))
        runs.append((model, result, seen, heard))
    (model, result, seen, heard), (again, result2, seen2, _) = runs

    n, early = len(data.train), math.ceil(0.3 * len(data.train))
    per_epoch = [sum(1 for e, _, _ in heard if e == epoch) for epoch in (1, 2, 3, 4)]
    assert per_epoch == [math.ceil(early / 64)] * 2 + [math.ceil(n / 64)] * 2
    assert [h[2] for h in heard if h[1] == 1] == per_epoch  # what a progress bar is told
    sizes = [len(b) for b in seen]
    assert sum(sizes[: 2 * per_epoch[0]]) == 2 * early
    assert sum(sizes[2 * per_epoch[0]:]) == 2 * n
    first, second = (torch.cat(seen[i * per_epoch[0]:(i + 1) * per_epoch[0]]) for i in (0, 1))
    assert not torch.equal(first, second)  # a fresh subset each epoch
    assert len(result.curve) == 4  # validated after every epoch, short or not
    # the same seed: the same subsets and the same weights
    assert result.curve == result2.curve
    assert all(torch.equal(a, b) for a, b in zip(seen, seen2, strict=True))
    for (k, t), t2 in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(t, t2), k


def test_the_defaults_change_nothing(data):
    """A recipe without the keys, with fraction 1.0, or with fraction 1.0 over early epochs:
    bit-identical weights; and the keys at their defaults stay out of the recipe's JSON (the
    teacher's cache key and a saved training state read it)."""
    recipes = [TrainRecipe(epochs=3, batch_size=64, lr=0.05, optimizer="sgd", lr_schedule="onecycle"),
               TrainRecipe(epochs=3, batch_size=64, lr=0.05, optimizer="sgd", lr_schedule="onecycle",
                           early_fraction=1.0),
               TrainRecipe(epochs=3, batch_size=64, lr=0.05, optimizer="sgd", lr_schedule="onecycle",
                           early_fraction=1.0, early_epochs=2)]
    assert "early_fraction" not in recipes[1].model_dump(mode="json")
    states = []
    for recipe in recipes:
        model = _student([])
        train(model, data, TrainSettings(recipe, CPU, seed=2))
        states.append(model.state_dict())
    for other in states[1:]:
        for k, t in states[0].items():
            assert torch.equal(t, other[k]), k


def test_a_short_epoch_shows_each_image_in_its_own_view_with_that_views_logits(monkeypatch):
    data, teacher = view_data()
    x, n, classes = data.train.x, len(data.train), data.num_classes
    shape = tuple(x.shape[1:])

    def forward(xb):
        with torch.no_grad():
            return teacher(xb.float() / 255.0)

    table = make_views(n, 4, hflip=True, translate=2, seed=3)
    views = ViewSet(table, view_logits(forward, x, table, batch_size=40))
    received, real_kd = [], engine.kd_loss

    def spy(student_logits, teacher_logits, *args, **kwargs):
        received.append(teacher_logits.detach().clone())
        return real_kd(student_logits, teacher_logits, *args, **kwargs)

    monkeypatch.setattr(engine, "kd_loss", spy)
    seen = []
    recipe = TrainRecipe(epochs=3, batch_size=16, views=4, hflip=True, translate=2,
                         early_fraction=0.25, early_epochs=2)
    train(_student(seen, shape, classes), data, TrainSettings(recipe, CPU, seed=1, views=views,
                                                              kd=engine.KD(2.0, 0.5)))
    assert [len(b) for b in seen] == [16, 8] * 2 + [16] * 6  # 24 images, twice; then 96
    for pixels, logits in zip(seen, received, strict=True):
        torch.testing.assert_close(logits, forward(pixels), rtol=1e-5, atol=1e-5)


def test_a_run_with_short_epochs_resumes_bit_identical(data):
    recipe = TrainRecipe(epochs=3, batch_size=64, lr=0.05, optimizer="sgd", lr_schedule="onecycle",
                         early_fraction=0.4, early_epochs=2)
    whole = _student([])
    full = train(whole, data, TrainSettings(recipe, CPU, seed=4))
    states = []

    class Stop(Exception):
        pass

    def stop_after_1(epoch, acc):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train(_student([]), data, TrainSettings(recipe, CPU, seed=4, hooks=Hooks(
            on_epoch=stop_after_1, checkpoint=lambda s: states.append(_copy(s)))))
    resumed_model = _student([])
    resumed = train(resumed_model, data, TrainSettings(recipe, CPU, seed=4, resume=states[-1]))
    assert resumed.curve == full.curve
    for k, t in whole.state_dict().items():
        assert torch.equal(t, resumed_model.state_dict()[k]), k
    other = recipe.model_copy(update={"early_fraction": 0.5})
    with pytest.raises(engine.ResumeError, match="another recipe"):
        train(_student([]), data, TrainSettings(other, CPU, seed=4, resume=states[-1]))


def _copy(state):
    import copy

    return copy.deepcopy(state)


STUDENT_TRAIN = "[student.train]\nepochs = 1\n"


@pytest.mark.parametrize("keys,fragment", [
    ("epochs = 4\nearly_fraction = 0.5", "key 'student.train.early_fraction': expected early_epochs "
                                        ">= 1 with early_fraction < 1"),
    ("epochs = 4\nearly_fraction = 0.5\nearly_epochs = 4",
     "key 'student.train.early_epochs': expected fewer early epochs than epochs (4)"),
    ("epochs = 4\nearly_fraction = 0", "key 'student.train.early_fraction': expected greater than 0"),
    ("epochs = 4\nearly_fraction = 1.5", "key 'student.train.early_fraction'"),
])
def test_bad_early_keys_are_refused_at_load_in_one_line(tmp_path, keys, fragment):
    text = tiny_staged_study_text()
    assert STUDENT_TRAIN in text
    path = tmp_path / "early.toml"
    path.write_text(text.replace(STUDENT_TRAIN, "[student.train]\n" + keys + "\n"))
    with pytest.raises(StudyFileError) as info:
        load_study(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and fragment in message, message


def test_good_early_keys_load(tmp_path):
    path = tmp_path / "early.toml"
    path.write_text(tiny_staged_study_text().replace(
        STUDENT_TRAIN, "[student.train]\nepochs = 4\nearly_fraction = 0.25\nearly_epochs = 2\n"))
    recipe = load_study(str(path)).student.train.for_trial(lr=0.1)
    assert (recipe.early_fraction, recipe.early_epochs) == (0.25, 2)
