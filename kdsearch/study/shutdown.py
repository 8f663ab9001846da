"""Clean shutdown on Ctrl-C (SIGINT) and SIGTERM.

Inside a trial the signal is only noted; the trial stops at its next epoch boundary, where
the runner marks it FAIL, queues its retry and exits with 128 + the signal number (130 for
SIGINT, 143 for SIGTERM). Outside a trial (loading data, training the teacher, waiting for
work) nothing needs saving, so the signal stops the worker at once. A second signal while a
trial winds down also stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kdsearch.errors import KdsearchError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ShutdownRequested(KdsearchError):
    """A worker was asked to stop by a signal; `exit_code` is 128 + its number."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {self.signum_name}{': ' + detail if detail else ''}")

    @property
    def signum_name(self) -> str:
        return signal.Signals(self.signum).name


class Shutdown:
    """Signal handlers that defer a stop to the next safe point while `deferring()`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferring = False

    def _handle(self, signum: int, _frame) -> None:
        if self._deferring and self.signum is None:
            self.signum = signum
            return
        self.signum = self.signum or signum
        raise ShutdownRequested(signum)

    def check(self) -> None:
        """Raise `ShutdownRequested` if a signal arrived: call at safe points."""
        if self.signum is not None:
            raise ShutdownRequested(self.signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Signals inside this block only set the flag; `check()` acts on it."""
        previous, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = previous

    @contextmanager
    def installed(self) -> Iterator[Shutdown]:
        """Install the handlers (main thread only; elsewhere the defaults stay)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
