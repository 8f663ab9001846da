"""Fixed views: the pixels a view shows, and the alignment of views with the teacher's logits.

The alignment test is the one Beyer et al.'s consistency needs: in every batch of a real
`train()` run, the teacher logits the loss receives are the teacher's outputs on exactly the
pixels the student is given.
"""

import torch
from torch import nn

from kdsearch.spec import TrainRecipe
from kdsearch.training import engine
from kdsearch.training.data import Dataset, Split
from kdsearch.training.views import ViewSet, make_views, render, view_logits
from tests.helpers import view_data


def test_render_flips_then_shifts_with_zero_fill():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.uint8).view(2, 1, 4, 5) + 1
    flip = torch.tensor([True, False])
    dy = torch.tensor([1, -2], dtype=torch.int8)
    dx = torch.tensor([-1, 2], dtype=torch.int8)
    out = render(x, flip, dy, dx, pad=2)
    for n in range(2):
        src = x[n, 0].flip(1) if flip[n] else x[n, 0]
        for i in range(4):
            for j in range(5):
                si, sj = i + int(dy[n]), j + int(dx[n])
                want = src[si, sj] if 0 <= si < 4 and 0 <= sj < 5 else 0
                assert out[n, 0, i, j] == want, (n, i, j)


def test_views_are_seeded_and_view_zero_is_the_image():
    a = make_views(50, 4, hflip=True, translate=3, seed=7)
    b = make_views(50, 4, hflip=True, translate=3, seed=7)
    c = make_views(50, 4, hflip=True, translate=3, seed=8)
    assert torch.equal(a.flip, b.flip) and torch.equal(a.dx, b.dx) and torch.equal(a.dy, b.dy)
    assert not torch.equal(a.dx, c.dx)
    assert not a.flip[:, 0].any() and not a.dx[:, 0].any() and not a.dy[:, 0].any()
    assert a.flip[:, 1:].any() and a.dx.abs().max() == 3 and a.dy.abs().max() <= 3


class Recorder(nn.Module):
    """The student's first layer: keeps every batch of pixels the student is trained on."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        if self.training:  # not the validation passes after each epoch
            self.seen.append(x.detach().clone())
        return x.float() / 255.0


def test_loss_gets_the_teachers_logits_for_exactly_the_pixels_the_student_sees(monkeypatch):
    data, teacher = view_data()
    x, n, classes = data.train.x, len(data.train), data.num_classes
    with torch.no_grad():
        teacher[1].weight.copy_(torch.randn_like(teacher[1].weight))

    def forward(xb):
        return teacher(xb.float() / 255.0)

    table = make_views(n, 4, hflip=True, translate=2, seed=3)
    views = ViewSet(table, view_logits(forward, x, table, batch_size=40))

    seen, received = [], []
    real_kd = engine.kd_loss

    def spy(student_logits, teacher_logits, labels, temperature, alpha, **kwargs):
        received.append(teacher_logits.detach().clone())
        return real_kd(student_logits, teacher_logits, labels, temperature, alpha, **kwargs)

    monkeypatch.setattr(engine, "kd_loss", spy)
    student = nn.Sequential(Recorder(seen), nn.Flatten(), nn.Linear(3 * 36, classes))
    recipe = TrainRecipe(epochs=2, batch_size=32, views=4, hflip=True, translate=2)
    engine.train(student, data, engine.TrainSettings(recipe, torch.device("cpu"), seed=1,
                                                     views=views, kd=engine.KD(2.0, 0.5)))

    assert len(received) == 2 * 3 and len(seen) == len(received)
    originals = {bytes(img.numpy()) for img in x}
    augmented = 0
    for pixels, logits in zip(seen, received, strict=True):
        torch.testing.assert_close(logits, forward(pixels), rtol=1e-5, atol=1e-5)
        augmented += sum(bytes(img.numpy()) not in originals for img in pixels)
    assert augmented > 100  # most of the 192 images shown were flipped or shifted views


def test_a_plain_student_on_views_trains_without_a_teacher():
    x = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8)
    y = torch.randint(0, 2, (40,))
    data = Dataset("t", Split(x, y), Split(x[:8], y[:8]), Split(x[:8], y[:8]), 2, (0.5,), (0.25,), "t")
    table = make_views(40, 2, hflip=True, translate=1, seed=0)
    views = ViewSet(table, torch.zeros(2, 40, 2))
    model = nn.Sequential(Recorder([]), nn.Flatten(), nn.Linear(36, 2))
    recipe = TrainRecipe(epochs=1, batch_size=8, views=2, hflip=True)
    result = engine.train(model, data, engine.TrainSettings(recipe, torch.device("cpu"),
                                                            views=views))
    assert result.epochs_run == 1
