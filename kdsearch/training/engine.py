"""Training and evaluation on in-memory tensors: no DataLoader, no teacher in the hot loop.

The whole split sits in memory (on the GPU when there is one) as uint8; each epoch draws a
permutation and slices batches by index; augmentation runs on whole batches as tensor ops.
A distilled student reads its teacher's logits from the cache. With fixed views
(`recipe.views`, see views.py) it is shown each image in one of its views with the teacher's
cached logits for exactly that view; under random augmentation the cached logits no longer
describe what it sees, so the teacher runs live under no-grad.

Speed choices, each measured on a 2-core CPU (docs/PERFORMANCE.md has the figures):
channels_last weights for CNNs (+30-35% at 1 thread, no change at 2), fused Adam/SGD
(+5-10%), small data sets normalised once to float instead of per batch (+5% for MLPs;
CIFAR-10 keeps uint8, where it gains nothing and would cost 4x the memory), no host sync per
batch, evaluation of CNNs on the CPU in batches of 64 (evaluate.py). `torch.compile` lost on
CPU (slower steps, ~30 s compile per architecture) and is not used. On CUDA the loop runs
under autocast (bf16 where supported, else fp16 with a gradient scaler).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import NonFiniteLossError
from kdsearch.spec import TrainRecipe
from kdsearch.training.data import Dataset, Split
from kdsearch.training.distill import KD, kd_loss
from kdsearch.training.epoch_plan import epoch_images, epoch_steps
from kdsearch.training.evaluate import (
    EVAL_BATCH,
    EVAL_BATCH_CNN_CPU,
    accuracy,
    eval_batch,
    is_cnn,
    predict_logits,
)
from kdsearch.training.models import Normalize
from kdsearch.training.optim import (
    apply_max_norm,
    lr_factor,
    make_optimizer,
    make_schedule,
    param_groups,
)
from kdsearch.training.train_state import (
    STATE_FORMAT,
    Loop,
    Progress,
    ResumeError,
    capture,
    check_resumable,
    restore,
)
from kdsearch.training.views import ViewSet, render_views

__all__ = ["EVAL_BATCH", "EVAL_BATCH_CNN_CPU", "KD", "STATE_FORMAT", "Hooks", "ResumeError",
           "TrainResult", "TrainSettings", "accuracy", "augments", "channels_last_ok",
           "check_resumable", "eval_batch", "lr_factor", "param_groups", "predict_logits",
           "resolve_device", "torch_threads", "train", "train_threads"]

PRENORM_MAX_BYTES = 256 << 20  # normalise once if the float copy is at most this (MNIST: 172 MB)
# An MLP whose forward pass is below this many multiply-accumulates per batch trains faster on
# one CPU thread than on several: its matrix products are too small to split, and every op
# pays the threads' hand-off. Measured with benchmarks/bench_threads.py (docs/PERFORMANCE.md) on
# 2 cores: 784-400-400 (61M per batch of 128) 0.84-0.97x as fast on two threads as on one,
# 784-800-800 (163M) 1.06-1.42x faster on two.
ONE_THREAD_MAX_MACS = 100_000_000
BATCH_PROGRESS_SECONDS = 0.25  # how often `on_batches` hears, at most: a clock read per batch


@dataclass
class TrainResult:
    val_accuracy: float  # of the returned weights
    epochs_run: int
    seconds: float
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch


@dataclass(frozen=True, eq=False)
class Hooks:
    """What a caller hears during training. Each may raise to stop it (pruning, a signal)."""

    # (epoch, val_accuracy) after each epoch, after `checkpoint`: a stop there keeps the epoch
    on_epoch: Callable[[int, float], None] | None = None
    progress: Callable[[int, float, float], None] | None = None  # (epoch, loss, val_accuracy)
    # (epoch, batches done, per epoch): at most every BATCH_PROGRESS_SECONDS and at an epoch's
    # last batch, so a bar moves in long epochs; on CUDA, batches queued (no host sync added)
    on_batches: Callable[[int, int, int], None] | None = None
    # the state after each epoch (see train_state.py); `TrainSettings.resume` takes it back
    checkpoint: Callable[[dict], None] | None = None


@dataclass(frozen=True, eq=False)
class TrainSettings:
    """One training run: the recipe, where, from which seed, and what the student learns from.

    The teacher's signal, when `kd.alpha > 0`: `teacher_logits` aligned with the training
    split's images; or, under random augmentation, the `teacher` model itself, run live under
    no-grad; or `views` (aligned with the split): each epoch shows every image in one of its
    fixed views, drawn per image from the seeded generator, with the cached logits of exactly
    that view, and no teacher runs. Views apply to a plain student too.
    """

    recipe: TrainRecipe
    device: torch.device
    seed: int = 0  # of the weights' init (by the caller), batch order, augmentation, dropout
    kd: KD = KD()
    teacher_logits: torch.Tensor | None = None
    teacher: nn.Module | None = None
    views: ViewSet | None = None
    train_split: Split | None = None  # default: data.train (compress: train + validation)
    keep_best: bool = False  # restore the best validation epoch's weights at the end
    # a `Hooks.checkpoint` state to continue after, ending bit-identical to a run never
    # stopped (same device); the teacher and `compress` resume, trials (minutes) do not
    resume: dict | None = None
    hooks: Hooks = Hooks()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from kdsearch.errors import KdsearchError

        raise KdsearchError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def jitter(x: torch.Tensor, pixels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by its own random offset of up to `pixels` in x and y, zero-filled."""
    if pixels <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    dy = torch.randint(0, 2 * pixels + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, recipe: TrainRecipe) -> torch.Tensor:
    if recipe.hflip:
        x = hflip(x)
    return jitter(x, recipe.jitter or recipe.translate)


