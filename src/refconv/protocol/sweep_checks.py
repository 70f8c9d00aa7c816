"""The checks every section of a sweep YAML shares: unknown keys named all at once (with a did-you-mean), keys a
section may not set (with the reason), values coerced and checked by the engine's :func:`make_config`, integer
lists, and the grid's settings with their automatic names.

Each error names where it is (``base``, ``settings[2] (zero-init)``) so a sweep is fixed in one edit.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..engine import RunConfig
from ..engine.config import make_config
from ..errors import ConfigError
from .spec import did_you_mean

__all__ = ["RUN_KEYS", "unknown_keys_error", "check_run_keys", "validated", "as_mapping", "int_list", "auto_name",
           "expand_grid"]

RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig))


def unknown_keys_error(keys: Sequence[str], where: str, allowed: Sequence[str], extra: str = "") -> ConfigError:
    return ConfigError(
        f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(repr(k) for k in keys)} in {where}."
        f"{did_you_mean(keys, allowed)} "
        f"Allowed: {', '.join(allowed)}.{extra}"
    )


def check_run_keys(data: Mapping[str, Any], where: str, forbidden: Mapping[str, str]) -> None:
    """Unknown RunConfig keys (all named at once), then keys this section may not set (with the reason)."""
    unknown = [k for k in data if k not in RUN_KEYS]
    if unknown:
        allowed = [k for k in RUN_KEYS if k not in forbidden]
        raise unknown_keys_error(unknown, where, allowed, " (RunConfig keys: see docs/engine.md.)")
    bad = [k for k in data if k in forbidden]
    if bad:
        raise ConfigError("; ".join(f"{where} may not set {k!r}: {forbidden[k]}" for k in bad) + ".")


def validated(where: str, *layers: Mapping[str, Any]) -> RunConfig:
    try:
        return make_config(*layers, source=where)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def as_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(value).__name__}.")
    return dict(value)


def int_list(value: Any, where: str, *, minimum: int) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{where} must hold integers >= {minimum}, got {v!r}.")
        out.append(int(v))
    if not out:
        raise ConfigError(f"{where} is empty.")
    if len(set(out)) != len(out):
        raise ConfigError(f"{where} repeats a value: {out}.")
    return out


def _value_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "|".join(_value_name(x) for x in v) or "none"
    return str(v)


def auto_name(overrides: Mapping[str, Any]) -> str:
    """``k=v+k=v`` (characters a directory name should not hold become ``-``); ``refconv`` for no changes."""
    if not overrides:
        return "refconv"
    raw = "+".join(f"{k}={_value_name(v)}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9._=+,-]", "-", raw)


def expand_grid(grid: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Cartesian product of ``{key: [values]}`` in key order, as ``(auto name, overrides)`` pairs.

    A scalar counts as a one-value list, so ``{init: zeros, map_k: [1, 3]}`` gives two settings.
    """
    keys = list(grid)
    values = []
    for k in keys:
        v = grid[k]
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        if not v:
            raise ConfigError(f"grid.{k} is an empty list: give at least one value.")
        values.append(v)
    out = []
    for combo in itertools.product(*values):
        overrides = dict(zip(keys, combo))
        out.append((auto_name(overrides), overrides))
    return out
