"""`kdsearch compress`: turn a trial into a standalone model folder, and `evaluate` one.

The chosen trial's architecture is rebuilt from its user attributes and distilled again
from the cached teacher, this time on train + validation (nothing is selected any more, so
the validation images are better used for training) for the full budget. The test set is
read exactly once, at the end. The folder needs neither the study nor kdsearch's storage:

    model.pt             state dict (torch.load(..., weights_only=True))
    architecture.json    architecture, input shape, classes, normalisation, data spec
    model.torchscript.pt TorchScript (torch.jit.load; no kdsearch needed)
    model.onnx           where the ONNX exporter works here
    MODEL_CARD.md        accuracy, size, speed, the teacher's numbers, the exact command
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from kdsearch.architecture import Arch, parse_arch
from kdsearch.errors import KdsearchError
from kdsearch.objectives import COST
from kdsearch.options import Options
from kdsearch.record import TeacherRecord, TrialRecord, stored_spec
from kdsearch.spec import DataSpec
from kdsearch.study.coordination import obtain_teacher
from kdsearch.training.data import Dataset, Split, load_data
from kdsearch.training.engine import accuracy, resolve_device
from kdsearch.training.models import build_model, count_macs, count_params
from kdsearch.training.student import distill, student_seed

FORMAT = 1  # of architecture.json
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


def trial_arch(trial: FrozenTrial) -> Arch:
    return parse_arch(TrialRecord.of(trial).architecture)


def test_identity(split: Split) -> str:
    """A hash of the test images and labels: `evaluate` checks it sees the same test set."""
    h = hashlib.sha256(str(tuple(split.x.shape)).encode())
    h.update(split.x.contiguous().numpy().tobytes())
    h.update(split.y.contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


@torch.inference_mode()
def cpu_latency(model: nn.Module, input_shape: tuple[int, int, int], repeats: int = 50,
                batch: int = 256) -> dict[str, float]:
    """Milliseconds per image on the CPU: one image at a time (median), and in a batch."""
    model = model.cpu().eval()
    threads = torch.get_num_threads()
    one = torch.randint(0, 256, (1, *input_shape), dtype=torch.uint8)
    many = torch.randint(0, 256, (batch, *input_shape), dtype=torch.uint8)
    for _ in range(5):  # warm-up: allocator, kernels
        model(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(one)
        times.append(time.perf_counter() - start)
    model(many)
    start = time.perf_counter()
    for _ in range(3):
        model(many)
    batched = (time.perf_counter() - start) / (3 * batch)
    return {"batch1_ms": statistics.median(times) * 1e3,
            f"batch{batch}_ms_per_image": batched * 1e3, "threads": threads}


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(model.cpu().eval(), example)
            scripted.save(str(path))
        return None
    except Exception as e:  # noqa: BLE001 - an optional artefact; say why and go on
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    try:
        # One self-contained file (students are small), and no exporter chatter on stdout.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.cpu().eval(), (example,), str(path), input_names=["images"],
                              output_names=["logits"], verbose=False, external_data=False,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        return None
    except Exception as e:  # noqa: BLE001 - ONNX needs the optional onnx/onnxscript packages
        path.unlink(missing_ok=True)
        first = str(e).splitlines()[0][:120] if str(e) else ""
        return f"{type(e).__name__}: {first} (pip install onnx onnxscript to get model.onnx)"


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


def compress(study: optuna.Study, out: Path, *, number: int | None = None,
             max_params: int | None = None, max_macs: int | None = None,
             max_latency_ms: float | None = None, epochs: int | None = None,
             lr_schedule: str | None = None, opts: Options = Options(),
             command: str = "", log: Callable[[str], None] = print) -> CompressResult:
    """Retrain the chosen trial's student on train + validation and write the model folder."""
    from tqdm import tqdm

    # Pick: the trial, its architecture and distillation settings, the study's recipe.
    trial = pick_trial(study, number, max_params, max_macs, max_latency_ms)
    spec = stored_spec(study)
    arch = trial_arch(trial)
    searched = TrialRecord.of(trial)
    temperature = float(trial.params.get("temperature", 1.0))
    alpha = float(trial.params.get("alpha", 0.0))
    # The study's recipe at a longer budget; a decaying schedule may be asked for, since a
    # constant rate that suited the search's short budget can overfit a longer one.
    recipe = spec.student.train.model_copy(
        update={"epochs": epochs or spec.student.train.epochs * EPOCH_FACTOR,
                "lr_schedule": lr_schedule or spec.student.train.lr_schedule})
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
    seed = student_seed(spec.seed, trial.number)
    torch.manual_seed(seed)
    model = build_model(arch, data.input_shape, data.num_classes, data.mean, data.std)
    log(f"retraining on {len(merged):,} train+val images for {recipe.epochs} epochs "
        f"({'distilled' if alpha > 0 else 'plain'}, {recipe.lr_schedule} learning rate, "
        f"seed {seed})")
    bar = tqdm(total=recipe.epochs, desc="compress", unit="epoch", dynamic_ncols=True,
               file=__import__("sys").stderr)

    def progress(epoch: int, loss: float, fit_acc: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", train_val_acc=f"{fit_acc:.4f}")
        bar.update(1)

    try:
        result = distill(model, data, recipe, device, teacher, seed=seed,
                         temperature=temperature, alpha=alpha, train_split=merged,
                         teacher_logits=merged_logits, progress=progress)
    finally:
        bar.close()

    # Evaluate once on the test set: the number the card reports.
    test_acc = accuracy(model, data.test, device)
    model = model.cpu().eval()
    params = count_params(model)
    macs = count_macs(arch, data.input_shape, data.num_classes)
    latency = cpu_latency(model, data.input_shape)

    # Write the folder.
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    meta = {
        "format": FORMAT, "architecture": arch.model_dump(mode="json"),
        "description": arch.describe(), "input_shape": list(data.input_shape),
        "input_dtype": "uint8", "num_classes": data.num_classes,
        "mean": list(data.mean), "std": list(data.std),
        "data": spec.data.model_dump(mode="json"), "dataset": data.name,
        "test_identity": test_identity(data.test), "test_accuracy": test_acc,
        "params": params, "macs": macs, "study": study.study_name, "trial": trial.number,
        "temperature": temperature, "alpha": alpha, "epochs": result.epochs_run,
        "lr_schedule": recipe.lr_schedule, "train_images": len(merged),
    }
    (out / "architecture.json").write_text(json.dumps(meta, indent=2))
    files, skipped = ["model.pt", "architecture.json"], {}
    example = data.test.x[:2].cpu()
    for name, exporter in (("model.torchscript.pt", _export_torchscript),
                           ("model.onnx", _export_onnx)):
        why = exporter(model, example, out / name)
        if why is None:
            files.append(name)
        else:
            skipped[name] = why
            log(f"{name} not written: {why}")
    card = model_card(meta, teacher.record, trial, latency, result.seconds, files, skipped, command)
    (out / "MODEL_CARD.md").write_text(card)
    files.append("MODEL_CARD.md")
    return CompressResult(out, trial.number, test_acc, params, macs, result.epochs_run,
                          result.seconds, files, skipped)


def model_card(meta: dict, teacher: TeacherRecord, trial: FrozenTrial, latency: dict,
               seconds: float, files: list[str], skipped: dict[str, str], command: str) -> str:
    ratio = teacher.params / meta["params"]
    mac_ratio = teacher.macs / meta["macs"] if meta["macs"] else float("inf")
    batch_key = next(k for k in latency if k.startswith("batch") and k != "batch1_ms")
    lines = [
        f"# {meta['description']} ({meta['dataset']}, from study '{meta['study']}' trial "
        f"{meta['trial']})", "",
        "| | student | teacher |", "|---|---:|---:|",
        f"| test accuracy | {meta['test_accuracy']:.4f} | {teacher.test_accuracy:.4f} |",
        f"| parameters | {meta['params']:,} | {teacher.params:,} |",
        f"| MACs per image | {meta['macs']:,} | {teacher.macs:,} |",
        f"| architecture | `{meta['description']}` | `{teacher.description}` |", "",
        f"Compression: **{ratio:.1f}x fewer parameters**, {mac_ratio:.1f}x fewer MACs than the "
        f"teacher; test accuracy {100 * (meta['test_accuracy'] - teacher.test_accuracy):+.2f} "
        "points.", "",
        f"CPU latency per image ({latency['threads']} thread(s), measured at export): "
        f"{latency['batch1_ms'] * 1e3:.0f} µs one image at a time (median of 50), "
        f"{latency[batch_key] * 1e3:.2f} µs in batches of {batch_key[5:].split('_')[0]}.", "",
        "## How it was made", "",
        f"- Search: trial {trial.number} scored val acc {TrialRecord.of(trial).val_accuracy:.4f} "
        f"after {TrialRecord.of(trial).epochs or '?'} epochs on the training split.",
        f"- Retrained from scratch with knowledge distillation (T = {meta['temperature']:.2f}, "
        f"alpha = {meta['alpha']:.2f}; alpha 0 is plain training) on train + validation "
        f"({meta['train_images']:,} images) for {meta['epochs']} epochs "
        f"({meta.get('lr_schedule', 'constant')} learning rate), {seconds:.1f} s.",
        "- Evaluated once on the test set; nothing was selected on it.", "",
        "```", command or "kdsearch compress ...", "```", "",
        "## Files", "",
        *[f"- `{f}`" for f in files],
        *[f"- `{f}` not written: {why}" for f, why in skipped.items()],
        "", "Inputs are raw uint8 images (N, C, H, W) = "
        f"(N, {', '.join(map(str, meta['input_shape']))}); the model normalises them itself. "
        "Check the folder with `kdsearch evaluate DIR`; load it without kdsearch with "
        "`torch.jit.load('model.torchscript.pt')`.", "",
    ]
    return "\n".join(lines)


def load_model(folder: Path) -> tuple[nn.Module, dict]:
    """The model in an exported folder and its architecture.json."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "architecture.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KdsearchError(f"{folder}: not a kdsearch model folder (architecture.json: "
                            f"{getattr(e, 'strerror', None) or e})") from None
    if meta.get("format") != FORMAT:
        raise KdsearchError(f"{folder}/architecture.json: format {meta.get('format')!r}, "
                            f"expected {FORMAT}")
    arch = parse_arch(meta["architecture"])
    model = build_model(arch, tuple(meta["input_shape"]), meta["num_classes"],
                        tuple(meta["mean"]), tuple(meta["std"]))
    try:
        state = torch.load(folder / "model.pt", weights_only=True, map_location="cpu")
        model.load_state_dict(state)
    except Exception as e:  # missing, truncated or mismatched weights
        raise KdsearchError(f"{folder}/model.pt: cannot load ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return model.eval(), meta


def evaluate(folder: Path, opts: Options = Options()) -> dict:
    """Test accuracy of an exported folder (and of its TorchScript copy), without the study."""
    model, meta = load_model(folder)
    data: Dataset = load_data(DataSpec.model_validate(meta["data"]), opts.data_dir,
                              opts.cache_dir, data_home=opts.data_home, offline=opts.offline)
    identity = test_identity(data.test)
    device = resolve_device(opts.device)
    acc = accuracy(model.to(device), data.test, device)
    out = {"test_accuracy": acc, "card_test_accuracy": meta["test_accuracy"],
           "n_test": len(data.test), "same_test_set": identity == meta["test_identity"],
           "description": meta["description"], "params": meta["params"]}
    script = Path(folder) / "model.torchscript.pt"
    if script.is_file():
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(script), map_location="cpu")
        out["torchscript_test_accuracy"] = accuracy(scripted, data.test, torch.device("cpu"))
    return out
