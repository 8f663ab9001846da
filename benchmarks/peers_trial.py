"""One kdsearch student as a Syne Tune trial: the training script of bench_peers.py's `moasha`.

Syne Tune's local backend starts this script once per trial, with
`--st_config_json_filename <trial>/config.json --st_checkpoint_dir <trial>/checkpoints`
(bench_peers.py sets `pass_args_as_json`, so the config keeps its types). The config holds the
student's search-space values under the names `suggest_student` gives them, plus `kd_context`:
a JSON file written by bench_peers.py holding the study (as `StudySpec` JSON), the data and
cache folders and the torch threads.

The trial is kdsearch's own objective (`make_objective`: the same builder, the same engine,
the same cached teacher logits), run on an in-memory Optuna trial holding the config, with
an epoch hook that reports `epoch`, `error` (1 - validation accuracy) and `params` to Syne
Tune. MOASHA stops a trial by killing this process; a trial that reaches the last epoch
reports it and returns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the kdsearch CLI does, before torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--st_config_json_filename", required=True)
    ap.add_argument("--st_checkpoint_dir", default="")
    args, _ = ap.parse_known_args()
    config = json.loads(Path(args.st_config_json_filename).read_text())
    context = json.loads(Path(config.pop("kd_context")).read_text())
    # The trial folder is <tuner>/<trial_id>/: the trial id seeds the student, as the trial
    # number does in kdsearch.
    trial_id = int(Path(args.st_config_json_filename).parent.name)

    import optuna
    import torch
    from syne_tune import Reporter

    from kdsearch.options import Options
    from kdsearch.search.objective import make_objective
    from kdsearch.spec import StudySpec
    from kdsearch.study import coordination
    from kdsearch.study.runner import load_logged
    from kdsearch.training.engine import resolve_device

    torch.set_num_threads(context["threads"])
    spec = StudySpec.model_validate(context["spec"])
    data_dir = context["data_dir"]
    opts = Options(data_dir=Path(data_dir) if data_dir else None,
                   cache_dir=Path(context["cache_dir"]), offline=True, device="cpu")
    device = resolve_device(opts.device)
    data = load_logged(spec, opts, log=lambda m: None)
    teacher = coordination.obtain_teacher(spec, data, opts, device, log=lambda m: None)
    report = Reporter()

    def on_epoch(trial: optuna.Trial, epoch: int, val_acc: float) -> None:
        report(epoch=epoch, error=1.0 - val_acc, params=float(trial.user_attrs["params"]))

    objective = make_objective(spec, data, teacher, device, on_epoch=on_epoch)
    # The config as an Optuna trial numbered by the trial id (kdsearch's objective reads the
    # number and writes its curve to the trial's storage): an in-memory study, the config queued.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(trial_id):
        study.ask()
    study.enqueue_trial(config)
    trial = study.ask()
    try:
        objective(trial)
    except optuna.TrialPruned:
        # Refused before training (over max_params, unbuildable) or a non-finite loss. Syne
        # Tune's tuner raises on a trial that ends without a result, so it gets the worst one,
        # marked `refused` (bench_peers counts it as a finished trial, never on the front).
        report(epoch=spec.student.train.epochs, error=1.0, refused=1,
               params=float(trial.user_attrs.get("params", 1e12)))


if __name__ == "__main__":
    main()
