"""The command line's grammar: every command, its options and the checks on their values.

Kept apart from `cli.py` (which runs the commands) so that each reads in one sitting; a value
argparse refuses is one line and exit code 2, like every other bad input.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--seed", type=_nonneg_int, metavar="S",
                   help="seed the retraining as if the study's seed were S (default: the "
                        "study's); compress again with another S to average over seeds")
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
