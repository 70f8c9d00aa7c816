"""The task registry: which :class:`~refconv.engine.task.Task` class a config's ``task`` name trains.

Tasks register themselves: ``@register_task("name")`` on the class, in the module that defines it
(classification in :mod:`refconv.engine.task`, detection and segmentation in :mod:`refconv.downstream.tasks`).
The first time :func:`task_class` meets a name it has not seen, it imports the package's task modules one by
one, in the order :mod:`refconv._task_modules` lists them (plain data in the composition root, above the
engine and the task packages), until the name is registered. So:

- the engine names no task package and never imports ``refconv.downstream``: the arrows point from the task
  packages to this module only;
- a classification run imports only the engine's own task module (never torchvision's detection code), and
  ``run(RunConfig(task="detection"))`` works without importing anything first;
- this module imports nothing of the engine, so the config (which asks it for the task of a name) and the task
  modules (which register here) import no cycle.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from .task import Task

__all__ = ["register_task", "task_class", "task_names"]

TaskT = TypeVar("TaskT", bound="type[Task]")

_REGISTRY: dict[str, type[Task]] = {}  # name -> class, in registration order (classification first)
_imported: set[str] = set()  # task modules imported so far


def register_task(name: str) -> Callable[[TaskT], TaskT]:
    """Class decorator: make the :class:`~refconv.engine.task.Task` subclass what ``task: name`` trains."""

    def register(cls: TaskT) -> TaskT:
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:  # (a module reload re-registers)
            raise ValueError(f"task {name!r} is already registered by {known.__module__}.{known.__qualname__}.")
        if cls.__dict__.get("name", name) != name:
            raise ValueError(f"{cls.__qualname__}.name is {cls.__dict__['name']!r}, registered as {name!r}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def _import_task_modules(until: str | None = None) -> None:
    """Import the package's task modules in order (each registers its tasks), stopping once ``until`` is
    registered. A module whose import fails is tried again next time, with its error."""
    from .._task_modules import TASK_MODULES

    for module in TASK_MODULES:
        if until is not None and until in _REGISTRY:
            return
        if module not in _imported:
            importlib.import_module(module)
            _imported.add(module)


def task_names() -> tuple[str, ...]:
    """Every task name (imports every task module)."""
    _import_task_modules()
    return tuple(_REGISTRY)


def task_class(name: str) -> type[Task]:
    """The class registered as ``name``; a :class:`ConfigError` naming every known task otherwise."""
    if name not in _REGISTRY:
        _import_task_modules(until=name)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), task_names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"task must be one of {', '.join(_REGISTRY)}; got {name!r}.{hint}")
    return _REGISTRY[name]
