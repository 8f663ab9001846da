"""One trial: suggest a student, build it, distill it from the cached logits, score it.

Everything a report needs later is stored on the trial as user attributes, because
reports read only from storage.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
import torch

from kdsearch.errors import NonFiniteLossError
from kdsearch.record import TrialRecord, set_trial
from kdsearch.search.repeats import trained_twin
from kdsearch.search.space import suggest_recipe, suggest_student
from kdsearch.search.sweep import suggest_repeat
from kdsearch.spec import StudySpec
from kdsearch.training.data import Dataset
from kdsearch.training.engine import accuracy
from kdsearch.training.latency import measure_latency
from kdsearch.training.models import ArchitectureError, arch_params, build_model, count_macs
from kdsearch.training.student import distill, student_seed
from kdsearch.training.teacher import Teacher


def _is_out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _prune(trial: optuna.Trial, reason: str) -> optuna.TrialPruned:
    set_trial(trial, stopped_reason=reason)
    return optuna.TrialPruned(reason)


def timed_before(trial: optuna.Trial, arch: dict, device: torch.device) -> tuple[float, dict] | None:
    """The latency of the same student timed by an earlier trial on the same kind of device
    with the same threads, with its method and where it came from; None when there is none.

    The same shapes run as fast, so one measurement stands for every trial of that student:
    identical students then tie on latency and are told apart by accuracy alone, instead of
    by a few percent of timing noise (seen on a loaded machine: one CNN timed 0.134, 0.136 and
    0.142 ms by three trials), and a repeated student costs no second of timing.
    """
    threads = torch.get_num_threads()
    for t in trial.study.get_trials(deepcopy=False):
        r = TrialRecord.of(t)
        m = r.latency_method or {}
        if (t.number != trial.number and r.latency_ms is not None and r.architecture == arch
                and m.get("device") == str(device) and m.get("threads") == threads):
            return r.latency_ms, {**m, "reused_from_trial": m.get("reused_from_trial", t.number)}
    return None


def over_budget(spec: StudySpec, params: int, macs: int) -> str | None:
    """Why a student of this size is refused before training (`max_params`, `max_macs`), or
    None: the objective prunes it, and the planned start-up (search/startup.py) never picks it."""
    max_params, max_macs = spec.student.max_params, spec.student.max_macs
    if max_params is not None and params > max_params:
        return f"over budget: {params:,} params > max_params {max_params:,}"
    if max_macs is not None and macs > max_macs:
        return f"over budget: {macs:,} MACs > max_macs {max_macs:,}"
    return None


def measures_latency(spec: StudySpec) -> bool:
    """Whether trials time their student: only when latency is an objective or a limit, since
    the measurement costs up to a second a trial."""
    return "latency_ms" in spec.search.objectives or spec.student.max_latency_ms is not None


def make_objective(
    spec: StudySpec, data: Dataset, teacher: Teacher, device: torch.device,
    on_epoch: Callable[[optuna.Trial, int, float], None] | None = None,
    on_batches: Callable[[int, int, int], None] | None = None,
) -> Callable[[optuna.Trial], tuple[float, ...]]:
    """The Optuna objective: (validation accuracy, each cost of `[search] objectives`).

    `on_batches(epoch, batches_done, batches_per_epoch)` follows the running trial's training
    (engine.train), for a progress display that moves within a trial.
    """
    costs = spec.search.objectives
    max_latency = spec.student.max_latency_ms

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        # Suggest: the student's shape, the distillation settings and, where searched, the
        # learning rate and batch size (a per-trial copy of the study's recipe).
        choice = suggest_student(trial, spec.student.space, data.input_shape)
        recipe = suggest_recipe(trial, spec.student.train)
        repeat = suggest_repeat(trial, spec)
        try:
            params = arch_params(choice.arch, data.input_shape, data.num_classes)
            macs = count_macs(choice.arch, data.input_shape, data.num_classes)
        except ArchitectureError as e:
            raise _prune(trial, f"unbuildable: {e}") from None
        set_trial(trial, architecture=choice.arch.model_dump(mode="json"),
                  arch_summary=choice.arch.describe(), n_layers=choice.arch.n_layers,
                  params=params, macs=macs)
        twin = trained_twin(trial, spec)  # its size recorded, for the trial line and reports
        if twin is not None:
            set_trial(trial, repeat_of=twin)
            raise _prune(trial, f"repeat of trial {twin}: the same student and settings")
        refused = over_budget(spec, params, macs)
        if refused:
            raise _prune(trial, refused)

        # Build; time it untrained when latency counts (same shapes, same latency as trained).
        seed = student_seed(spec.seed, repeat if spec.search.sampler == "grid" else trial.number)
        torch.manual_seed(seed)
        model = build_model(choice.arch, data.input_shape, data.num_classes, data.mean, data.std)
        known: dict[str, float] = {"params": params, "macs": macs}
        if measures_latency(spec):
            earlier = timed_before(trial, choice.arch.model_dump(mode="json"), device)
            if earlier is None:
                timed = measure_latency(model, data.input_shape, device)
                earlier = timed.median_ms, timed.method
            latency, method = earlier
            set_trial(trial, latency_ms=latency, latency_method=method)
            known["latency_ms"] = latency
            if max_latency is not None and latency > max_latency:
                raise _prune(trial, f"over budget: {latency:.4g} ms latency > "
                             f"max_latency_ms {max_latency:g}")

        # Distill, recording the validation curve as it grows.
        curve: list[float] = []

        def epoch_done(epoch: int, val_acc: float) -> None:
            curve.append(val_acc)
            set_trial(trial, val_curve=tuple(curve))
            if on_epoch is not None:
                on_epoch(trial, epoch, val_acc)

        try:
            result = distill(model, data, recipe, device, teacher, seed=seed,
                             temperature=choice.temperature, alpha=choice.alpha,
                             on_epoch=epoch_done, on_batches=on_batches)
        except NonFiniteLossError as e:
            raise _prune(trial, f"non-finite loss: {e}") from None
        except (torch.OutOfMemoryError, MemoryError):
            raise _prune(trial, f"out of memory on {device} with {params:,} params") from None
        except RuntimeError as e:  # the CPU allocator's out-of-memory is a plain RuntimeError
            if not _is_out_of_memory(e):
                raise
            raise _prune(trial, f"out of memory on {device} with {params:,} params") from None

        # Evaluate: validation scores the trial; test accuracy is recorded, never selected on.
        test_acc = accuracy(model, data.test, device)
        set_trial(trial, val_accuracy=result.val_accuracy, test_accuracy=test_acc,
                  train_seconds=round(result.seconds, 3), epochs=result.epochs_run)
        return (result.val_accuracy, *(float(known[c]) for c in costs))

    return objective
