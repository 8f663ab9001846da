"""Static images (PNG, SVG) through kaleido, which drives a Chrome/Chromium.

Kept apart from the figures: a missing Chrome is this module's concern alone, and the rest of an
export (HTML, CSV, summary) never depends on it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path


class ImageExportError(Exception):
    """A PNG or SVG could not be written; the message says how to get a Chrome."""


def write_image(fig, path: Path) -> None:
    """PNG/SVG through kaleido, which drives a Chrome; a clear error when none is found."""
    try:
        fig.write_image(str(path), scale=2 if path.suffix == ".png" else 1)
    except Exception as e:
        first = str(e).splitlines()[0][:100] if str(e) else ""
        raise ImageExportError(
            f"{path.name} not written ({type(e).__name__}: {first}); "
            "static images need a Chrome/Chromium: 'apt-get install -y chromium' "
            "(or 'plotly_get_chrome'), then run export again") from None


@contextlib.contextmanager
def one_browser() -> Iterator[None]:
    """One Chrome for every image: kaleido otherwise starts one per image (~2 s each).

    Starting the server returns at once; Chrome boots in its thread, so it boots while the
    caller reads the trials and writes the CSV and HTML, not before the first image.
    """
    try:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
    except Exception:  # an older kaleido, or none: write_image starts its own or reports why
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
