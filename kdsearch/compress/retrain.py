"""`kdsearch compress`: turn a trial into a standalone model folder.

The chosen trial's architecture is rebuilt from its user attributes and distilled again
from the cached teacher, this time on train + validation (nothing is selected any more, so
the validation images are better used for training) for the full budget. The test set is
read exactly once, at the end. On a CPU the retraining takes hours, so a stopped one resumes
from its last finished epoch (`partial_path`). The folder (see `model_folder`) needs neither
the study nor kdsearch's storage; `kdsearch evaluate` (see `evaluate`) holds it to its card.

`torch.export` replaces TorchScript, which current PyTorch deprecates (`torch.jit.load` warns).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from kdsearch import objectives
from kdsearch.architecture import Arch, parse_arch
from kdsearch.compress.card import model_card
from kdsearch.compress.folder import (
    FORMAT,
    check_out,
    export_onnx,
    export_pt2,
    test_identity,
    write_folder,
)
from kdsearch.errors import KdsearchError
from kdsearch.objectives import COST
from kdsearch.options import Options
from kdsearch.record import TrialRecord, stored_spec
from kdsearch.search.space import suggest_recipe
from kdsearch.spec import StudentRecipe, StudySpec
from kdsearch.study.coordination import obtain_teacher
from kdsearch.training.data import Dataset, Split, load_data
from kdsearch.training.distill import KD
from kdsearch.training.engine import TrainResult, accuracy, resolve_device
from kdsearch.training.latency import cpu_latency, onnx_latency
from kdsearch.training.models import build_model, count_macs, count_params
from kdsearch.training.student import distill, student_seed
from kdsearch.training.teacher import Teacher
from kdsearch.training.train_state import ResumeError, load_state, save_state
from kdsearch.training.views import ViewSet

EPOCH_FACTOR = 2  # default retraining budget: the study's per-trial student epochs times this


def pick_trial(study: optuna.Study, number: int | None = None,
               max_params: int | None = None, max_macs: int | None = None,
               max_latency_ms: float | None = None) -> FrozenTrial:
    """Trial `number`, or the best val accuracy within every limit given (params, MACs, the
    latency measured in the search); a tie goes to the fewer params, then the earlier trial."""
    done = [t for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
            if TrialRecord.of(t).architecture is not None]
    if number is not None:
        for t in study.get_trials(deepcopy=False):
            if t.number == number:
                if t.state != TrialState.COMPLETE or TrialRecord.of(t).architecture is None:
                    raise KdsearchError(f"trial {number} of '{study.study_name}' is "
                                        f"{t.state.name.lower()}, not complete: pick another "
                                        "(see 'kdsearch best')")
                return t
        raise KdsearchError(f"study '{study.study_name}' has no trial {number} "
                            f"(it has {len(study.trials)})")
    limits = {k: v for k, v in (("params", max_params), ("macs", max_macs),
                                ("latency_ms", max_latency_ms)) if v is not None}
    if "latency_ms" in limits and done and all(TrialRecord.of(t).latency_ms is None for t in done):
        raise KdsearchError(f"--max-latency-ms: study '{study.study_name}' measured no latency "
                            "(its trials are timed only with latency_ms among [search] objectives "
                            "or a max_latency_ms): use --max-params or --max-macs")

    def within(t: FrozenTrial) -> bool:
        r = TrialRecord.of(t)
        return all(getattr(r, k) is not None and getattr(r, k) <= v for k, v in limits.items())

    fits = [t for t in done if within(t)]
    if not fits:
        said = " and ".join(f"<= {COST[k].format(v)}" for k, v in limits.items())
        cheapest = {k: min((getattr(TrialRecord.of(t), k) for t in done
                            if getattr(TrialRecord.of(t), k) is not None), default=None)
                    for k in limits}
        known = ", ".join(COST[k].format(v) for k, v in cheapest.items() if v is not None)
        raise KdsearchError(
            f"no complete trial of '{study.study_name}' has {said}"
            + (f" (the least of each: {known})" if known else " (none complete)"))
    return max(fits, key=lambda t: (TrialRecord.of(t).val_accuracy, -TrialRecord.of(t).params,
                                    -t.number))


def study_costs(study: optuna.Study) -> tuple[str, ...]:
    """The study's cost objectives, from its metric names (params for a study made by hand)."""
    return (objectives.from_metric_names(study.metric_names, len(study.directions))
            or objectives.DEFAULT)


