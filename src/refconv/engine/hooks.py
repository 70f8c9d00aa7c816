"""Step hooks: functions :func:`refconv.engine.run` calls after every optimizer step.

Why a seam here: how a run behaves when it crashes, is interrupted or diverges must be testable on real
runs, and the production loop must not carry test switches for it. Whoever needs to act at a step (the test
suite's fault injection in ``tests/_faults.py``, a user's watchdog that stops a run from outside) appends a
function to :data:`STEP_HOOKS` and removes it when done.

A hook gets a :class:`StepEvent` after the step's optimizer update (and EMA update). It may

- return ``True``: stop the run at this step boundary exactly as Ctrl-C does (``last.pt`` is saved with
  the position in the epoch, then :class:`~refconv.engine.RunInterrupted`; under DDP at the next sync
  point, on every rank together);
- raise: the run aborts with that exception and saves nothing (a crash; ``last.pt`` keeps the last save);
- change the model in place (its weights are the live training weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["STEP_HOOKS", "StepEvent", "StepHook", "call_step_hooks"]


@dataclass(frozen=True)
class StepEvent:
    """Where the run stands after one optimizer step."""

    global_step: int  # optimizer steps of the whole run so far, this one included
    model: nn.Module  # the trained model (unwrapped from DDP / torch.compile)


StepHook = Callable[[StepEvent], "bool | None"]

#: The hooks every run in this process calls, in order. A list so that installing one is ``append``.
STEP_HOOKS: list[StepHook] = []


def call_step_hooks(event: StepEvent) -> bool:
    """Call every hook with ``event``; True when any asks the run to stop (each is called regardless)."""
    stop = False
    for hook in list(STEP_HOOKS):
        stop = bool(hook(event)) or stop
    return stop
