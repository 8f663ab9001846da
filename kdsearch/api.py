"""kdsearch from Python: the command line's jobs as functions, for notebooks and scripts.

    import kdsearch

    study = kdsearch.run_study("smoke", storage="sqlite:///smoke.db")   # an optuna.Study
    kdsearch.front("smoke", storage="sqlite:///smoke.db")       # = kdsearch best --format json
    kdsearch.trials("smoke", storage="sqlite:///smoke.db")      # every trial, as dicts
    kdsearch.compress_trial("smoke", "student/", trial=0, storage="sqlite:///smoke.db")
    model = kdsearch.load_model("student/")                     # a torch module, eval mode

The CLI is a thin layer over these functions, so both take the same route to the same results.
They read no environment variable: a notebook's settings are all in its calls. Pass
`env=os.environ` to honour KDSEARCH_STORAGE, KDSEARCH_CACHE_DIR and the rest as the CLI does.
Errors are `kdsearch.errors.KdsearchError` (one-line messages), as on the command line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdsearch.options import Options, available_cores, from_environment, select_device

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from kdsearch.compress import CompressResult
    from kdsearch.report.rows import Snapshot
    from kdsearch.spec import StudySpec

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _study_name(study: str, given: str | None = None, spec_name: str | None = None) -> str:
    """The storage name of a study: as given, else the study file's name, else its stem."""
    if given:
        return given
    if spec_name:
        return spec_name
    return Path(study).stem if study.endswith(".toml") else study


def load_spec(study: str, seed: int | None = None) -> StudySpec:
    """A study file (a name in studies/ or a path to a .toml file), checked, seed overridden."""
    from kdsearch.spec import load_study

    spec = load_study(study)
    return spec.with_overrides(seed=seed) if seed is not None else spec


def options(*, storage: str | None = None, study_name: str = "", n_trials: int = 1,
            timeout: float | None = None, data_dir: str | Path | None = None,
            cache_dir: str | Path | None = None, device: str = "auto", workers: int = 1,
            artifact_dir: str | Path | None = None, env: Mapping[str, str] = {}) -> Options:
    """Every setting of one job: the arguments given, then `env`, then the defaults. The device
    is checked against this machine here (a missing GPU or index is one line, not a CUDA error
    deep in training), and a `cuda:N` becomes torch's current device."""
    base = from_environment(env)
    return Options(
        storage=storage or base.storage, study_name=study_name, n_trials=n_trials,
        timeout=timeout, data_dir=Path(data_dir).expanduser() if data_dir else None,
        data_home=base.data_home,
        cache_dir=Path(cache_dir).expanduser() if cache_dir else base.cache_dir,
        offline=base.offline, device=select_device(device),
        threads=base.threads or available_cores(), heartbeats=base.heartbeats,
        artifact_dir=Path(artifact_dir).expanduser() if artifact_dir else base.artifact_dir,
        workers=workers)


def _threads(opts: Options) -> None:
    from kdsearch.install import check_torchvision

    check_torchvision()
    import torch

    torch.set_num_threads(opts.threads)


def run_study(study: str, *, storage: str | None = None, study_name: str | None = None,
              n_trials: int | None = None, timeout: float | None = None, seed: int | None = None,
              data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
              device: str = "auto", workers: int = 1, artifact_dir: str | Path | None = None,
              env: Mapping[str, str] = {}, log: Log = _stderr) -> optuna.Study:
    """Train (or reuse) the study's teacher, then run trials until the study in `storage` holds
    `n_trials` finished ones (default: the study file's); running it again resumes.

    `study` is a name in studies/ (`"cifar_compress"`, `"smoke"`) or a path to a .toml file.
    `workers` > 1 runs that many `kdsearch run-study` processes on the storage, the cores
    divided among them, with `env` as their environment (so pass `env=os.environ`). Returns
    the Optuna study.
    """
    result, code, _ = run_study_job(study, storage=storage, study_name=study_name,
                                    n_trials=n_trials, timeout=timeout, seed=seed,
                                    data_dir=data_dir, cache_dir=cache_dir, device=device,
                                    workers=workers, artifact_dir=artifact_dir, env=env, log=log)
    if code != 0:
        from kdsearch.errors import KdsearchError

        error = KdsearchError(f"a worker of '{result.study_name}' exited with code {code}")
        error.exit_code = code
        raise error
    return result


def run_study_job(study: str, *, storage: str | None, study_name: str | None,
                  n_trials: int | None, timeout: float | None, seed: int | None,
                  data_dir: str | Path | None, cache_dir: str | Path | None, device: str,
                  workers: int, artifact_dir: str | Path | None, env: Mapping[str, str],
                  log: Log, worker: str = "") -> tuple[optuna.Study, int, StudySpec]:
    """`run_study` for the CLI: the study, the worst worker's exit code (the CLI prints the
    table before it exits with it) and the spec that ran. `worker` names one process of
    `--workers` (its parent prints the one closing summary)."""
    from kdsearch.errors import UsageError
    from kdsearch.search.sweep import trials_wanted

    if workers > 1 and not env:
        raise UsageError("run_study(workers > 1) starts processes with env as their "
                         "environment: pass env=os.environ")
    spec = load_spec(study, seed)
    wanted, note = trials_wanted(spec, n_trials)
    if note:
        log(f"note: {note}")
    opts = options(storage=storage, study_name=_study_name(study, study_name, spec.name),
                   n_trials=wanted, timeout=timeout or spec.search.timeout, data_dir=data_dir,
                   cache_dir=cache_dir, device=device, workers=workers,
                   artifact_dir=artifact_dir, env=env)
    _threads(opts)
    if opts.workers > 1:
        from kdsearch.study.runner import closing_summary
        from kdsearch.study.storage import load_study
        from kdsearch.study.workers import run_workers

        start = time.monotonic()
        code = run_workers(study, spec, opts, seed, env, log=log)
        result = load_study(opts.storage, opts.study_name)
        for line in closing_summary(result, time.monotonic() - start):
            log(line)
        return result, code, spec
    from kdsearch.report.dashboard import publish_learning_curves
    from kdsearch.study.runner import run_study as run

    return run(spec, opts, log=log, after_trial=publish_learning_curves, worker=worker,
               summary=not worker), 0, spec


