"""Does Pareto-aware early stopping buy more search in the same time? Both ways, one run.

    python benchmarks/bench_search.py --budget 60

The same study (same sampler, same seed, same cached teacher) runs twice for `--budget`
seconds of wall clock each: once with `[search.early_stopping]` off, once on. Printed for
each: trials finished (complete + stopped), trials complete, and the hypervolume of the
validation Pareto front of the complete trials, in (validation accuracy, log10 params) with
the reference point (accuracy 0, REF_PARAMS params): the area between the front and that
point, as `kdsearch.report.hypervolume.hypervolume` defines it. REF_PARAMS is just above the largest
student the space can build, so every student counts.

The study: MLP students on MNIST (a 20,000-image training subset, 2,000 validation images)
when the data are found (--data-dir, default ../shared/data), else on a synthetic 16x16,
10-class set; 9 epochs per trial. Early stopping as shipped (the defaults): rungs after epochs
1 and 3 (9 is the last epoch, so it is no rung), a trial stopped when a trial no larger than
itself was more accurate at the rung and it is not among the best third there (front by
front), once 6 trials have reached it. A trial's clock (`--budget`)
starts after the teacher is cached. The run-study timeout stops *starting* trials at the
budget; a trial running then finishes, in both arms alike.

The last line is `trials_ratio=<a> hypervolume_ratio=<b>` (early stopping on / off).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the kdsearch CLI does, before torch

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdsearch.architecture import MLPArch  # noqa: E402
from kdsearch.options import Options
from kdsearch.report.hypervolume import hypervolume  # noqa: E402
from kdsearch.spec import parse_study  # noqa: E402
from kdsearch.study.runner import prepare, run_study  # noqa: E402
from kdsearch.training.models import arch_params  # noqa: E402

WIDTHS = [8, 16, 32, 64, 128, 256]
STUDY = """
description = "bench_search: MLP students, with and without early stopping"
seed = {seed}

[data]
{data}

[teacher]
family = "mlp"
hidden = [256, 256]
dropout = 0.2

[teacher.train]
epochs = 8
batch_size = 128
lr = 0.001

[student]
family = "mlp"
depth = {{ low = 1, high = 3 }}
width = {{ choices = {widths} }}
dropout = {{ choices = [0.0, 0.3, 0.6] }}
temperature = {{ low = 1.0, high = 20.0, log = true }}
alpha = {{ low = 0.0, high = 1.0 }}

[student.train]
epochs = 9
batch_size = 128
lr = {{ lr }}

[search]
n_trials = 100000
sampler = "tpe"

[search.early_stopping]  # the defaults: rungs [1, 3, 9], min_trials 6, quantile 0, min_dominators 1, keep 1/3
enabled = {enabled}
"""
MNIST = 'dataset = "mnist"\nval_size = 2000\ntrain_limit = 20000'
SYNTHETIC = (
    'dataset = "synthetic"\nval_size = 2000\nsynthetic = { n_train = 8000, n_test = 1000, '
    "channels = 1, height = 16, width = 16, num_classes = 10, noise = 3.0 }"
)


def study_text(enabled: bool, mnist: bool, seed: int) -> str:
    text = STUDY.format(
        seed=seed, data=MNIST if mnist else SYNTHETIC, widths=WIDTHS, enabled=str(enabled).lower()
    )
    return text.replace("{ lr }", "0.002")


def front_hypervolume(study: optuna.Study, ref_params: float) -> tuple[int, float]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    points = [(t.values[0], int(t.values[1])) for t in done]
    return len(done), hypervolume(points, ref_params)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per arm (default 60)")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data"),
        help="torchvision root with MNIST/raw (else synthetic data)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    args = ap.parse_args(argv)

    import torch

    from kdsearch.options import available_cores

    torch.set_num_threads(args.threads or available_cores())
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    mnist = (args.data_dir / "MNIST" / "raw").is_dir()
    work = Path(tempfile.mkdtemp(prefix="kd_bench_search_"))
    specs = {
        on: parse_study(study_text(on, mnist, args.seed), work / "bench.toml")
        for on in (False, True)
    }
    shape = (1, 28, 28) if mnist else (1, 16, 16)
    ref_params = arch_params(MLPArch(hidden=[max(WIDTHS)] * 3), shape, 10) + 1
    print(
        f"data: {'MNIST subset from ' + str(args.data_dir) if mnist else 'synthetic 16x16'}; "
        f"budget {args.budget:.0f} s per arm; {torch.get_num_threads()} threads; "
        f"hypervolume reference point: val_accuracy 0, params {ref_params:,} "
        f"(axes: accuracy, log10 params)",
        flush=True,
    )

    def opts(name: str, budget: float | None) -> Options:
        return Options(
            storage=f"sqlite:///{work}/bench.db",
            study_name=name,
            n_trials=100_000,
            timeout=budget,
            data_dir=args.data_dir if mnist else None,
            cache_dir=work / "cache",
            device="cpu",
        )

    prepare(specs[False], opts("warm", None), log=lambda m: None)  # the teacher, cached once
    results = {}
    for on in (False, True):
        name = "early_stopping_" + ("on" if on else "off")
        start = time.perf_counter()
        study = run_study(specs[on], opts(name, args.budget), log=lambda m: None)
        seconds = time.perf_counter() - start
        finished = len(
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        )
        stopped = sum("stopped_at_rung" in t.user_attrs for t in study.get_trials(deepcopy=False))
        complete, hv = front_hypervolume(study, ref_params)
        results[on] = (finished, hv)
        print(
            f"{name:18} {finished:4d} trials finished ({complete} complete, {stopped} stopped "
            f"early) in {seconds:.0f} s; hypervolume {hv:.4f}",
            flush=True,
        )
    (f_off, hv_off), (f_on, hv_on) = results[False], results[True]
    print(f"trials_ratio={f_on / max(f_off, 1):.2f} hypervolume_ratio={hv_on / hv_off:.3f}")


if __name__ == "__main__":
    main()
