"""Static images (PNG, SVG) through kaleido, which drives a Chrome/Chromium.

Kept apart from the figures: a missing Chrome is this module's concern alone, and the rest of an
export (HTML, CSV, summary) never depends on it.

kaleido >= 1 starts Chrome inside a thread; without a Chrome that thread dies and the next image
waits on it forever, and a Chrome that starts but never answers does the same. So the browser is
looked up before kaleido is asked for anything, and every image is waited for with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

# Generous: the first image also waits for Chrome to boot, which takes seconds on a busy machine;
# a Chrome that has not answered in this time is not going to.
IMAGE_TIMEOUT_S = 120.0

HOW_TO_GET_CHROME = ("static images need a Chrome/Chromium: 'apt-get install -y chromium', or "
                     "python3 -c 'import kaleido; kaleido.get_chrome_sync()', then run export again")


class ImageExportError(Exception):
    """A PNG or SVG could not be written; the message says how to get a Chrome."""


def find_chrome() -> str | None:
    """The browser kaleido would start, found the way kaleido finds it (choreographer honours
    BROWSER_PATH itself), or None when that is not an executable file."""
    try:
        from choreographer.browsers.chromium import Chromium

        path = Chromium.find_browser(skip_local=False)
        return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None
    except Exception:  # another choreographer: look where it would
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
            if path := shutil.which(name):
                return path
        return None


def no_chrome_message() -> str:
    return f"PNG and SVG skipped: no Chrome/Chromium found; {HOW_TO_GET_CHROME}"


def write_image(fig, path: Path) -> None:
    """PNG/SVG through kaleido, refused at once without a Chrome and given up after a deadline."""
    if find_chrome() is None:
        raise ImageExportError(no_chrome_message())
    outcome: list[BaseException | None] = []

    def render() -> None:
        try:
            fig.write_image(str(path), scale=2 if path.suffix == ".png" else 1)
            outcome.append(None)
        except BaseException as e:  # carried to the caller's thread
            outcome.append(e)

    # A daemon thread: one that never returns must not keep the process alive at exit.
    worker = threading.Thread(target=render, name=f"kdsearch-image-{path.name}", daemon=True)
    worker.start()
    deadline = time.monotonic() + IMAGE_TIMEOUT_S
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(0.2)
        if worker.is_alive() and _server_died():  # Chrome failed to start: nobody will answer
            _abandon_server()
            raise ImageExportError(f"{path.name} not written: Chrome/Chromium did not start; "
                                   f"PNG and SVG skipped; {HOW_TO_GET_CHROME}")
    if worker.is_alive():
        _abandon_server()
        raise ImageExportError(
            f"{path.name} not written: Chrome did not answer within {IMAGE_TIMEOUT_S:g} s; "
            "PNG and SVG skipped")
    e = outcome[0]
    if e is not None:
        first = str(e).splitlines()[0][:100] if str(e) else ""
        raise ImageExportError(
            f"{path.name} not written ({type(e).__name__}: {first}); {HOW_TO_GET_CHROME}") from None


def _server_died() -> bool:
    """kaleido's server thread ended while it still counts as running: its Chrome never came up."""
    try:
        import kaleido

        server = kaleido._global_server
        return bool(server.is_running() and not server._thread.is_alive())
    except Exception:
        return False


def _abandon_server() -> None:
    """Forget a kaleido server whose Chrome hangs: stopping it joins its thread, which would hang
    the export's exit (and the interpreter's, through kaleido's atexit hook) in turn."""
    try:
        import kaleido

        kaleido._global_server._initialized = False
    except Exception:
        pass


@contextlib.contextmanager
def one_browser() -> Iterator[None]:
    """One Chrome for every image: kaleido otherwise starts one per image (~2 s each).

    Starting the server returns at once; Chrome boots in its thread, so it boots while the
    caller reads the trials and writes the CSV and HTML, not before the first image. Without a
    Chrome nothing is started: write_image says so.
    """
    if find_chrome() is None:
        yield
        return
    try:
        import kaleido
    except Exception:  # no kaleido: write_image reports why
        yield
        return
    default_hook = threading.excepthook

    def quiet(args) -> None:
        """A Chrome that fails to start is told by write_image in one line, not a traceback."""
        if args.thread is not getattr(kaleido._global_server, "_thread", None):
            default_hook(args)

    threading.excepthook = quiet  # before the start: the thread can die at once
    try:
        kaleido.start_sync_server(silence_warnings=True)
    except Exception:  # an older kaleido: write_image starts its own or reports why
        threading.excepthook = default_hook
        yield
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        try:
            kaleido.stop_sync_server(silence_warnings=True)
        except Exception:
            pass
        threading.excepthook = default_hook
