"""`kdsearch compress`: turn a trial into a standalone model folder, and `evaluate` one.

The chosen trial's architecture is rebuilt from its user attributes and distilled again
from the cached teacher, this time on train + validation (nothing is selected any more, so
the validation images are better used for training) for the full budget. The test set is
read exactly once, at the end. The folder needs neither the study nor kdsearch's storage:

    model.pt             state dict (torch.load(..., weights_only=True))
    architecture.json    architecture, input shape, classes, normalisation, data spec
    model.pt2            torch.export program (torch.export.load; no kdsearch needed)
    model.onnx           where the ONNX exporter works here (runs under ONNX Runtime)
    MODEL_CARD.md        accuracy, size, speed (PyTorch and ONNX Runtime), the teacher's
                         numbers, the exact command

`torch.export` replaces TorchScript, which current PyTorch deprecates (`torch.jit.load` warns).
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

from kdsearch import objectives
from kdsearch.architecture import Arch, parse_arch
from kdsearch.errors import KdsearchError
from kdsearch.objectives import COST
from kdsearch.options import Options
from kdsearch.record import TeacherRecord, TrialRecord, stored_spec
from kdsearch.search.space import suggest_recipe
from kdsearch.spec import DataSpec
from kdsearch.study.coordination import obtain_teacher
from kdsearch.training.data import Dataset, Split, load_data
from kdsearch.training.distill import KD
from kdsearch.training.engine import EVAL_BATCH, accuracy, resolve_device
from kdsearch.training.models import build_model, count_macs, count_params
from kdsearch.training.student import distill, student_seed
from kdsearch.training.views import ViewSet

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


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    """A `torch.export` program with a dynamic batch size, saved with `torch.export.save`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                model.cpu().eval(), (example,),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},))
            torch.export.save(program, str(path))
        return None
    except Exception as e:  # noqa: BLE001 - an optional artefact; say why and go on
        path.unlink(missing_ok=True)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def onnx_session(path: Path):
    """An ONNX Runtime session on the CPU with the threads torch was given, quiet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: graph-optimiser notes are not the user's
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def onnx_latency(path: Path, input_shape: tuple[int, int, int], repeats: int = 50,
                 batch: int = 256) -> dict[str, float]:
    """`cpu_latency`'s measurement, under ONNX Runtime: what a deployment without PyTorch sees."""
    import numpy as np

    session = onnx_session(path)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, *input_shape), dtype=np.uint8)
    many = rng.integers(0, 256, (batch, *input_shape), dtype=np.uint8)
    for _ in range(5):
        session.run(None, {name: one})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: one})
        times.append(time.perf_counter() - start)
    session.run(None, {name: many})
    start = time.perf_counter()
    for _ in range(3):
        session.run(None, {name: many})
    batched = (time.perf_counter() - start) / (3 * batch)
    return {"batch1_ms": statistics.median(times) * 1e3,
            f"batch{batch}_ms_per_image": batched * 1e3, "threads": torch.get_num_threads()}


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
    # The study's recipe at a longer budget; a decaying schedule may be asked for, since a
    # constant rate that suited the search's short budget can overfit a longer one.
    # The learning rate and batch size are the trial's own where the study searched them.
    trial_recipe = suggest_recipe(optuna.trial.FixedTrial(trial.params), spec.student.train)
    recipe = trial_recipe.model_copy(
        update={"epochs": epochs or trial_recipe.epochs * EPOCH_FACTOR,
                "lr_schedule": lr_schedule or trial_recipe.lr_schedule})
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
                         teacher_logits=merged_logits, views=merged_views, progress=progress)
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
    for name, exporter in (("model.pt2", _export_pt2), ("model.onnx", _export_onnx)):
        why = exporter(model, example, out / name)
        if why is None:
            files.append(name)
        else:
            skipped[name] = why
            log(f"{name} not written: {why}")
    ort_latency = None
    if "model.onnx" in files:
        try:
            ort_latency = onnx_latency(out / "model.onnx", data.input_shape)
        except Exception as e:  # noqa: BLE001 - the card says why instead of a number
            ort_latency = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    card = model_card(meta, teacher.record, trial, latency, result.seconds, files, skipped, command,
                      ort_latency)
    (out / "MODEL_CARD.md").write_text(card)
    files.append("MODEL_CARD.md")
    return CompressResult(out, trial.number, test_acc, params, macs, result.epochs_run,
                          result.seconds, files, skipped)


def _latency_line(engine: str, latency: dict) -> str:
    batch_key = next(k for k in latency if k.startswith("batch") and k != "batch1_ms")
    return (f"| {engine} | {latency['threads']} | {latency['batch1_ms'] * 1e3:.0f} µs | "
            f"{latency[batch_key] * 1e3:.2f} µs ({batch_key[5:].split('_')[0]} images) |")


