"""Studies as data: the one way a study's YAML is found, read and checked.

Every study is a YAML file: a demo profile (``configs/demo``), a sweep (``configs/sweeps``), a downstream study
(``configs/downstream``). A command takes a packaged name (``quick``, ``paper-regime``, ``transfer``) or a path to
one's own copy; the file is read by the one YAML reader (:func:`refconv.engine.config.read_yaml`: errors name the
file and line), and its keys are checked against the study's dataclass, so a typo is refused with the close
match and the valid keys instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.config import packaged_yaml, read_yaml, resolve_packaged
from ..errors import ConfigError

__all__ = ["STUDY_KINDS", "packaged_specs", "resolve_spec", "read_spec", "known_keys", "did_you_mean"]

# kind -> (folder under refconv/configs, the noun errors use)
STUDY_KINDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "demo profile"),
    "sweep": ("sweeps", "sweep"),
    "downstream": ("downstream", "downstream study"),
}


def _kind(kind: str) -> tuple[str, str]:
    if kind not in STUDY_KINDS:
        raise ValueError(f"unknown study kind {kind!r}; one of {sorted(STUDY_KINDS)}")
    return STUDY_KINDS[kind]


def packaged_specs(kind: str) -> dict[str, Path]:
    """The packaged studies of ``kind`` by name (file stem)."""
    return packaged_yaml(_kind(kind)[0])


def resolve_spec(name_or_path: str | os.PathLike, kind: str) -> Path:
    """A YAML path, or the name of a packaged study of ``kind``; an unknown name lists the packaged ones."""
    noun = _kind(kind)[1]
    return resolve_packaged(name_or_path, packaged_specs(kind), f"{noun} config", noun)


def read_spec(name_or_path: str | os.PathLike, kind: str) -> tuple[dict[str, Any], Path, str | None]:
    """``(mapping, path, packaged name or None)`` of a study YAML. A packaged study is named by its name, not by
    where this machine installed it, so a recorded study's command reruns it anywhere."""
    path = resolve_spec(name_or_path, kind)
    packaged = next((n for n, p in packaged_specs(kind).items() if p.resolve() == path.resolve()), None)
    return read_yaml(path, f"{_kind(kind)[1]} config"), path, packaged


def did_you_mean(keys: Sequence[str], allowed: Sequence[str]) -> str:
    """`` Did you mean 'seeds' for 'seedz'?`` for the keys with a close match among ``allowed`` (empty if none)."""
    hints = [f"{close[0]!r} for {k!r}" for k in keys
             if (close := difflib.get_close_matches(str(k), list(allowed), n=1))]
    return f" Did you mean {' and '.join(hints)}?" if hints else ""


def known_keys(cls: type, data: Any, what: str) -> dict[str, Any]:
    """``data`` when it is a mapping whose keys are all fields of the dataclass ``cls``; otherwise a
    :class:`~refconv.errors.ConfigError` naming each unknown key, its close match and the valid keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} is a mapping of keys to values, got {data!r}.")
    names = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}.{did_you_mean(unknown, names)} Valid keys: {names}.")
    return data
