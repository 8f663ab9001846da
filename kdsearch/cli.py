"""The `kdsearch` command line. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from kdsearch.arguments import build_parser
from kdsearch.errors import KdsearchError, one_line


def _spec(args):
    from kdsearch.spec import load_study

    spec = load_study(args.study)
    if getattr(args, "seed", None) is not None:
        spec = spec.with_overrides(seed=args.seed)
    return spec


def _study_name(args, spec_name: str | None = None) -> str:
    if args.study_name:
        return args.study_name
    if spec_name:
        return spec_name
    return Path(args.study).stem if args.study.endswith(".toml") else args.study


def _environment():
    """The environment, read once for the whole command (the only read of os.environ)."""
    from kdsearch.options import from_environment

    return from_environment(os.environ)


def _options(args, spec=None):
    """Every setting of the command: arguments over environment over defaults."""
    from kdsearch.options import Options, available_cores, select_device

    env = _environment()
    n_trials, timeout = 1, None
    if spec is not None:
        from kdsearch.search.sweep import trials_wanted

        n_trials, note = trials_wanted(spec, getattr(args, "n_trials", None))
        if note:
            print(f"note: {note}", file=sys.stderr)
        timeout = getattr(args, "timeout", None) or spec.search.timeout
    return Options(
        storage=getattr(args, "storage", None) or env.storage,
        study_name=_study_name(args, spec.name if spec is not None else None)
        if hasattr(args, "study") else "",
        n_trials=n_trials, timeout=timeout,
        data_dir=getattr(args, "data_dir", None), data_home=env.data_home,
        cache_dir=getattr(args, "cache_dir", None) or env.cache_dir, offline=env.offline,
        device=select_device(getattr(args, "device", "auto")), threads=env.threads or available_cores(),
        heartbeats=env.heartbeats,
        artifact_dir=getattr(args, "artifact_dir", None) or env.artifact_dir,
        workers=getattr(args, "workers", 1))


def _threads(opts) -> None:
    from kdsearch.install import check_torchvision

    check_torchvision()  # before torchvision's own 40-line traceback
    import torch

    torch.set_num_threads(opts.threads)


def cmd_run_study(args) -> int:
    from kdsearch import api
    from kdsearch.report.rows import read_rows
    from kdsearch.report.tables import best_table, sweep_table

    # A worker of `--workers` names itself on every line; its parent sums up the run.
    tag = f"[{args.worker}] " if args.worker else ""
    study, code, spec = api.run_study_job(
        args.study, storage=args.storage, study_name=args.study_name, n_trials=args.n_trials,
        timeout=args.timeout, seed=args.seed, data_dir=args.data_dir, cache_dir=args.cache_dir,
        device=args.device, workers=args.workers, artifact_dir=args.artifact_dir,
        env=os.environ, log=lambda m: print(tag + m, file=sys.stderr), worker=args.worker or "")
    snap = read_rows(study)  # the table and the sweep from one read
    print(best_table(snap))
    if spec.search.sampler == "grid" and args.workers == 1:
        print(f"\nsweep of '{study.study_name}' (mean ± sd over seeds):\n{sweep_table(snap)}")
    return code


def cmd_teacher(args) -> int:
    from kdsearch.study.runner import prepare_teacher

    spec = _spec(args)
    opts = _options(args, spec)
    _threads(opts)
    teacher = prepare_teacher(spec, opts, log=lambda m: print(m, file=sys.stderr))
    m = teacher.record
    print(f"teacher   {m.description}\nparams    {f'{m.params:,}' if m.params else 'unknown'}\n"
          f"macs      {f'{m.macs:,}' if m.macs else 'unknown'}\n"
          f"val_acc   {m.val_accuracy:.4f}\ntest_acc  {m.test_accuracy:.4f}\n"
          f"epochs    {m.epochs}\nseconds   {m.train_seconds}\ncache     {teacher.path}")
    if m.kind == "file":
        print(f"file      {m.file.get('path', '')} (sha256 {m.file.get('sha256', '')[:16]})")
    if m.note:
        print(f"note      {m.note}")
    if args.export is not None:
        from kdsearch.compress.teacher_export import export_teacher

        command = "kdsearch teacher " + " ".join(sys.argv[2:])
        for path in export_teacher(teacher, args.export, args.name or spec.name, command):
            print(f"exported  {path}")
    return 0


def _load(args, name: str | None = None):
    """The command's study, or the study `name` in the same storage."""
    from kdsearch.study.storage import load_study

    return load_study(args.storage or _environment().storage, name or _study_name(args))


def cmd_best(args) -> int:
    from kdsearch import api
    from kdsearch.report.tables import best_text

    print(best_text(api.read(args.study, storage=args.storage, study_name=args.study_name,
                             env=os.environ), args.format))
    return 0