def dominating_trial(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """The complete trial that dominates `trial` (no worse on every cost objective of the
    study, higher val accuracy), the most accurate of them if several do, else None:
    compressing a dominated student gives away accuracy for nothing, which a user picking by
    trial number may not see. A trial missing a cost (latency not measured) is not compared.
    """
    costs = study_costs(study)
    mine = TrialRecord.of(trial)
    own = objectives.costs_of(mine, costs)
    if own is None or mine.val_accuracy is None:
        return None

    def dominates(t: FrozenTrial) -> bool:
        r = TrialRecord.of(t)
        theirs = objectives.costs_of(r, costs)
        return (t.number != trial.number and r.architecture is not None and theirs is not None
                and r.val_accuracy is not None and r.val_accuracy > mine.val_accuracy
                and all(c <= m for c, m in zip(theirs, own, strict=True)))

    better = [t for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
              if dominates(t)]
    if not better:
        return None
    return max(better, key=lambda t: (TrialRecord.of(t).val_accuracy,
                                      -objectives.costs_of(TrialRecord.of(t), costs)[0],
                                      -t.number))


def trial_arch(trial: FrozenTrial) -> Arch:
    return parse_arch(TrialRecord.of(trial).architecture)


@dataclasses.dataclass(frozen=True)
class CompressResult:
    out: Path
    trial: int
    test_accuracy: float
    params: int
    macs: int
    epochs: int
    seconds: float
    files: list[str]
    skipped: dict[str, str]  # file -> why it was not written


def retrain_recipe(spec: StudySpec, trial: FrozenTrial, epochs: int | None = None,
                   lr_schedule: str | None = None) -> StudentRecipe:
    """The study's recipe at a longer budget, for the final model.

    A decaying schedule may be asked for, since a constant rate that suited the search's short
    budget can overfit a longer one. The learning rate and batch size are the trial's own where
    the study searched them. The search's cheap early epochs (`early_fraction`) only rank
    students, so the final model trains on every image from its first epoch.
    """
    trial_recipe = suggest_recipe(optuna.trial.FixedTrial(trial.params), spec.student.train)
    return trial_recipe.model_copy(
        update={"epochs": epochs or trial_recipe.epochs * EPOCH_FACTOR,
                "lr_schedule": lr_schedule or trial_recipe.lr_schedule,
                "early_fraction": 1.0, "early_epochs": 0})


def compress(study: optuna.Study, out: Path, *, number: int | None = None,
             max_params: int | None = None, max_macs: int | None = None,
             max_latency_ms: float | None = None, epochs: int | None = None,
             lr_schedule: str | None = None, seed: int | None = None,
             opts: Options = Options(), command: str = "",
             log: Callable[[str], None] = print) -> CompressResult:
    """Retrain the chosen trial's student on train + validation and write the model folder.

    An --out that could not be replaced is refused first, before any training is spent.
    `seed` stands for the study's seed in the student's seed (weights and batch order), so the
    same trial compressed with seeds 0 and 1 gives two independent retrainings to average.
    """
    check_out(out)
    # Pick: the trial, its architecture and distillation settings, the study's recipe.
    trial = pick_trial(study, number, max_params, max_macs, max_latency_ms)
    better = dominating_trial(study, trial)
    if better is not None:
        b, t = TrialRecord.of(better), TrialRecord.of(trial)
        costs = " and ".join(f"{COST[c].format(getattr(b, c))} <= {COST[c].format(getattr(t, c))}"
                             for c in study_costs(study))
        log(f"warning: trial {trial.number} is dominated by trial {better.number} ({costs}, "
            f"val acc {b.val_accuracy:.4f} > {t.val_accuracy:.4f}); "
            f"compressing trial {trial.number} as asked")
    spec = stored_spec(study)
    arch = trial_arch(trial)
    searched = TrialRecord.of(trial)
    kd = KD.of(trial.params)
    temperature, alpha = kd.temperature, kd.alpha
    recipe = retrain_recipe(spec, trial, epochs, lr_schedule)
    log(f"trial {trial.number} of '{study.study_name}': {arch.describe()}, "
        f"{searched.params:,} params, val acc {searched.val_accuracy:.4f} "
        f"in the search; T={temperature:.2f} alpha={alpha:.2f}")

    # Data and the cached teacher (trained first if this machine has not got it yet).
    device = resolve_device(opts.device)
    data = load_data(spec.data, opts.data_dir, opts.cache_dir, data_home=opts.data_home,
                     offline=opts.offline)
    teacher = obtain_teacher(spec, data, opts, device, log)

    # Retrain on train + validation: no selection is left to do, so no image is held back.
    merged = Split(torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y]))
    merged_logits = torch.cat([teacher.logits["train"], teacher.logits["val"]])
    # With fixed views, the validation images bring their own views and the teacher's logits.
    merged_views = (ViewSet.cat([teacher.views["train"], teacher.views["val"]])
                    if recipe.views else None)
    seed = student_seed(spec.seed if seed is None else seed, trial.number)
    torch.manual_seed(seed)
    model = build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)
    log(f"retraining on {len(merged):,} train+val images for {recipe.epochs} epochs "
        f"({'distilled' if alpha > 0 else 'plain'}, {recipe.lr_schedule} learning rate, "
        f"seed {seed})")
    # Resumable: the state after each finished epoch waits beside --out until the folder is
    # written, for this trial, teacher and images only (an hour of CPU is not lost to a stop).
    partial = partial_path(out)
    owner = {"study": study.study_name, "trial": trial.number, "architecture": arch.describe(),
             "temperature": temperature, "alpha": alpha, "teacher": teacher.record.key,
             "train_images": len(merged)}
    state, problem = load_state(partial, recipe, seed, owner)
    if problem is not None:
        log(f"warning: compress checkpoint {partial} {problem}; retraining from the start")
        partial.unlink(missing_ok=True)
    if state is not None:
        log(f"resuming from epoch {state['epoch']} of {recipe.epochs} ({partial})")
    try:
        result = _retrain(model, data, recipe, device, teacher, seed, kd, merged, merged_logits,
                          merged_views, partial, owner, state, log)
    except ResumeError as e:  # the weights did not fit: the model may be half-overwritten
        log(f"warning: compress checkpoint {partial} does not fit ({e}); retraining from the "
            "start")
        partial.unlink(missing_ok=True)
        torch.manual_seed(seed)
        model = build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)
        result = _retrain(model, data, recipe, device, teacher, seed, kd, merged, merged_logits,
                          merged_views, partial, owner, None, log)

    # Evaluate once on the test set: the number the card reports.
    test_acc = accuracy(model, data.test, device)
    model = model.cpu().eval()
    params = count_params(model)
    macs = count_macs(arch, data.input_shape, data.num_classes)
    latency = cpu_latency(model, data.input_shape)

    # Write the folder: all of it or nothing (a temporary folder renamed into place).
    meta = {
        "format": FORMAT, "architecture": arch.model_dump(mode="json"),
        "description": arch.describe(), "input_shape": list(data.input_shape),
        "input_dtype": "uint8", "num_classes": data.num_classes,
        "mean": list(data.mean), "std": list(data.std),
        "data": spec.data.model_dump(mode="json"), "dataset": data.name,
        "test_identity": test_identity(data.test), "test_accuracy": test_acc,
        "params": params, "macs": macs, "study": study.study_name, "trial": trial.number,
        "temperature": temperature, "alpha": alpha, "epochs": result.epochs_run,
        "lr_schedule": recipe.lr_schedule, "train_images": len(merged), "seed": seed,
    }
    files, skipped = ["model.pt", "architecture.json"], {}

    def write(folder: Path) -> None:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   folder / "model.pt")
        for name, exporter in (("model.pt2", export_pt2), ("model.onnx", export_onnx)):
            why = exporter(model, data.input_shape, folder / name)
            if why is None:
                files.append(name)
            else:
                skipped[name] = why
                log(f"{name} not written: {why}")
        ort_latency = None
        if "model.onnx" in files:
            try:
                ort_latency = onnx_latency(folder / "model.onnx", data.input_shape)
            except Exception as e:  # noqa: BLE001 - the card says why instead of a number
                ort_latency = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        (folder / "architecture.json").write_text(json.dumps({**meta, "files": files}, indent=2))
        (folder / "MODEL_CARD.md").write_text(model_card(
            meta, teacher.record, trial, latency, result.seconds, files, skipped, command,
            ort_latency))
        files.append("MODEL_CARD.md")

    write_folder(out, write)
    partial.unlink(missing_ok=True)  # the folder holds the model now
    return CompressResult(out, trial.number, test_acc, params, macs, result.epochs_run,
                          result.seconds, files, skipped)


