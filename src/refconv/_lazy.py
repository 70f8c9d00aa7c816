"""Lazy package exports (PEP 562), so that ``refconv --help`` and ``import refconv.cli`` do not import torch.

A package lists ``name -> submodule``; the submodule is imported the first time the name is read
(``refconv.convert``, ``from refconv import convert``), then cached in the package namespace. Static tools see
the real imports under ``TYPE_CHECKING`` in each package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]) -> tuple[
        Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` resolving each name in ``exports`` from its submodule."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
