"""Clean shutdown on Ctrl-C (SIGINT) and SIGTERM.

The signal handler only sets a flag and says, at once on stderr, what happens next; kdsearch
acts on the flag at safe points of its own, never inside a storage call (a handler that
raised there left the database connection mid-command and printed SQLAlchemy's tracebacks):

* in training (a trial, or the teacher), the first signal stops after the running epoch
  (`at_epoch`, called after the epoch's checkpoint), the second at the next batch
  (`at_batch`). A trial is marked FAIL and queued for retry; the teacher keeps every finished
  epoch in its checkpoint, which the same command resumes.
* elsewhere (opening the storage, loading data, claiming trials, waiting for work) nothing
  needs saving: the run stops at the next `check()`, between two storage calls.

The worker exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM). A third
signal is the escape hatch for a step that never reaches a safe point: the default action of
the signal, no cleanup.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
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


def _again(signum: int) -> str:
    return "Ctrl-C again" if signum == signal.SIGINT else "SIGTERM again (or Ctrl-C)"


class Shutdown:
    """Signal handlers that set a flag; the run asks at its safe points.

    `training(what)` marks an epoch loop, whose `at_batch` / `at_epoch` calls also time the
    epochs, so that the first signal can say how long the running epoch has left.
    """

    def __init__(self, stream=None, prefix: str = "") -> None:
        self.signum: int | None = None
        self.count = 0  # signals received
        self._stream = stream  # where the handler speaks (default: stderr's file descriptor)
        self._prefix = prefix  # a worker's label ("[w2] ") on what it says
        self._what: str | None = None  # the epoch loop running, if any ("the teacher")
        self._now = ""  # what a stop now keeps, for that loop
        self._epoch_began = 0.0
        self._epochs: list[float] = []  # seconds of each finished epoch of `_what`
        self._fraction = 0.0  # of the running epoch, as the last `at_batch` heard

    # --- the handler: flags and one line, nothing else --------------------------------------

    def _handle(self, signum: int, _frame) -> None:
        self.count += 1
        self.signum = self.signum or signum
        name = signal.Signals(signum).name
        if self.count >= 3:  # the escape hatch: the signal's default action, no cleanup
            self._say(f"kdsearch: {name} a third time: exiting without cleanup\n")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.count == 2 and self._what is not None:
            self._say(f"kdsearch: {name} again: stopping now"
                      + (f" ({self._now})" if self._now else "") + "\n")
        elif self.count == 2:
            self._say(f"kdsearch: {name} again: stopping at the next safe point; a third one "
                      "exits at once, without cleanup\n")
        elif self._what is not None:
            self._say(f"kdsearch: {name}: stopping {self._what} after this epoch "
                      f"({self._epoch_left()}); {_again(signum)} to stop now\n")
        else:
            self._say(f"kdsearch: {name}: stopping at the next safe point (a storage call or "
                      f"data loading in progress is let finish)\n")

    def _say(self, text: str) -> None:
        """Straight to the file descriptor: a handler may run while the main thread is inside
        a buffered write to the same stream (the progress bar), where `print` would raise."""
        try:
            if self._stream is not None:
                self._stream.write(self._prefix + text)
                self._stream.flush()
                return
            text = self._prefix + text
            if sys.stderr is not None and sys.stderr.isatty():
                text = "\r\x1b[K" + text  # over the progress bar's line, not glued to it
            os.write(2, text.encode(errors="replace"))
        except (OSError, ValueError):
            pass  # a closed stderr must not turn a stop into a crash

    def _epoch_left(self) -> str:
        """The running epoch's time left, from the batches done in it or the epochs before."""
        from kdsearch.study.console import duration  # imported by then: no import in a handler

        def about(seconds: float) -> str:
            return f"about {duration(seconds)}" if seconds >= 1 else "under a second"

        spent = time.monotonic() - self._epoch_began
        if self._fraction > 0:
            return f"{about(spent / self._fraction * (1 - self._fraction))}, " \
                   "from this epoch's batches so far"
        if self._epochs:
            mean = sum(self._epochs) / len(self._epochs)
            return f"{about(max(0.0, mean - spent))}, from the epoch time so far"
        return "its time is not measured yet"

    # --- the safe points ---------------------------------------------------------------------

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise `ShutdownRequested` if a signal arrived: between storage calls, and after an
        epoch (`at_epoch`)."""
        if self.signum is not None:
            raise ShutdownRequested(self.signum)

    def at_batch(self, done: int, per_epoch: int) -> None:
        """After a batch of the running epoch: raise after a second signal (stop now)."""
        self._fraction = done / per_epoch if per_epoch else 0.0
        if self.count >= 2:
            raise ShutdownRequested(self.signum or signal.SIGINT)

    def at_epoch(self) -> None:
        """After an epoch (and its checkpoint): raise after any signal."""
        now = time.monotonic()
        self._epochs.append(now - self._epoch_began)
        self._epoch_began, self._fraction = now, 0.0
        self.check()

    @contextmanager
    def training(self, what: str, now: str = "") -> Iterator[None]:
        """An epoch loop of `what` ("the teacher", "trial 3"): the first signal waits for the
        epoch's end, and says how long that is; `now` says what a second one keeps."""
        previous = self._what, self._now
        self._what, self._now, self._epochs, self._fraction = what, now, [], 0.0
        self._epoch_began = time.monotonic()
        try:
            yield
        finally:
            self._what, self._now = previous

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
