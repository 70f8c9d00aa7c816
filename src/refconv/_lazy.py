"""Lazy package exports (PEP 562), so that ``refconv --help`` and ``import refconv.cli`` do not import torch.

A package lists ``name -> submodule``; the submodule is imported the first time the name is read
(``refconv.convert``, ``from refconv import convert``), then cached in the package namespace. Static tools see
the real imports under ``TYPE_CHECKING`` in each package.

One subtlety: importing a submodule binds it on its package (``refconv.convert`` the *module*), which would
shadow an export of the same name (``refconv.convert`` the *function*). The package's module class therefore
keeps exported names bound to the export whenever the import system binds a submodule over them.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any


class _LazyPackage(types.ModuleType):
    _lazy_exports: Mapping[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        module = self._lazy_exports.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, self.__name__), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and self._lazy_exports.get(name) == "." + name:
            value = getattr(value, name)  # the submodule ``pkg.name`` exports ``name``: keep the export
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._lazy_exports))


def lazy_exports(package: str, exports: Mapping[str, str]) -> None:
    """Make ``package`` (the calling ``__init__``'s ``__name__``) resolve each name in ``exports`` on first use."""
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    module._lazy_exports = dict(exports)  # type: ignore[attr-defined]
