"""Training the teacher, resumable: a stopped run continues from its last finished epoch.

While the teacher trains, `<key>.partial.pt` beside its cache folder holds the state after its
last finished epoch (replaced atomically after each one), so an interrupted run continues from
there, bit-identical to one never stopped; it is removed once the teacher is cached.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from kdsearch.errors import NonFiniteLossError
from kdsearch.record import TeacherRecord
from kdsearch.training.data import Dataset
from kdsearch.training.engine import Hooks, TrainSettings, train
from kdsearch.training.evaluate import accuracy
from kdsearch.training.models import build_model, count_macs, count_params
from kdsearch.training.teacher import StopSignal, TeacherPlan
from kdsearch.training.train_state import ResumeError, load_state, save_state


def _load_partial(path: Path, plan: TeacherPlan, log: Callable[[str], None]) -> dict | None:
    """The state saved at `path`, or None: absent, or unusable (warned about and removed)."""
    assert plan.recipe is not None
    state, problem = load_state(path, plan.recipe, plan.seed, fit=" this teacher")
    if problem is not None:
        log(f"warning: teacher checkpoint {path} {problem}; training the teacher from the start")
        path.unlink(missing_ok=True)
    return state


def train_teacher(plan: TeacherPlan, data: Dataset, device: torch.device, key: str,
                  log: Callable[[str], None], partial: Path | None = None,
                  stop: StopSignal | None = None) -> tuple[nn.Module, TeacherRecord]:
    """Train the plan's teacher, keeping the epoch with the best validation accuracy.

    With `partial`, each epoch is checkpointed there and a checkpoint found there is resumed.
    """
    from tqdm import tqdm

    arch, recipe = plan.arch, plan.recipe
    assert arch is not None and recipe is not None
    # The model, and where an interrupted run left it.
    torch.manual_seed(plan.seed)
    model = build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)
    params = count_params(model)
    log(f"training teacher {arch.describe()} ({params:,} params) for "
        f"{recipe.epochs} epochs on {len(data.train):,} images")
    state = _load_partial(partial, plan, log) if partial is not None else None
    if state is not None:
        log(f"resuming teacher from epoch {state['epoch']} of {recipe.epochs} ({partial})")

    # A progress bar counted in batches, not epochs: an epoch can take minutes (87 s on
    # CIFAR-10 on 2 cores), and a bar at 0/15 for all of the first one looks frozen.
    epochs, steps = recipe.epochs, math.ceil(len(data.train) / recipe.batch_size)
    first = state["epoch"] if state else 0
    bar = tqdm(total=epochs * steps, initial=first * steps, desc="teacher", unit="batch",
               file=sys.stderr, dynamic_ncols=True)
    bar.set_postfix_str(f"epoch {min(first + 1, epochs)}/{epochs}")
    last = [""]  # the last finished epoch's numbers
    saved = [first]  # the epoch `partial` now holds

    def batches(epoch: int, done: int, per_epoch: int) -> None:
        bar.n = (epoch - 1) * per_epoch + done
        bar.set_postfix_str(f"epoch {epoch}/{epochs}{last[0]}")  # refreshes the bar
        if stop is not None:
            stop.at_batch(done, per_epoch)

    def progress(epoch: int, loss: float, val_acc: float) -> None:
        last[0] = f", last epoch loss {loss:.4f} val_acc {val_acc:.4f}"
        bar.set_postfix_str(f"epoch {epoch}/{epochs}{last[0]}")

    def save(snapshot: dict) -> None:
        assert partial is not None
        save_state(partial, snapshot)
        saved[0] = snapshot["epoch"]

    # Training: a stop is taken only after the epoch's checkpoint (`on_epoch` follows it).
    hooks = Hooks(on_epoch=(lambda epoch, val_acc: stop.at_epoch()) if stop is not None else None,
                  progress=progress, on_batches=batches,
                  checkpoint=save if partial is not None else None)
    settings = TrainSettings(recipe, device, seed=plan.seed, keep_best=True, resume=state,
                             hooks=hooks)
    try:
        with (stop.training("the teacher", "the finished epochs are checkpointed")
              if stop is not None else nullcontext()):
            result = train(model, data, settings)
    except BaseException as e:
        bar.close()  # first: a line logged while it is open lands inside the bar
        if isinstance(e, ResumeError) and partial is not None:  # found as the weights went in
            log(f"warning: teacher checkpoint {partial} does not fit this teacher ({e}); "
                "training the teacher from the start")
            partial.unlink(missing_ok=True)
            return train_teacher(plan, data, device, key, log, partial, stop)
        if saved[0] and not isinstance(e, NonFiniteLossError):  # a NaN would only recur
            log(f"teacher stopped: epochs 1-{saved[0]} of {epochs} are checkpointed in "
                f"{partial}; the same command resumes from there")
        raise
    bar.close()

    # Its record: kdsearch's own measurement on this data.
    record = TeacherRecord(
        key=key,
        arch=arch.model_dump(mode="json"),
        description=arch.describe(),
        params=params,
        macs=count_macs(arch, data.input_shape, data.num_classes),
        val_accuracy=result.val_accuracy,
        test_accuracy=accuracy(model, data.test, device),
        train_seconds=round(result.seconds, 2),
        epochs=result.epochs_run,
        curve=tuple(result.curve),
        dataset=data.name,
        data_identity=data.identity,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        recipe=recipe.model_dump(mode="json"),
        seed=plan.seed,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return model, record
