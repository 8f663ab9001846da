"""The `kdsearch` command line. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from kdsearch.errors import KdsearchError, one_line


def _int_arg(low: int, high: int | None, what: str, in_range: str):
    """An argparse type: an integer in [low, high], else a one-line error naming the input."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {in_range}, found {text!r}")
        return value
    return parse


_positive_int = _int_arg(1, None, "a positive integer", "a positive integer")
_nonneg_int = _int_arg(0, 2**31 - 1, "an integer >= 0", "an integer in [0, 2^31)")
_port = _int_arg(0, 65535, "a port number", "a port in [0, 65535]")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, found {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, found {text!r}")
    return value


def _device(text: str) -> str:
    from kdsearch.options import DEVICE_CHOICES, device_name

    try:
        return device_name(text)
    except KdsearchError:
        raise argparse.ArgumentTypeError(f"expected {DEVICE_CHOICES}, found {text!r}") from None


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=_device, default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where to train: auto (a GPU when there is one), cpu, cuda, or one GPU "
                   "of several, cuda:N (default auto)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error; argparse echoes bad values
        from kdsearch.study.storage import mask_urls

        message = one_line(mask_urls(message))
        self.exit(2, f"kdsearch: error: {message} (see 'kdsearch {self.prog.split()[-1]} --help')\n"
                  if " " in self.prog else f"kdsearch: error: {message} (see 'kdsearch --help')\n")


def _add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="Optuna RDB URL (env KDSEARCH_STORAGE; default sqlite:///kdsearch.db)")
    p.add_argument("--study-name", metavar="NAME", help="study name in storage (default: the study's name)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_storage(p)
    p.add_argument("--data-dir", metavar="DIR", type=Path,
                   help="torchvision root or ImageFolder (train/, test/) (env KDSEARCH_DATA_DIR)")
    p.add_argument("--cache-dir", metavar="DIR", type=Path,
                   help="teacher and data cache (env KDSEARCH_CACHE_DIR; default ~/.cache/kdsearch)")
    _add_device(p)
    p.add_argument("--seed", type=_nonneg_int, help="override the study file's seed")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdsearch", description="Search knowledge-distillation students: "
                     "the accuracy-versus-size trade-off, searched.")
    from kdsearch import __version__

    parser.add_argument("--version", action="version", version=f"kdsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run-study", help="train (or reuse) the teacher, then run trials")
    p.add_argument("study", help="a name in studies/ or a path to a .toml file")
    _add_run_options(p)
    p.add_argument("--n-trials", type=_positive_int, metavar="N",
                   help="total finished trials wanted in the study (resumes; default from the file)")
    p.add_argument("--timeout", type=_positive_float, metavar="S", help="stop starting trials after S seconds")
    p.add_argument("--artifact-dir", metavar="DIR", type=Path,
                   help="shared Optuna artifact store for the teacher, for workers on several "
                   "machines (env KDSEARCH_ARTIFACT_DIR)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="worker processes sharing the storage, cores divided among them "
                   "(default 1; never more than the trials left)")
    p.add_argument("--worker", metavar="LABEL", help=argparse.SUPPRESS)  # set by --workers

    p = sub.add_parser("teacher", help="train the study's teacher, or show the cached one")
    p.add_argument("study")
    _add_run_options(p)
    p.add_argument("--export", metavar="DIR", type=Path,
                   help="also write the trained teacher as DIR/NAME.pt2, NAME.onnx and a card "
                   "NAME.md, for studies to distill from with [teacher] file = ...")
    p.add_argument("--name", help="the exported files' name (default: the study's name)")

    p = sub.add_parser("best", help="table of Pareto-optimal trials")
    p.add_argument("study")
    _add_storage(p)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table for reading (default); json or csv for programs: the front, "
                   "smallest first, with stable keys")

    p = sub.add_parser("export", help="write pareto.html/.png/.svg, trials.csv, summary.md "
                       "(HTML files share one plotly.min.js in the folder)")
    p.add_argument("study")
    _add_storage(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--compare", action="append", default=[], metavar="STUDY|FRONT.csv",
                   help="also draw fronts.html/.png/.svg: this study's front beside another "
                   "study's in the same storage, or beside a front saved with 'kdsearch best "
                   "--format csv' (repeatable)")

    p = sub.add_parser("studies", help="list the shipped study files")

    p = sub.add_parser("compress", help="retrain a chosen trial on train+val; write a model folder")
    p.add_argument("study")
    p.add_argument("--trial", type=_nonneg_int, metavar="N", help="the trial number")
    # Limits combine (all must hold); --trial stands alone. cmd_compress checks which was given.
    p.add_argument("--max-params", type=_positive_int, metavar="P",
                   help="the best validation accuracy among trials of at most P params")
    p.add_argument("--max-macs", type=_positive_int, metavar="M",
                   help="... and of at most M multiply-accumulates per image")
    p.add_argument("--max-latency-ms", type=_positive_float, metavar="MS",
                   help="... and of at most MS ms per image at batch 1, as measured in the "
                   "search (studies with a latency objective or limit)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="a new folder, an empty one, or an earlier compress folder (replaced); "
                   "written whole or not at all; anything else is refused before training")
    p.add_argument("--epochs", type=_positive_int, metavar="E",
                   help="retraining epochs (default: twice the study's student epochs)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"],
                   help="learning-rate schedule for the retraining (default: the study's)")
    _add_storage(p)
    p.add_argument("--data-dir", metavar="DIR", type=Path, help="as for run-study")
    p.add_argument("--cache-dir", metavar="DIR", type=Path, help="as for run-study")
    _add_device(p)

    p = sub.add_parser(
        "evaluate", help="test accuracy of a folder written by compress, held to its card",
        description="Score model.pt and every copy MODEL_CARD.md lists (model.pt2, model.onnx) on "
        "the test set. Fails (exit 2, one line naming the file) when a listed file is missing, a "
        "model file is not listed, or a copy's test accuracy is off the card's by more than 0.5 "
        "points (or one test image, whichever is more).")
    p.add_argument("folder", type=Path)
    p.add_argument("--data-dir", metavar="DIR", type=Path, help="as for run-study")
    p.add_argument("--cache-dir", metavar="DIR", type=Path, help="as for run-study")
    _add_device(p)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna RDB URL (env KDSEARCH_STORAGE; default sqlite:///kdsearch.db)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; anything else is reachable by others)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 = any free)")
    return parser


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
                 epochs=args.epochs, lr_schedule=args.lr_schedule, opts=opts,
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
    # Before torch loads OpenMP: idle threads sleep instead of spinning, so a busy machine (or
    # `--workers`) does not turn every parallel op into a spin-wait (measured 10x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
