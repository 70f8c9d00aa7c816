"""``run_downstream``: a detection / segmentation run of the one engine, with the settings of ``refconv detect``.

A run is :func:`refconv.engine.run` with ``task="detection"`` or ``"segmentation"`` (:mod:`refconv.downstream.tasks`),
so its run directory, resume, ``--overwrite`` and errors are the engine's (docs/engine.md, docs/downstream.md).
A ``refconv`` run ends with the folded model loaded ``strict=True`` into a freshly built stock model, its raw
outputs and detections (or logits) compared with the RefConv model's and evaluated again (``done.json``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.config import RunConfig, make_config
from ..engine.progress import Reporter
from ..engine.runner import RunResult, run
from ..engine.task_registry import task_class
from ..errors import CheckpointError, ConfigError
from ..runlayout import checkpoint_path
from ..models.detection import DOWNSTREAM_FORMAT, TASKS, get_spec, list_archs
from .tasks import DownstreamOptions

__all__ = ["DEFAULTS", "LineReporter", "downstream_config", "load_checkpoint", "run_downstream"]

#: Where ``refconv detect`` / ``segment`` differ from RunConfig's defaults (a classification recipe): a short
#: SGD recipe at an explicit lr without warm-up on the CPU, ONNX exported, synthetic data, method refconv.
DEFAULTS: dict[str, Any] = {"method": "refconv", "data": "synthetic", "epochs": 10, "batch_size": 16, "lr": 0.01,
                            "warmup_epochs": 0.0, "device": "cpu", "export_onnx": True, "channels_last": False}
# The names these settings had before detection and segmentation joined the engine's config.
_RENAMED = {"arch": "model", "onnx": "export_onnx"}


def downstream_config(task: str = "detection", **settings: Any) -> RunConfig:
    """The :class:`RunConfig` of a detection / segmentation run: :data:`DEFAULTS`, then ``settings``.

    ``settings`` are RunConfig keys or :class:`~refconv.downstream.tasks.DownstreamOptions` keys (which go
    into ``task_options``); ``arch`` and ``onnx`` are accepted for ``model`` and ``export_onnx``.

    Raises:
        ConfigError: an unknown key (with the closest known one) or a bad value.
    """
    if task not in TASKS:
        raise ConfigError(f"task must be 'detection' or 'segmentation', got {task!r}.")
    options = {f.name for f in dataclasses.fields(DownstreamOptions)}
    keys = {f.name for f in dataclasses.fields(RunConfig)} - {"task", "task_options"}
    values: dict[str, Any] = {**DEFAULTS, "model": list_archs(task)[0],
                              "out": f"runs/{'detect' if task == 'detection' else 'segment'}"}
    task_options: dict[str, Any] = {}
    for key, value in settings.items():
        key = _RENAMED.get(key, key)
        if key in options:
            task_options[key] = value
        elif key in keys:
            values[key] = value
        else:
            close = difflib.get_close_matches(key, sorted(keys | options | set(_RENAMED)), n=1)
            raise ConfigError(f"unknown config keys [{key!r}]" + (f"; did you mean {close[0]!r}?" if close else "")
                              + " See `refconv detect --help`.")
    if "model" in values:
        values["model"] = get_spec(values["model"], task).name
    return make_config(values, {"task": task, "task_options": task_options})



class LineReporter(Reporter):
    """The engine's reporter (log.txt included) that hands each line to ``log`` instead of printing it."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(mode="none")
        self._sink = log

    def log(self, msg: str) -> None:
        super().log(msg)
        if self.enabled:
            self._sink(msg)


def run_downstream(
    config: RunConfig | dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train, evaluate, fold (``refconv``) and export: :func:`refconv.engine.run` of a detection / segmentation
    config. Reruns, ``resume`` and ``overwrite`` behave exactly as for ``refconv train``.

    Args:
        config: a :func:`downstream_config` (or a dict of its settings).
        resume: continue the unfinished run in ``config.out`` from ``checkpoints/last.pt`` (the config must be
            the run's).
        overwrite: start over in a directory that holds another or an unfinished run.
        log: where progress lines go (default: the engine's reporter on stderr).

    Raises:
        ConfigError, DataError, ModelError, CheckpointError: bad settings, data, weights or checkpoints.
        NonFiniteLossError: the loss became NaN/inf (``last.pt`` keeps the last good state).
        RunInterrupted: Ctrl-C; a checkpoint was saved first.
    """
    cfg = config if isinstance(config, RunConfig) else downstream_config(**config)
    if cfg.task not in TASKS:
        raise ConfigError(f"run_downstream runs detection or segmentation configs, got task {cfg.task!r}; "
                          "use refconv.engine.run for classification.")
    if overwrite:
        cfg = cfg.replace(overwrite=True)
    return run(cfg, resume=resume, reporter=LineReporter(log) if log is not None else None)


def load_checkpoint(path: str | Path, *, task: str | None = None) -> dict[str, Any]:
    """Load a ``refconv detect``/``segment`` checkpoint (or a run directory's ``last.pt``), refusing one of another
    task or kind.

    Raises:
        CheckpointError: missing/corrupt file, a classification checkpoint, or one of the other task.
    """
    from ..engine.checkpoint import is_run_checkpoint
    from ..engine.checkpoint import load_checkpoint as load

    path = Path(path)
    if path.is_dir():
        path = checkpoint_path(path)
    obj = load(path)
    ours = is_run_checkpoint(obj) or obj.get("format") == DOWNSTREAM_FORMAT  # the engine's, or of a version before
    if not ours or obj.get("task") not in TASKS:
        kind = ("an image-classification run checkpoint" if is_run_checkpoint(obj)
                else "not a refconv detect/segment checkpoint")
        raise CheckpointError(
            f"{path} is {kind}. Detection/segmentation runs resume from and rebuild their own checkpoints; an "
            "ImageNet classifier goes to --weights-backbone."
        )
    if task is not None and obj.get("task") != task:
        cmd = task_class(obj["task"]).command
        raise CheckpointError(
            f"{path} is a {obj.get('task')} checkpoint ({obj.get('arch')}), not a {task} one: use `refconv {cmd}`."
        )
    return obj
