"""Step hooks that travel inside a submitit job (they must pickle and import in the job's process: the tests put
this directory on the jobs' PYTHONPATH). See :class:`refconv.protocol.launch.CellJob`'s ``hooks``."""

from __future__ import annotations

import os
import signal
import time


class SignalAtStep:
    """Send this process ``sig`` (Slurm's warning signal, SIGUSR2) right after global step ``step``: a preemption
    at a known point. After a resume the run starts past ``step``, so it fires once per cell."""

    def __init__(self, step: int, sig: int = signal.SIGUSR2, only: str | None = None) -> None:
        self.step, self.sig, self.only = step, sig, only

    def __call__(self, event) -> None:
        if event.global_step == self.step and (self.only is None or self.only in os.environ.get("REFCONV_CELL", "")):
            os.kill(os.getpid(), self.sig)


class SlowSteps:
    """Sleep after every step, so a test can signal a job while it trains."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, event) -> None:
        time.sleep(self.seconds)
