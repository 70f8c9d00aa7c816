"""Stopping a run from outside at a step boundary, with a checkpoint: Ctrl-C, SIGTERM, a launcher's signal.

:class:`StopFlag` is what :func:`refconv.engine.run` installs for the run (``stop_signals``, by default SIGINT
and SIGTERM): the first signal asks the loop to stop after the current step, save ``last.pt`` and raise
:class:`~refconv.engine.RunInterrupted`; a second Ctrl-C aborts at once. A launcher that is warned before its
job is killed (Slurm's ``--signal``: SIGUSR1 / SIGUSR2) passes that signal too, or sets ``requested`` itself
from a callback (:mod:`refconv.engine.callbacks`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from typing import Any

from .progress import Reporter

__all__ = ["StopFlag", "DEFAULT_STOP_SIGNALS"]

DEFAULT_STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """While entered, ``signals`` set :attr:`requested` instead of killing the process (main thread only:
    elsewhere Python cannot install handlers, and the flag is only set by callbacks)."""

    def __init__(self, reporter: Reporter, signals: Sequence[int] = DEFAULT_STOP_SIGNALS) -> None:
        self.requested = False
        self.reporter = reporter
        self.signals = tuple(signals)
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.reporter.log("interrupt received: finishing this step and saving a checkpoint (Ctrl-C again aborts).")

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