def augments(recipe: TrainRecipe) -> bool:
    """Random augmentation in every epoch: without fixed views, a shift or a flip."""
    return recipe.augments()


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def channels_last_ok(model: nn.Module, device: torch.device) -> bool:
    """Whether a CNN trains with channels_last weights on `device`.

    Not on the CPU when it holds a 1x1 convolution with a stride over fewer than 8 input
    channels (a shortcut-B resnet of base width 6, say): oneDNN's channels_last backward of it
    writes out of bounds on one thread (torch 2.14.1, AVX2; 2 to 7 channels, stride 2: double
    free or segfault; 8 and more, 3x3, stride 1 or the default layout: fine). Such a student
    trains in the default layout, about a third slower on one thread, instead of crashing
    the worker. tests/training/test_engine.py runs one in a separate process.
    """
    if device.type != "cpu":
        return True
    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and m.in_channels // m.groups < 8 for m in model.modules())


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype on CUDA (bf16 where supported, else fp16); None elsewhere: CPU is fp32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _prenormalise(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor] | None:
    """(the model without its Normalize layer, x normalised once), when that is small enough.

    The body shares its parameters with `model`, so training it trains `model`.
    """
    if not (isinstance(model, nn.Sequential) and len(model) > 1
            and isinstance(model[0], Normalize)):
        return None
    if x.numel() * 4 > PRENORM_MAX_BYTES:
        return None
    # x * scale + shift in one fused pass per cache-sized chunk: 4x cheaper than the four
    # whole-array passes of Normalize.forward, which made the setup cost more than it saved.
    norm = model[0]
    scale, shift = 1.0 / (255.0 * norm.std), -norm.mean / norm.std
    xf = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            torch.addcmul(shift, x[i : i + 1024].float(), scale, out=xf[i : i + 1024])
    return model[1:], xf


