"""Fault injection for tests, through the engine's step hooks (:mod:`refconv.engine.hooks`).

Each helper installs one hook and returns it; :func:`clear` removes every hook installed here. The
``faults`` fixture (conftest.py) clears after each test; a torchrun script installs them itself.
"""

from __future__ import annotations

import torch

from refconv.engine.hooks import STEP_HOOKS, StepEvent, StepHook

_INSTALLED: list[StepHook] = []


def _install(hook: StepHook) -> StepHook:
    STEP_HOOKS.append(hook)
    _INSTALLED.append(hook)
    return hook


def crash_after(steps: int) -> StepHook:
    """A crash (no save) right after global step ``steps``."""

    def hook(event: StepEvent) -> None:
        if event.global_step == steps:
            raise RuntimeError(f"injected failure after step {steps}")

    return _install(hook)


def interrupt_after(steps: int) -> StepHook:
    """What Ctrl-C does, after global step ``steps``: stop at the step boundary and save."""
    return _install(lambda event: event.global_step == steps)


def nan_after(steps: int) -> StepHook:
    """The run diverges after global step ``steps``: every weight turns NaN, so the next loss is NaN."""

    def hook(event: StepEvent) -> None:
        if event.global_step == steps:
            with torch.no_grad():
                for p in event.model.parameters():
                    p.fill_(float("nan"))

    return _install(hook)


def clear() -> None:
    """Remove every hook installed through this module."""
    for hook in _INSTALLED:
        if hook in STEP_HOOKS:
            STEP_HOOKS.remove(hook)
    _INSTALLED.clear()
