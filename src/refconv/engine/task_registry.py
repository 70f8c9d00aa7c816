"""Which :class:`~refconv.engine.task.Task` class trains each task name, imported on first use.

Plain data with one lookup, so that the config (which validates a task's keys) and the task module (which
defines the tasks) both ask it without importing each other. A task is named as ``"module:Class"`` and
imported only when a run asks for it: the engine never imports torchvision's detection code for a
classification run. Another package adds its tasks with :func:`register_task`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError

__all__ = ["TASK_CLASSES", "register_task", "task_class"]

#: Every task a run can train, by name: ``"module:Class"``.
TASK_CLASSES: dict[str, str] = {
    "classification": "refconv.engine.task:ClassificationTask",
    "detection": "refconv.downstream.tasks:DetectionTask",
    "segmentation": "refconv.downstream.tasks:SegmentationTask",
}


def register_task(name: str, target: str) -> None:
    """Make ``name`` a task trained by ``target`` (``"module:Class"``, imported when a run asks for it)."""
    if ":" not in target:
        raise ConfigError(f"a task is registered as 'module:Class', got {target!r}.")
    TASK_CLASSES[name] = target


def task_class(name: str) -> Any:
    """The :class:`~refconv.engine.task.Task` class registered as ``name``.

    Raises:
        ConfigError: an unknown task name.
    """
    if name not in TASK_CLASSES:
        raise ConfigError(f"task must be one of {', '.join(TASK_CLASSES)}; got {name!r}.")
    module, cls = TASK_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)