def train_threads(model: nn.Module, batch_size: int, device: torch.device,
                  live_teacher: bool = False) -> int:
    """Torch threads for training `model` on the CPU: one for a small MLP, else all we have.

    Convolutions split usefully across threads even when small (the seed's 8-channel CNN
    student: 1.05-1.6x faster on two threads than on one, over four runs), so CNNs, and trials
    that run a teacher live, keep every thread.
    """
    current = torch.get_num_threads()
    if device.type != "cpu" or live_teacher or is_cnn(model):
        return current
    macs = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return 1 if macs * batch_size < ONE_THREAD_MAX_MACS else current


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` intra-op threads, then give back what was set before."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _restore_layout(model: nn.Module, cnn: bool) -> None:
    """Hand the model back in the default layout, so its state dict looks like any other."""
    if cnn:
        model.to(memory_format=torch.contiguous_format)


TeacherFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _teacher_signal(s: TrainSettings, augmenting: bool) -> TeacherFn | None:
    """(batch pixels, their positions, their views) -> the teacher's logits on exactly those
    pixels, on the device; None for a plain student."""
    if s.kd.alpha <= 0:
        return None
    if s.views is not None:  # the logits of each image's view
        cached = s.views.logits.to(s.device)
        return lambda xb, idx, vb: cached[vb, idx]
    if s.teacher is not None:  # run live: the pixels were augmented at random
        teacher = s.teacher.eval()

        def live(xb: torch.Tensor, idx: torch.Tensor, vb: torch.Tensor | None) -> torch.Tensor:
            with torch.no_grad():
                return teacher(xb)
        return live
    if augmenting:
        raise ValueError("augmented distillation needs the teacher model, not cached logits")
    if s.teacher_logits is None:
        raise ValueError("distillation needs teacher_logits or a teacher")
    soft = s.teacher_logits.to(s.device)
    return lambda xb, idx, vb: soft[idx]


def train(model: nn.Module, data: Dataset, settings: TrainSettings) -> TrainResult:
    """Train `model` on `data.train` (or `settings.train_split`), distilling when
    `settings.kd.alpha > 0` (see `TrainSettings` for the teacher's signal and `Hooks` for what
    the caller hears). A state that does not fit `settings.resume` raises `ResumeError`.
    """
    s, recipe, device = settings, settings.recipe, settings.device
    # Threads: a small MLP trains faster on one (see train_threads).
    with torch_threads(train_threads(model, recipe.batch_size, device, s.teacher is not None)):
        # Data: the split (and the views' table) on the device once; normalised once when small
        # and not augmented (augmentation pads in pixel space).
        split = s.train_split or data.train
        x, y = split.x.to(device), split.y.to(device)
        views = s.views
        if views is not None and len(views) != len(split):
            raise ValueError(f"views of {len(views)} images for a split of {len(split)}")
        table = views.table.to(device) if views is not None else None
        augmenting = augments(recipe) and views is None
        teacher = _teacher_signal(s, augmenting)
        net: nn.Module = model.to(device)
        pre = None if augmenting or views is not None else _prenormalise(model, x)
        if pre is not None:
            net, x = pre

        # Model and optimizer: seeded; CNN weights in channels_last (the convolutions pick the
        # faster layout); autocast on CUDA with a gradient scaler for fp16.
        gen = torch.Generator().manual_seed(s.seed)
        torch.manual_seed(s.seed)
        cnn = is_cnn(model)
        if cnn and channels_last_ok(model, device):
            model.to(memory_format=torch.channels_last)
        amp = _amp_dtype(device)
        optimizer = make_optimizer(model, recipe)
        images, steps = epoch_images(len(split), recipe), epoch_steps(len(split), recipe)  # per epoch
        loop = Loop(optimizer, make_schedule(optimizer, recipe, steps),
                    torch.amp.GradScaler("cuda") if amp == torch.float16 else None, gen)
        # Batch norm in training mode cannot normalise a batch of one image on a 1x1 map (and on larger
        # maps gets one image's statistics): such a last batch is skipped; its image is in other epochs'.
        skip_single = _has_batch_norm(model)

        try:
            # Resume: the state after the last checkpointed epoch, or a fresh start.
            start = time.perf_counter()
            done = Progress()
            if s.resume is not None:
                done = restore(s.resume, model, loop, recipe, s.seed, device)
            earlier = done.seconds
            for epoch in range(done.epoch + 1, recipe.epochs + 1):
                # One epoch: a fresh permutation (its head, in a short epoch), batches sliced by
                # index; the loss is summed on the device, read once per epoch.
                model.train()
                order = torch.randperm(len(split), generator=gen)[: images[epoch - 1]].to(device)
                if table is not None:  # each image's view this epoch, from the same stream
                    shown = torch.randint(0, table.k, (len(split),), generator=gen).to(device)
                running = torch.zeros((), device=device)
                told = time.monotonic()
                for step, i in enumerate(range(0, len(order), recipe.batch_size), start=1):
                    idx = order[i : i + recipe.batch_size]
                    if skip_single and len(idx) == 1:
                        continue
                    xb, yb, vb = x[idx], y[idx], None
                    if augmenting:
                        xb = augment(xb, recipe)
                    if table is not None:  # the pixels of exactly the view whose logits are cached
                        vb = shown[idx]
                        xb = render_views(xb, table, idx, vb)
                    with (torch.autocast(device.type, dtype=amp) if amp is not None
                          else contextlib.nullcontext()):
                        logits = net(xb)
                        if teacher is None:
                            loss = F.cross_entropy(logits, yb,
                                                   label_smoothing=recipe.label_smoothing)
                        else:
                            loss = kd_loss(logits, teacher(xb, idx, vb), yb, s.kd.temperature,
                                           s.kd.alpha, label_smoothing=recipe.label_smoothing)
                    _step(loss, loop, model, recipe)
                    running += loss.detach().float() * len(idx)
                    if s.hooks.on_batches is not None and (
                            step == steps[epoch - 1]
                            or time.monotonic() - told >= BATCH_PROGRESS_SECONDS):
                        s.hooks.on_batches(epoch, step, steps[epoch - 1])
                        told = time.monotonic()
                epoch_loss = float(running) / max(len(order), 1)
                if not math.isfinite(epoch_loss):
                    raise NonFiniteLossError(f"loss became {epoch_loss} during epoch {epoch}")

                # Validation after every epoch: the only signal used to select or stop.
                val_acc = accuracy(model, data.val, device)
                done.epoch, done.seconds = epoch, earlier + time.perf_counter() - start
                done.curve.append(val_acc)
                if s.keep_best and val_acc > done.best_acc:
                    done.best_acc = val_acc
                    done.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

                # The caller hears: progress, then the checkpoint, then `on_epoch`, which may
                # stop the run with the epoch kept.
                if s.hooks.progress is not None:
                    s.hooks.progress(epoch, epoch_loss, val_acc)
                if s.hooks.checkpoint is not None:
                    s.hooks.checkpoint(capture(done, model, loop, recipe, s.seed, device))
                if s.hooks.on_epoch is not None:
                    s.hooks.on_epoch(epoch, val_acc)

            # The result: the best epoch's weights with keep_best, else the last.
            if s.keep_best and done.best_state is not None:
                model.load_state_dict(done.best_state)
        finally:
            _restore_layout(model, cnn)
    final = max(done.curve) if s.keep_best else done.curve[-1]
    return TrainResult(final, len(done.curve), earlier + time.perf_counter() - start, done.curve)


def _step(loss: torch.Tensor, loop: Loop, model: nn.Module, recipe: TrainRecipe) -> None:
    """One optimizer step: backward (scaled under fp16), the schedule, the max-norm constraint."""
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.scaler is not None:
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
    else:
        loss.backward()
        loop.optimizer.step()
    if loop.schedule is not None:
        loop.schedule.step()
    if recipe.max_norm is not None:
        apply_max_norm(model, recipe.max_norm)
