"""`kdsearch dashboard`: optuna-dashboard on the study storage, bound to localhost by default.

optuna-dashboard has no authentication and can rename and delete studies, so binding it to
anything but a loopback address gets a warning. Each study already carries what the dashboard
shows best: objective names ("val_accuracy", "params") and a note with the study file and the
teacher's numbers (written by `run-study`).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from kdsearch.errors import KdsearchError
from kdsearch.study.storage import open_storage, redact


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """The dashboard's page fires many requests at once; serve them side by side."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # one line per request is noise
        pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolve it
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def study_lines(storage) -> list[str]:
    """One line per study: name, trial counts, best validation accuracy."""
    lines = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = max((t.values[0] for t in done), default=None)
        lines.append(f"  {s.study_name:28} {len(trials):>4} trials, {len(done):>4} complete"
                     + (f", best val_accuracy {best:.4f}" if best is not None else ""))
    return lines


def serve(url: str, host: str = "127.0.0.1", port: int = 8080,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
          ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard until interrupted. `ready(address)` is called once it listens."""
    storage = open_storage(url, heartbeats=None)
    from optuna_dashboard import wsgi

    app = wsgi(storage)
    try:
        server = make_server(host, port, app, server_class=_ThreadingServer,
                             handler_class=_QuietHandler)
    except OSError as e:
        raise KdsearchError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                            "(choose another --port)") from None
    bound_port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{bound_port}/dashboard/"
    if not is_loopback(host):
        log(f"warning: the dashboard is bound to {host}, not localhost: it has no login, and "
            "anyone who can reach this port can read, rename and delete your studies")
    lines = study_lines(storage)
    log(f"kdsearch dashboard on {redact(url)}: {len(lines)} "
        f"stud{'y' if len(lines) == 1 else 'ies'}")
    for line in lines:
        log(line)
    log(f"open {address}  (Ctrl-C to stop)")
    if ready is not None:
        ready(address)
    try:
        server.serve_forever()
    finally:
        server.server_close()


LEARNING_CURVES = "learning-curves"  # the dashboard graph's id: each update replaces it


def publish_learning_curves(study: optuna.Study) -> None:
    """Draw every trial's learning curve into the study's page in optuna-dashboard.

    Called after each trial. A nicety: a failure to draw never stops a run.
    """
    from kdsearch.report.plots import learning_curves_figure

    try:
        from optuna_dashboard import save_plotly_graph_object

        figure = learning_curves_figure(study.get_trials(deepcopy=False))
        save_plotly_graph_object(study, figure, graph_object_id=LEARNING_CURVES)
    except Exception:  # noqa: BLE001
        pass