def read(study: str | optuna.Study, *, storage: str | None = None, study_name: str | None = None,
         env: Mapping[str, str] = {}) -> Snapshot:
    """A stored study's trials and attributes, read once (what every report is drawn from).
    `study` is a study's name (or its study file's name or path), or an `optuna.Study`."""
    from kdsearch.report.rows import read_rows

    if not isinstance(study, str):
        return read_rows(study)
    from kdsearch.study.storage import load_study

    return read_rows(load_study(storage or from_environment(env).storage,
                                _study_name(study, study_name)))


def front(study: str | optuna.Study, *, storage: str | None = None,
          study_name: str | None = None, env: Mapping[str, str] = {}) -> list[dict[str, Any]]:
    """The Pareto front, smallest first, as `kdsearch best --format json` prints it: one dict
    per trial with the keys `kdsearch.report.tables.FRONT_KEYS`."""
    from kdsearch.report.tables import front_records

    return front_records(read(study, storage=storage, study_name=study_name, env=env))


def trials(study: str | optuna.Study, *, storage: str | None = None,
           study_name: str | None = None, env: Mapping[str, str] = {}) -> list[dict[str, Any]]:
    """Every trial by number, finished or not, as plain dicts: its `state` (COMPLETE, PRUNED,
    FAIL, RUNNING), whether it is on the front (`pareto`), its accuracies and costs (None where
    not measured), the architecture (one line), T, alpha, the baseline label and, for a pruned
    trial, why it stopped. Ready for `pandas.DataFrame(kdsearch.trials(...))`."""
    snap = read(study, storage=storage, study_name=study_name, env=env)
    return [{"number": r.number, "state": r.state, "pareto": r.pareto,
             "val_accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
             "params": r.params, "macs": r.macs, "latency_ms": r.latency_ms,
             "architecture": r.arch, "temperature": r.temperature, "alpha": r.alpha,
             "baseline": r.baseline, "stopped_reason": r.record.stopped_reason}
            for r in snap.rows]


def compress_trial(study: str | optuna.Study, out: str | Path, *, trial: int | None = None,
                   max_params: int | None = None, max_macs: int | None = None,
                   max_latency_ms: float | None = None, epochs: int | None = None,
                   lr_schedule: str | None = None, seed: int | None = None,
                   storage: str | None = None,
                   study_name: str | None = None, data_dir: str | Path | None = None,
                   cache_dir: str | Path | None = None, device: str = "auto",
                   env: Mapping[str, str] = {}, command: str = "",
                   log: Log = _stderr) -> CompressResult:
    """Retrain one trial's student on train + validation and write a model folder to `out`
    (weights, architecture.json, model.pt2, model.onnx, MODEL_CARD.md).

    Give `trial`, or limits (`max_params`, `max_macs`, `max_latency_ms`; all must hold) to take
    the best validation accuracy within them. `command` is recorded on the model card. A
    call stopped part-way resumes from its last finished epoch when made again with the same
    `out` (the state waits beside it in `<out>.partial.pt`).
    """
    from kdsearch.compress import compress
    from kdsearch.errors import UsageError

    limits = [max_params, max_macs, max_latency_ms]
    if (trial is None) == all(v is None for v in limits):
        raise UsageError("compress: expected --trial N or limits (--max-params, --max-macs, "
                         "--max-latency-ms), found " + ("both" if trial is not None
                                                         else "neither"))
    if isinstance(study, str):
        from kdsearch.study.storage import load_study

        study = load_study(storage or from_environment(env).storage,
                           _study_name(study, study_name))
    opts = options(storage=storage, data_dir=data_dir, cache_dir=cache_dir, device=device,
                   env=env)
    _threads(opts)
    return compress(study, Path(out), number=trial, max_params=max_params, max_macs=max_macs,
                    max_latency_ms=max_latency_ms, epochs=epochs, lr_schedule=lr_schedule,
                    seed=seed, opts=opts, command=command or f"kdsearch.compress_trial({study.study_name!r})",
                    log=log)


def evaluate(folder: str | Path, *, data_dir: str | Path | None = None,
             cache_dir: str | Path | None = None, device: str = "auto",
             env: Mapping[str, str] = {}) -> dict[str, Any]:
    """Test accuracy of a folder written by `compress_trial`, of its weights and of each
    standalone copy in it (`exported`), beside the accuracy its card states."""
    from kdsearch.compress import evaluate as evaluate_folder

    opts = options(data_dir=data_dir, cache_dir=cache_dir, device=device, env=env)
    _threads(opts)
    return evaluate_folder(Path(folder), opts)


def load_model(folder: str | Path) -> nn.Module:
    """The model in a folder written by `compress_trial`, in eval mode on the CPU. It takes raw
    uint8 images (N, C, H, W) and normalises them itself. The weights are read with
    `torch.load(weights_only=True)`, which unpickles nothing that could run code."""
    from kdsearch.compress import load_model as load

    return load(Path(folder))[0]
