"""A study's cells as the launcher sees them: their order (inferred from their starting weights) and what each
one's job reported, in ``OUT/launch/cells/<cell>.json``.

A cell is any object with a ``key`` (unique in its study) and a ``config`` (a :class:`RunConfig`; its run
directory is ``config.run_dir()``): :class:`LaunchCell`, or a study's own cell objects.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ...engine import RunConfig
from ...errors import ConfigError, RefConvError

__all__ = ["LAUNCH_DIR", "SUBMISSION_FILE", "LaunchError", "CellLike", "LaunchCell", "infer_dependencies",
           "in_waves", "cell_done", "state_path", "read_state", "write_state"]

LAUNCH_DIR = "launch"
SUBMISSION_FILE = "submission.json"


class LaunchError(RefConvError, RuntimeError):
    """A study cannot be submitted as asked, or some of its cells failed (the message names the fix)."""


class CellLike(Protocol):
    """What the launcher needs of a cell: its key and its config (the run directory is ``config.run_dir()``)."""

    @property
    def key(self) -> str: ...

    @property
    def config(self) -> RunConfig: ...


C = TypeVar("C", bound=CellLike)


@dataclass(frozen=True)
class LaunchCell:
    """One engine run of a study: its key (``e3/zero-init/seed0``), its config (its ``out`` is its run directory)
    and the keys of cells that must finish first (added to the inferred ones). Its :attr:`run_dir` is for its
    study; the launcher itself reads ``config.run_dir()``, as any other cell has no ``run_dir``."""

    key: str
    config: RunConfig
    after: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()


def infer_dependencies(cells: Sequence[CellLike]) -> dict[str, tuple[str, ...]]:
    """``{key: keys it waits for}``: the explicit ``after`` (of a cell that has one, as :class:`LaunchCell`) plus
    every cell whose run directory holds the cell's starting weights (``weights`` is the run directory or a file
    in it)."""
    dirs = {c.key: c.config.run_dir().resolve() for c in cells}
    deps: dict[str, tuple[str, ...]] = {}
    for c in cells:
        found = list(getattr(c, "after", ()))
        w = c.config.weights
        if w:
            wp = Path(str(w)).resolve()
            for k, d in dirs.items():
                if k != c.key and (wp == d or d in wp.parents) and k not in found:
                    found.append(k)
        unknown = [k for k in found if k not in dirs]
        if unknown:
            raise ConfigError(f"cell {c.key} waits for {unknown}, which are not cells of this study.")
        deps[c.key] = tuple(found)
    in_waves(cells, deps)  # refuses a cycle
    return deps


def in_waves(cells: Sequence[C], deps: Mapping[str, Sequence[str]]) -> list[list[C]]:
    """The cells in waves: each wave's prerequisites all lie in earlier waves."""
    placed: set[str] = set()
    left = list(cells)
    waves = []
    while left:
        wave = [c for c in left if all(d in placed for d in deps[c.key])]
        if not wave:
            raise ConfigError(f"cells {[c.key for c in left]} wait for each other: no order runs them.")
        waves.append(wave)
        placed |= {c.key for c in wave}
        left = [c for c in left if c.key not in placed]
    return waves


def cell_done(cfg: RunConfig) -> bool:
    """The filesystem's answer: the run directory holds this config's finished run."""
    from ...engine import rundir

    return rundir.inspect(cfg.run_dir(), cfg).kind == "done"


def _slug(key: str) -> str:
    return key.replace("/", "__")


def state_path(study_out: str | os.PathLike, key: str) -> Path:
    return Path(study_out) / LAUNCH_DIR / "cells" / f"{_slug(key)}.json"


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_state(path: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into a cell's state file (atomically: a reader never sees half a file)."""
    path = Path(path)
    state = {**read_state(path), **changes, "updated": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)
    return state
