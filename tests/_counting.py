"""Count the calls of library functions, wherever a module bound them (``from ..models import get_model``)."""

from __future__ import annotations

import collections
import contextlib
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def count_calls(*functions: Any) -> Iterator[collections.Counter]:
    """Within the block, every module attribute that is one of ``functions`` counts its calls by the function's
    ``__qualname__`` in the yielded counter; all are put back on exit."""
    counts: collections.Counter = collections.Counter()
    patched: list[tuple[Any, str, Any]] = []

    def wrap(fn: Any) -> Any:
        def counting(*args: Any, **kwargs: Any) -> Any:
            counts[fn.__qualname__] += 1
            return fn(*args, **kwargs)
        return counting

    wrappers = {id(fn): wrap(fn) for fn in functions}
    for module in list(sys.modules.values()):
        if module is None or not getattr(module, "__name__", "").startswith("refconv"):
            continue
        for name, value in list(vars(module).items()):
            if id(value) in wrappers and any(value is fn for fn in functions):
                patched.append((module, name, value))
                setattr(module, name, wrappers[id(value)])
    try:
        yield counts
    finally:
        for module, name, value in patched:
            setattr(module, name, value)
