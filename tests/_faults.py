"""Fault injection for tests, through the engine's callbacks (:mod:`refconv.engine.callbacks`).

Each helper installs one step callback with :func:`refconv.engine.callbacks.installed` (so it reaches runs
started indirectly: a sweep's cells, the CLI, the downstream study) and returns it; :func:`clear` leaves every
block entered here. The ``faults`` fixture (conftest.py) clears after each test; a torchrun script installs
them itself. A test that starts the run itself can pass the same callbacks to ``run(cfg, callbacks=[...])``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from refconv.engine.callbacks import StepEvent, installed

StepCallback = Callable[[StepEvent], "bool | None"]

_BLOCKS = contextlib.ExitStack()


def _install(callback: StepCallback) -> StepCallback:
    _BLOCKS.enter_context(installed(callback))
    return callback


def crash_after(steps: int) -> StepCallback:
    """A crash (no save) right after global step ``steps``."""

    def callback(event: StepEvent) -> None:
        if event.global_step == steps:
            raise RuntimeError(f"injected failure after step {steps}")

    return _install(callback)


def interrupt_after(steps: int) -> StepCallback:
    """What Ctrl-C does, after global step ``steps``: stop at the step boundary and save."""
    return _install(lambda event: event.global_step == steps)


def nan_after(steps: int) -> StepCallback:
    """The run diverges after global step ``steps``: every weight turns NaN, so the next loss is NaN."""

    def callback(event: StepEvent) -> None:
        if event.global_step == steps:
            with torch.no_grad():
                for p in event.model.parameters():
                    p.fill_(float("nan"))

    return _install(callback)


def clear() -> None:
    """Remove every callback installed through this module (leaves their blocks, innermost first)."""
    _BLOCKS.close()