def model_card(meta: dict, teacher: TeacherRecord, trial: FrozenTrial, latency: dict,
               seconds: float, files: list[str], skipped: dict[str, str], command: str,
               ort_latency: dict | None = None) -> str:
    ratio = teacher.params / meta["params"]
    mac_ratio = teacher.macs / meta["macs"] if meta["macs"] else float("inf")

    if ort_latency is None:
        ort_row = ["", "ONNX Runtime: not measured (no model.onnx)."]
    elif "error" in ort_latency:
        ort_row = ["", f"ONNX Runtime: not measured ({ort_latency['error']})."]
    else:
        ort_row = [_latency_line("ONNX Runtime (`model.onnx`)", ort_latency)]
    # A teacher file may not say its size (MACs 0, params 0 when its format hides them).
    t_params = f"{teacher.params:,}" if teacher.params else "unknown"
    t_macs = f"{teacher.macs:,}" if teacher.macs else "unknown"
    sizes = (f"Compression: **{ratio:.1f}x fewer parameters**"
             + (f", {mac_ratio:.1f}x fewer MACs" if teacher.macs else "") + " than the teacher; "
             if teacher.params else "Compression: the teacher's size is unknown; ")
    lines = [
        f"# {meta['description']} ({meta['dataset']}, from study '{meta['study']}' trial "
        f"{meta['trial']})", "",
        "| | student | teacher |", "|---|---:|---:|",
        f"| test accuracy | {meta['test_accuracy']:.4f} | {teacher.test_accuracy:.4f} |",
        f"| parameters | {meta['params']:,} | {t_params} |",
        f"| MACs per image | {meta['macs']:,} | {t_macs} |",
        f"| architecture | `{meta['description']}` | `{teacher.description}` |", "",
        f"{sizes}test accuracy {100 * (meta['test_accuracy'] - teacher.test_accuracy):+.2f} "
        "points." + (f" ({teacher.note}.)" if teacher.note else ""), "",
        "CPU latency per image, measured at export on this machine (one image at a time: "
        "median of 50 warm runs; batched: mean of 3 batches):", "",
        "| runtime | threads | one image | batched, per image |", "|---|---:|---:|---:|",
        _latency_line("PyTorch (`model.pt`)", latency), *ort_row, "",
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
        "`torch.export.load('model.pt2').module()` or "
        "`onnxruntime.InferenceSession('model.onnx')` (input `images`, output `logits`).", "",
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


@torch.inference_mode()
def _accuracy_of(forward: Callable[[torch.Tensor], torch.Tensor], split: Split) -> float:
    """Test accuracy of any callable from uint8 images to logits, on the CPU, in batches.

    `engine.accuracy` calls `.eval()`, which an exported program's module refuses (its mode
    was fixed at export), and ONNX Runtime has no module at all.
    """
    correct = 0
    for i in range(0, len(split), EVAL_BATCH):
        pred = torch.as_tensor(forward(split.x[i : i + EVAL_BATCH].cpu())).argmax(1)
        correct += int((pred == split.y[i : i + EVAL_BATCH].cpu()).sum())
    return correct / max(len(split), 1)


def _exported_forwards(folder: Path) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each standalone copy in the folder, loaded the way a user without kdsearch would."""
    folder = Path(folder)
    out: dict[str, Callable] = {}
    if (folder / "model.pt2").is_file():
        try:
            out["model.pt2"] = torch.export.load(str(folder / "model.pt2")).module()
        except Exception as e:
            raise KdsearchError(f"{folder}/model.pt2: cannot load ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if (folder / "model.onnx").is_file():
        try:
            session = onnx_session(folder / "model.onnx")
        except Exception as e:
            raise KdsearchError(f"{folder}/model.onnx: cannot load ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
        name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

        out["model.onnx"] = run_onnx
    if (folder / "model.torchscript.pt").is_file():  # folders written before model.pt2
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
            warnings.simplefilter("ignore")
            out["model.torchscript.pt"] = torch.jit.load(str(folder / "model.torchscript.pt"),
                                                         map_location="cpu").eval()
    return out


def evaluate(folder: Path, opts: Options = Options()) -> dict:
    """Test accuracy of an exported folder and of each standalone copy in it, without the
    study: `exported` maps model.pt2 / model.onnx to the accuracy each one scores."""
    model, meta = load_model(folder)
    data: Dataset = load_data(DataSpec.model_validate(meta["data"]), opts.data_dir,
                              opts.cache_dir, data_home=opts.data_home, offline=opts.offline)
    identity = test_identity(data.test)
    device = resolve_device(opts.device)
    acc = accuracy(model.to(device), data.test, device)
    out = {"test_accuracy": acc, "card_test_accuracy": meta["test_accuracy"],
           "n_test": len(data.test), "same_test_set": identity == meta["test_identity"],
           "description": meta["description"], "params": meta["params"]}
    out["exported"] = {name: _accuracy_of(forward, data.test)
                       for name, forward in _exported_forwards(folder).items()}
    return out
