"""Callbacks: what a caller hands :func:`refconv.engine.run` to act at the run's step and epoch boundaries.

Why a seam here: how a run behaves when it crashes, is interrupted or diverges must be testable on real runs,
and the production loop must not carry test switches for it; a user's watchdog (stop a run from outside) or a
launcher's preemption notice (stop and checkpoint before the job is killed) needs the same place. A callback is
an object with any of these methods (subclass :class:`Callback` for no-op defaults); a plain function
``f(event)`` is taken as ``on_step_end``:

- ``on_step_end(event: StepEvent)``: after every optimizer step (and EMA update);
- ``on_epoch_end(event: EpochEvent)``: after an epoch's evaluation and its ``last.pt`` save.

Either may

- return ``True``: stop the run at this boundary exactly as Ctrl-C does (``last.pt`` holds the position, then
  :class:`~refconv.engine.RunInterrupted`; under DDP at the next sync point, on every rank together), so
  ``run(cfg, resume=True)`` continues bit-identically;
- raise: the run aborts with that exception and saves nothing more (a crash; ``last.pt`` keeps the last save);
- change the model in place (``event.model`` holds the live training weights).

Two ways in, both explicit and scoped to one caller:

- ``run(cfg, callbacks=[...])``: the caller that starts the run;
- ``with installed(cb): ...``: every run started *inside the block*, however indirectly (a sweep's cells through
  ``run_cells``, the demo, the downstream study, ``refconv.cli.main``). This is a :class:`contextvars.ContextVar`
  read by ``run()`` when it starts, not a module-level list: it ends with the block (also on error), is
  private to the thread or task that opened it, and nests. Threading a ``callbacks`` argument through every
  layer that may start runs (cells, sweeps, the demo, the downstream study, the CLI, launchers) instead would
  add a parameter to each for the sake of the few callers that inject faults, and each new layer would have to
  remember it; the block needs none of them to know. Runs in other processes (``parallel`` cells, torchrun
  workers, Slurm jobs) see neither: such a process installs its callbacks itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import nn

__all__ = ["Callback", "CallbackLike", "CallbackList", "EpochEvent", "StepEvent", "installed", "active"]


@dataclass(frozen=True)
class StepEvent:
    """Where the run stands after one optimizer step."""

    global_step: int  # optimizer steps of the whole run so far, this one included
    model: nn.Module  # the trained model (unwrapped from DDP / torch.compile)
    epoch: int = 0  # the epoch this step belongs to, 0-based
    step_in_epoch: int = 0  # steps of this epoch so far, this one included


@dataclass(frozen=True)
class EpochEvent:
    """An epoch that finished: evaluated (when due), recorded in ``metrics.jsonl`` and saved in ``last.pt``."""

    epoch: int  # epochs finished, this one included (1-based, as in metrics.jsonl)
    global_step: int
    model: nn.Module
    row: dict[str, Any] = field(default_factory=dict)  # this epoch's metrics.jsonl row


class Callback:
    """Base class with no-op methods; override the ones needed. Return True to stop the run (see the module)."""

    def on_step_end(self, event: StepEvent) -> bool | None:
        return None

    def on_epoch_end(self, event: EpochEvent) -> bool | None:
        return None


@runtime_checkable
class _HasStep(Protocol):
    def on_step_end(self, event: StepEvent) -> bool | None: ...


@runtime_checkable
class _HasEpoch(Protocol):
    def on_epoch_end(self, event: EpochEvent) -> bool | None: ...


CallbackLike = Callback | _HasStep | _HasEpoch | Callable[[StepEvent], "bool | None"]


class _StepFunction(Callback):
    """A plain function as an ``on_step_end`` callback."""

    def __init__(self, fn: Callable[[StepEvent], bool | None]) -> None:
        self.fn = fn

    def on_step_end(self, event: StepEvent) -> bool | None:
        return self.fn(event)

    def __repr__(self) -> str:
        return f"step callback {self.fn!r}"


def _as_callback(cb: CallbackLike) -> Any:
    if isinstance(cb, (Callback, _HasStep, _HasEpoch)):
        return cb
    if callable(cb):
        return _StepFunction(cb)
    raise TypeError(f"a callback needs on_step_end / on_epoch_end or must be a function of a StepEvent; got {cb!r}.")


_INSTALLED: ContextVar[tuple[Any, ...]] = ContextVar("refconv_engine_callbacks", default=())


@contextlib.contextmanager
def installed(*callbacks: CallbackLike) -> Iterator[None]:
    """Every :func:`refconv.engine.run` started inside the ``with`` block (in this thread or task) calls
    ``callbacks`` too, after the ones installed by enclosing blocks and before its own ``callbacks=``."""
    token = _INSTALLED.set(_INSTALLED.get() + tuple(_as_callback(cb) for cb in callbacks))
    try:
        yield
    finally:
        _INSTALLED.reset(token)


class CallbackList:
    """The callbacks of one run, called in order; each is called even when an earlier one asked to stop."""

    def __init__(self, callbacks: Iterable[Any]) -> None:
        self.callbacks = tuple(callbacks)

    def step_end(self, event: StepEvent) -> bool:
        return self._call("on_step_end", event)

    def epoch_end(self, event: EpochEvent) -> bool:
        return self._call("on_epoch_end", event)

    def _call(self, hook: str, event: StepEvent | EpochEvent) -> bool:
        """Call ``hook`` on every callback that has it; True when any of them asked to stop."""
        stop = False
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            stop = bool(method(event) if method is not None else None) or stop
        return stop


def active(callbacks: Iterable[CallbackLike] = ()) -> CallbackList:
    """The callbacks a run starting now calls: those :func:`installed` around it, then ``callbacks``."""
    return CallbackList((*_INSTALLED.get(), *(_as_callback(cb) for cb in callbacks)))