def partial_path(out: Path) -> Path:
    """Where `compress` keeps its retraining's last finished epoch: beside the folder."""
    out = Path(out).resolve()
    return out.with_name(f"{out.name}.partial.pt")


def _retrain(model: nn.Module, data: Dataset, recipe: StudentRecipe, device: torch.device,
             teacher: Teacher, seed: int, kd: KD, merged: Split, logits: torch.Tensor,
             views: ViewSet | None, partial: Path, owner: dict, state: dict | None,
             log: Callable[[str], None]) -> TrainResult:
    """The retraining, checkpointed after each epoch to `partial` and resumed from `state`."""
    from tqdm import tqdm

    first = state["epoch"] if state is not None else 0
    bar = tqdm(total=recipe.epochs, initial=first, desc="compress", unit="epoch",
               dynamic_ncols=True, file=sys.stderr)
    saved = [first]  # the epoch `partial` holds

    def progress(epoch: int, loss: float, fit_acc: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", train_val_acc=f"{fit_acc:.4f}")
        bar.update(1)

    def checkpoint(snapshot: dict) -> None:
        save_state(partial, {**snapshot, "owner": owner})
        saved[0] = snapshot["epoch"]

    try:
        return distill(model, data, recipe, device, teacher, seed=seed,
                       temperature=kd.temperature, alpha=kd.alpha, train_split=merged,
                       teacher_logits=logits, views=views, progress=progress,
                       checkpoint=checkpoint, resume=state)
    except ResumeError:  # found as the weights went in, before any epoch: nothing to report;
        raise  # the caller starts over
    except BaseException:
        bar.close()  # first: a line logged while it is open lands inside the bar
        if saved[0]:
            log(f"compress stopped: epochs 1-{saved[0]} of {recipe.epochs} are checkpointed in "
                f"{partial}; the same command resumes from there")
        raise
    finally:
        bar.close()


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    """`model_folder.export_pt2` for an example batch's image shape."""
    return export_pt2(model, tuple(example.shape[1:]), path)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    """`model_folder.export_onnx` for an example batch's image shape."""
    return export_onnx(model, tuple(example.shape[1:]), path)
