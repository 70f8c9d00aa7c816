"""The one registry of model names refconv builds itself (timm's ``_registry``, torchvision's ``register_model``).

Three kinds of names reach :func:`refconv.models.get_model`; this module knows the two that refconv defines:

- **registered builders**: detectors and segmenters (:mod:`refconv.models.detection` registers them with
  :func:`register_model`), each with its task and the family facts its loader needs (``spec``);
- **pretrained entries** of the catalogue (``fmnist/mobilenetv3_small_100``, :mod:`refconv.models.catalog`):
  classifiers with verified weights, looked up live (a test may add one);
- the **zoos** (``timm/<name>``, ``tv/<name>``) stay open-ended and are resolved by :mod:`refconv.models.factory`.

Plain data and lookups: it imports no torch and no model family, so every family may register here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelError
from . import catalog

__all__ = ["TASKS", "ModelEntry", "register_model", "find_model", "model_task", "registered_names", "aliases",
           "close_matches"]

TASKS = ("classification", "detection", "segmentation")


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder: ``builder(num_classes, *, weights=None, **kwargs) -> nn.Module``."""

    name: str
    task: str
    builder: Callable[..., Any]
    aliases: tuple[str, ...] = ()
    spec: Any = field(default=None, compare=False)  # family facts (a detector's ArchSpec)


_MODELS: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, *, task: str, aliases: tuple[str, ...] = (),
                   spec: Any = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder`` as ``name`` (and its ``aliases``) for ``task``.

    Raises:
        ModelError: an unknown task, or a name registered twice.
    """
    if task not in TASKS:
        raise ModelError(f"task must be one of {', '.join(TASKS)}, got {task!r}.")

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        for n in (name, *aliases):
            if n in _MODELS or n in _ALIASES:
                raise ModelError(f"model name {n!r} is registered twice.")
        _MODELS[name] = ModelEntry(name, task, builder, tuple(aliases), spec)
        _ALIASES.update(dict.fromkeys(aliases, name))
        return builder

    return wrap


def find_model(name: str) -> ModelEntry | None:
    """The registered entry called ``name`` (or an alias of it, or ``tv/<name>``), else None."""
    text = str(name).strip()
    text = _ALIASES.get(text, text)
    if text not in _MODELS and text.startswith("tv/"):
        text = _ALIASES.get(text[3:], text[3:])
    return _MODELS.get(text)


def registered_names(task: str | None = None) -> list[str]:
    """Registered names (no aliases), of one task or all, in registration order."""
    return [n for n, e in _MODELS.items() if task is None or e.task == task]


def aliases(task: str | None = None) -> dict[str, str]:
    """``{alias: name}`` of one task or all."""
    return {a: n for a, n in _ALIASES.items() if task is None or _MODELS[n].task == task}


def model_task(name: str) -> str:
    """``"detection"`` / ``"segmentation"`` for a registered name, ``"classification"`` for anything else (a
    catalogue entry or a zoo name)."""
    entry = find_model(name)
    return entry.task if entry is not None else "classification"


def close_matches(name: str, task: str | None = None) -> list[str]:
    """Registered and catalogue names close to ``name``, for error messages."""
    pool = registered_names(task) + list(aliases(task))
    if task in (None, "classification"):
        pool += catalog.names()
    return difflib.get_close_matches(str(name), pool, n=3, cutoff=0.6)
