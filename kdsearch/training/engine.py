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
batch, evaluation of CNNs on the CPU in batches of 64 (1.1-3.2x faster than 512 for the
residual and MobileNet families).
`torch.compile` lost on CPU (slower steps, ~30 s compile per architecture) and is not
used. On CUDA the loop runs under autocast
(bf16 where supported, else fp16 with a gradient scaler).
"""

from __future__ import annotations

import contextlib
import functools
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
from kdsearch.training.distill import kd_loss
from kdsearch.training.models import Normalize
from kdsearch.training.views import ViewSet, render_views

# Evaluation batch: 512 keeps the widest CNN students' activations small (peak RSS of a CIFAR-10
# trial of a 32-32-64-64-128-128 student: 1,219 MiB at 512 against 1,881 MiB at 2,048), at the
# same speed and with bit-identical logits (measured on the CIFAR-10 teacher's test logits).
EVAL_BATCH = 512
# A convolutional network on the CPU, though, evaluates faster in batches of 64 than of 512:
# 1.1-3.2x for the residual and MobileNet students and the ResNet-20 teacher, 1.5x for the
# seed's plain CNN on one thread, 0.94x on two (benchmarks/bench_eval_batch.py, docs/PERFORMANCE.md
# section 1): a batch's activations then stay nearer the caches (a MobileNet block's expanded map
# at 512 images is 300 MB). MLPs gain nothing from it; GPUs want large batches.
EVAL_BATCH_CNN_CPU = 64
PRENORM_MAX_BYTES = 256 << 20  # normalise once if the float copy is at most this (MNIST: 172 MB)
# An MLP whose forward pass is below this many multiply-accumulates per batch trains faster on
# one CPU thread than on several: its matrix products are too small to split, and every op
# pays the threads' hand-off. Measured with benchmarks/bench_threads.py (docs/PERFORMANCE.md) on
# 2 cores: 784-400-400 (61M per batch of 128) 0.84-0.97x as fast on two threads as on one,
# 784-800-800 (163M) 1.06-1.42x faster on two.
ONE_THREAD_MAX_MACS = 100_000_000
BATCH_PROGRESS_SECONDS = 0.25  # how often `on_batches` hears, at most: a clock read per batch
STATE_FORMAT = 1  # of the state `train` hands to `checkpoint`; bump when its keys change


@dataclass
class TrainResult:
    val_accuracy: float  # of the returned weights
    epochs_run: int
    seconds: float
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch


class ResumeError(ValueError):
    """A saved training state that does not fit this model, recipe or state format."""


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


def eval_batch(model: nn.Module, device: torch.device) -> int:
    """Images per forward pass when evaluating `model` on `device` (see EVAL_BATCH_CNN_CPU)."""
    return EVAL_BATCH_CNN_CPU if device.type == "cpu" and _is_cnn(model) else EVAL_BATCH


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, device: torch.device) -> torch.Tensor:
    """Logits for a whole split, batch by batch, as float32 on the CPU."""
    model.eval()
    step = eval_batch(model, device)
    outs = [model(split.x[i : i + step].to(device)).float().cpu()
            for i in range(0, len(split), step)]
    return torch.cat(outs) if outs else torch.empty(0)


@torch.inference_mode()
def accuracy(model: nn.Module, split: Split, device: torch.device) -> float:
    model.eval()
    correct, step = 0, eval_batch(model, device)
    for i in range(0, len(split), step):
        pred = model(split.x[i : i + step].to(device)).argmax(1)
        correct += int((pred == split.y[i : i + step].to(device)).sum())
    return correct / max(len(split), 1)


def param_groups(model: nn.Module, recipe: TrainRecipe) -> list[dict]:
    """The optimizer's parameter groups: one, or with `decay_norms_and_biases = false`, the
    conv and linear weights (decayed) apart from biases and batch-norm scales and shifts (not).

    Decay pulls a weight towards 0 to keep the function simple; a batch-norm scale or a bias
    sets no complexity, and the layer after a batch norm does not see its weights' scale, so
    decaying them only fights the fit (He et al. 2019, "Bag of tricks", section 3.1).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.decay_norms_and_biases or recipe.weight_decay == 0:
        return [{"params": params, "weight_decay": recipe.weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def _make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """Fused implementations (one kernel for all parameters) where this torch has them."""
    groups = param_groups(model, recipe)
    for fused in (True, False):
        try:
            if recipe.optimizer == "sgd":
                # Nesterov needs momentum: torch refuses it with none.
                return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                                       nesterov=recipe.nesterov and recipe.momentum > 0,
                                       fused=fused or None)
            return torch.optim.Adam(groups, lr=recipe.lr, fused=fused or None)
        except (RuntimeError, TypeError, ValueError):  # fused unsupported for this device/torch
            continue
    raise AssertionError("unreachable")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate at optimizer step `step` of `total`, as a fraction of the recipe's.

    A linear warm-up over the first `warmup` steps (large early steps on freshly initialised
    weights, with batch norm's statistics still settling, can throw a short run off for good),
    then: constant; cosine down to 0; or onecycle, linearly down to 0 (Smith & Topin 2019:
    within a few epochs, the triangle reaches more than any fixed rate).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(step - warmup, total - warmup) / max(total - warmup, 1)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _is_cnn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


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


@torch.no_grad()
def _apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Hinton et al.'s constraint: each unit's incoming weight vector has norm <= max_norm."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight  # may be channels_last: reshape, then copy back whatever the layout
            flat = w.reshape(w.shape[0], -1)
            w.copy_(torch.renorm(flat, p=2, dim=0, maxnorm=max_norm).view(w.shape))


def train_threads(model: nn.Module, batch_size: int, device: torch.device,
                  live_teacher: bool = False) -> int:
    """Torch threads for training `model` on the CPU: one for a small MLP, else all we have.

    Convolutions split usefully across threads even when small (the seed's 8-channel CNN
    student: 1.05-1.6x faster on two threads than on one, over four runs), so CNNs, and trials
    that run a teacher live, keep every thread.
    """
    current = torch.get_num_threads()
    if device.type != "cpu" or live_teacher or _is_cnn(model):
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


def _capture(epoch: int, seconds: float, curve: list[float], best_acc: float,
             best_state: dict | None, model: nn.Module, optimizer: torch.optim.Optimizer,
             schedule, scaler, gen: torch.Generator, recipe: TrainRecipe, seed: int,
             device: torch.device) -> dict:
    """Everything the next epoch depends on, as tensors and plain types (loadable with
    `torch.load(weights_only=True)`). Tensors may alias the live model: save them at once."""
    rng = {"torch": torch.get_rng_state(), "batches": gen.get_state()}
    if device.type == "cuda":  # augmentation and dropout draw from the device's generator
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "format": STATE_FORMAT,
        "recipe": recipe.model_dump(mode="json"),
        "seed": seed,
        "epoch": epoch,
        "seconds": seconds,
        "curve": list(curve),
        "best_acc": best_acc,
        "best_state": best_state,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict() if schedule is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
    }


def check_resumable(state: dict, recipe: TrainRecipe, seed: int) -> None:
    """`ResumeError` unless `state` was saved by `train` in this format, recipe and seed."""
    try:
        if state["format"] != STATE_FORMAT:
            raise ResumeError(f"state format {state['format']!r}, expected {STATE_FORMAT}")
        if state["recipe"] != recipe.model_dump(mode="json") or state["seed"] != seed:
            raise ResumeError("saved for another recipe or seed")
        if not isinstance(state["epoch"], int) or not 1 <= state["epoch"] <= recipe.epochs:
            raise ResumeError(f"epoch {state['epoch']!r} outside 1..{recipe.epochs}")
    except (KeyError, IndexError, TypeError) as e:
        raise ResumeError(f"not a training state ({type(e).__name__}: {e})") from e


def _restore(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, schedule, scaler,
             gen: torch.Generator, recipe: TrainRecipe, seed: int, device: torch.device,
             ) -> tuple[int, float, list[float], float, dict | None]:
    """Put a `_capture`d state back; its (epoch, seconds, curve, best accuracy, best weights).

    `ResumeError` if the state belongs to another run or format.

    The model may be half-overwritten when this raises: the caller starts over from scratch.
    """
    check_resumable(state, recipe, seed)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["batches"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
        return (state["epoch"], float(state["seconds"]), list(state["curve"]),
                float(state["best_acc"]), state["best_state"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise ResumeError(f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}") \
            from e


def _small_mlps_on_one_thread(train_fn):
    @functools.wraps(train_fn)
    def wrapper(model: nn.Module, data: Dataset, recipe: TrainRecipe, device: torch.device,
                **kwargs):
        live_teacher = kwargs.get("teacher") is not None
        with torch_threads(train_threads(model, recipe.batch_size, device, live_teacher)):
            return train_fn(model, data, recipe, device, **kwargs)
    return wrapper


@_small_mlps_on_one_thread
def train(
    model: nn.Module,
    data: Dataset,
    recipe: TrainRecipe,
    device: torch.device,
    *,
    seed: int = 0,
    teacher_logits: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    train_split: Split | None = None,
    keep_best: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
    on_batches: Callable[[int, int, int], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    views: ViewSet | None = None,
) -> TrainResult:
    """Train `model` on `data.train` (or `train_split`), distilling when `alpha > 0`.

    `teacher_logits` must be aligned with the training split's images; with augmentation,
    pass `teacher` instead. With `views` (aligned with the split), each epoch shows every image
    in one of its fixed views, drawn per image from the seeded generator, and distils from the
    cached logits of that view: no teacher runs. `on_epoch(epoch, val_accuracy)` may raise to
    stop (pruning).
    With `keep_best`, the weights of the best validation epoch are restored at the end.
    `on_batches(epoch, batches_done, batches_per_epoch)` hears within an epoch, at most every
    BATCH_PROGRESS_SECONDS and once when its last batch is queued, so a progress bar moves
    during long epochs (one CIFAR-10 teacher epoch: 87 s on 2 cores) at the cost of a clock
    read per batch; on CUDA it counts batches queued, not finished (no host sync is added).
    Small MLPs train on one thread (see `train_threads`).

    `checkpoint(state)`, if given, receives after each epoch (before `on_epoch`, so a stop
    there keeps it) everything the rest of the run depends on: weights, optimizer, schedule,
    best-so-far, curve and every random state. `resume=state` continues after that epoch and
    ends bit-identical to a run never stopped (same device); a state that does not fit raises
    `ResumeError`. Trials pass neither: the teacher alone is worth resuming.
    """
    # Setup: the data on the device once, a seeded generator for the batch order.
    split = train_split or data.train
    x, y = split.x.to(device), split.y.to(device)
    augmenting = augments(recipe) and views is None
    distilling = alpha > 0
    if views is not None and len(views) != len(split):
        raise ValueError(f"views of {len(views)} images for a split of {len(split)}")
    if views is not None:  # the table on the device too: no host sync per batch
        views = ViewSet(views.table.to(device), views.logits)
        view_logits = views.logits.to(device) if distilling else None
        teacher, teacher_logits = None, None
    if distilling and augmenting and teacher is None:
        raise ValueError("augmented distillation needs the teacher model, not cached logits")
    if distilling and teacher is None and teacher_logits is None and views is None:
        raise ValueError("distillation needs teacher_logits or a teacher")
    soft = teacher_logits.to(device) if (distilling and teacher_logits is not None) else None
    if teacher is not None:
        teacher.eval()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device)
    cnn = _is_cnn(model)
    if cnn and channels_last_ok(model, device):
        # weights alone in channels_last make the convolutions pick the faster layout
        model.to(memory_format=torch.channels_last)
    # Inputs: normalised once when small and not augmented (augmentation pads in pixel space).
    net: nn.Module = model
    pre = None if augmenting or views is not None else _prenormalise(model, x)
    if pre is not None:
        net, x = pre
    amp = _amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def autocast() -> contextlib.AbstractContextManager:
        if amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp)
    optimizer = _make_optimizer(model, recipe)
    steps_per_epoch = math.ceil(len(split) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    warmup_steps = min(round(recipe.warmup() * steps_per_epoch), total_steps)
    schedule = None
    if recipe.lr_schedule != "constant" or warmup_steps:
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
            lr_factor, total=total_steps, warmup=warmup_steps, schedule=recipe.lr_schedule))
    # Batch norm in training mode cannot normalise a batch of one image on a 1x1 map (and on
    # larger maps gets one image's statistics): such a last batch is skipped; its image is in
    # other batches in the other epochs' permutations.
    skip_single = _has_batch_norm(model)

    start = time.perf_counter()
    curve: list[float] = []
    best_acc, best_state = -1.0, None
    done, earlier = 0, 0.0  # epochs and seconds of the run being resumed
    if resume is not None:
        try:
            done, earlier, curve, best_acc, best_state = _restore(
                resume, model, optimizer, schedule, scaler, gen, recipe, seed, device)
        except ResumeError:
            _restore_layout(model, cnn)
            raise
    for epoch in range(done + 1, recipe.epochs + 1):
        # One epoch: a fresh permutation, batches sliced by index; the loss is summed on the
        # device and read once per epoch, so no batch waits for the host.
        model.train()
        order = torch.randperm(len(split), generator=gen).to(device)
        if views is not None:  # each image's view this epoch, drawn from the same stream
            shown = torch.randint(0, views.table.k, (len(split),), generator=gen).to(device)
        running = torch.zeros((), device=device)
        told = time.monotonic()
        for step, i in enumerate(range(0, len(split), recipe.batch_size), start=1):
            idx = order[i : i + recipe.batch_size]
            if skip_single and len(idx) == 1:
                continue
            xb, yb = x[idx], y[idx]
            if augmenting:
                xb = augment(xb, recipe)
            if views is not None:  # the pixels of exactly the view whose logits are cached
                vb = shown[idx]
                xb = render_views(xb, views.table, idx, vb)
            with autocast():
                logits = net(xb)
                if not distilling:
                    loss = F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
                else:
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(xb)
                    elif views is not None:
                        t_logits = view_logits[vb, idx]
                    else:
                        t_logits = soft[idx]
                    loss = kd_loss(logits, t_logits, yb, temperature, alpha,
                                   label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if schedule is not None:
                schedule.step()
            if recipe.max_norm is not None:
                _apply_max_norm(model, recipe.max_norm)
            running += loss.detach().float() * len(idx)
            if on_batches is not None and (step == steps_per_epoch or
                                           time.monotonic() - told >= BATCH_PROGRESS_SECONDS):
                on_batches(epoch, step, steps_per_epoch)
                told = time.monotonic()
        epoch_loss = float(running) / max(len(split), 1)
        if not math.isfinite(epoch_loss):
            _restore_layout(model, cnn)
            raise NonFiniteLossError(f"loss became {epoch_loss} during epoch {epoch}")

        # Validation after every epoch: the only signal used to select or stop.
        val_acc = accuracy(model, data.val, device)
        curve.append(val_acc)
        if keep_best and val_acc > best_acc:
            best_acc = val_acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress is not None:
            progress(epoch, epoch_loss, val_acc)
        if checkpoint is not None:
            try:
                checkpoint(_capture(epoch, earlier + time.perf_counter() - start, curve, best_acc,
                                    best_state, model, optimizer, schedule, scaler, gen, recipe,
                                    seed, device))
            except BaseException:
                _restore_layout(model, cnn)
                raise
        if on_epoch is not None:
            try:
                on_epoch(epoch, val_acc)
            except BaseException:
                _restore_layout(model, cnn)
                raise

    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    _restore_layout(model, cnn)
    final = max(curve) if keep_best else curve[-1]
    return TrainResult(final, len(curve), earlier + time.perf_counter() - start, curve)
