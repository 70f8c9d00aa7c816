"""The modules that register :mod:`refconv.engine` tasks when imported (``@register_task``), beside the
engine's own classification task.

Plain data, read by :func:`refconv.engine.task.task_class` the first time it meets a task name it has not
seen: the package root knows its task packages, the engine knows none of them (it never imports
``refconv.downstream``), and a task package imports the engine, never the reverse. A new task package joins by
decorating its classes and adding its module here.
"""

TASK_MODULES: tuple[str, ...] = ("refconv.downstream.tasks",)