def cmd_export(args) -> int:
    from kdsearch.report.compare import resolve_front
    from kdsearch.report.export import export
    from kdsearch.report.images import ImageExportError
    from kdsearch.report.rows import read_rows

    compare = [resolve_front(source, lambda name: read_rows(_load(args, name)))
               for source in args.compare]
    try:
        export(_load(args), args.out, compare=compare)
    except ImageExportError as e:
        raise KdsearchError(f"HTML, CSV and summary written; {e}") from None
    return 0


def cmd_studies(args) -> int:
    from kdsearch.spec import list_studies, load_study

    for name in list_studies():
        spec = load_study(name)
        print(f"{name:24} {spec.data.dataset:10} {spec.description}")
    return 0


def _command_line(argv: list[str]) -> str:
    """The command as typed (for a model card or a resume hint), any password masked."""
    import shlex

    from kdsearch.study.storage import redact

    return shlex.join(["kdsearch", *(redact(a) if "://" in a else a for a in argv)])


def cmd_compress(args) -> int:
    from kdsearch.compress import compress

    limits = [args.max_params, args.max_macs, args.max_latency_ms]
    if (args.trial is None) == all(v is None for v in limits):
        raise KdsearchError("compress: expected --trial N or limits (--max-params, --max-macs, "
                            "--max-latency-ms), found " + ("both" if args.trial is not None
                                                            else "neither"))
    study = _load(args)
    opts = _options(args)
    _threads(opts)
    r = compress(study, args.out, number=args.trial, max_params=args.max_params,
                 max_macs=args.max_macs, max_latency_ms=args.max_latency_ms,
                 epochs=args.epochs, lr_schedule=args.lr_schedule, seed=args.seed, opts=opts,
                 command=_command_line(args.argv),
                 log=lambda m: print(m, file=sys.stderr))
    print(f"trial {r.trial}: test accuracy {r.test_accuracy:.4f}, {r.params:,} params, "
          f"{r.macs:,} MACs, {r.epochs} epochs in {r.seconds:.1f} s")
    print(f"wrote {r.out}/: {', '.join(r.files)}")
    return 0


def cmd_evaluate(args) -> int:
    from kdsearch.compress.evaluate import evaluate

    opts = _options(args)
    _threads(opts)
    r = evaluate(args.folder, opts)
    print(f"{r['description']} ({r['params']:,} params): test accuracy {r['test_accuracy']:.4f} "
          f"on {r['n_test']:,} images (card: {r['card_test_accuracy']:.4f})")
    for name, acc in r["exported"].items():
        print(f"{name}: test accuracy {acc:.4f}")
    print(f"checked {', '.join(r['checked'])}: each within {100 * r['tolerance']:.2f} points of "
          + ("the card" if r["same_test_set"] else "model.pt"))
    if not r["same_test_set"]:
        print("warning: this test set differs from the one the card was measured on",
              file=sys.stderr)
    return 0


def cmd_dashboard(args) -> int:
    from kdsearch.report.dashboard import serve

    try:
        serve(args.storage or _environment().storage, args.host, args.port)
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    return 0


COMMANDS = {"run-study": cmd_run_study, "teacher": cmd_teacher, "best": cmd_best,
            "export": cmd_export, "studies": cmd_studies, "dashboard": cmd_dashboard,
            "compress": cmd_compress, "evaluate": cmd_evaluate}


def _quiet_libraries() -> None:
    """Optuna's experimental-API warnings and INFO logs are noise to a kdsearch user."""
    import warnings

    warnings.filterwarnings("ignore", message=".*experimental.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def _foreign_logs_off():
    """Keep the libraries' log lines and warnings (torch, ONNX Runtime's Python side,
    SQLAlchemy, Optuna) off the terminal for the command, then restore them.

    torch logs a whole traceback at WARNING before raising what kdsearch turns into one line
    (a corrupt .pt2), and SQLAlchemy's pool logs one at ERROR for a connection dropped
    mid-command; kdsearch speaks only through its own lines, never through `logging`, so
    nothing of its own is lost. Library warnings go to `logging` too, which is off.
    """
    import logging

    logging.disable(logging.ERROR)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        logging.disable(logging.NOTSET)


def main(argv: list[str] | None = None) -> int:
    # OMP_WAIT_POLICY=PASSIVE is already set: importing kdsearch sets it (kdsearch/__init__.py).
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    _quiet_libraries()
    from kdsearch.study.shutdown import ShutdownRequested

    worker = getattr(args, "worker", None)
    tag = f"[{worker}] " if worker else ""  # a worker of --workers: its parent says how to resume
    try:
        with _foreign_logs_off():
            return COMMANDS[args.command](args)
    except ShutdownRequested as e:
        print(f"{tag}kdsearch: {e}" + ("" if worker else
                                      f"\nkdsearch: to resume: {_command_line(argv)}"),
              file=sys.stderr)
        return e.exit_code
    except KdsearchError as e:
        from kdsearch.study.storage import mask_urls

        print(f"{tag}kdsearch: error: {one_line(mask_urls(str(e)))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{tag}kdsearch: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
