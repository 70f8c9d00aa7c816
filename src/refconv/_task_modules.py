"""The modules that define :mod:`refconv.engine` tasks (``@register_task``), in the order the engine's task
registry (:mod:`refconv.engine.task_registry`) imports them when it meets a task name it has not seen.

Plain data in the package root: the root knows its task packages, the engine knows none of them, and each
task package imports the engine's registry, never the reverse. A new task package joins by decorating its
classes and adding its module here.
"""

TASK_MODULES: tuple[str, ...] = (
    "refconv.engine.task",  # classification
    "refconv.downstream.tasks",  # detection, segmentation
)
