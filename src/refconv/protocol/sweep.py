"""``refconv sweep``: when does RefConv beat fair controls, and by how much? A study with arms given as data.

A sweep YAML names a shared recipe (``base``), a baseline (trained here, or ``weights: PATH``), seeds,
budgets E (epochs) and RefConv settings (a list and/or a grid). For every budget it runs each setting and the
controls (``continue``, ``finetune``) from the same baseline checkpoint with the same recipe, once per seed;
every cell is a normal engine run (cached by its ``done.json``, resumed from its ``last.pt``), so a sweep
can be stopped, extended (more seeds, budgets or settings) and rerun without redoing finished cells.

Why a separate schema rather than a list of engine configs: a comparison is only fair when every arm
shares the recipe and the starting weights, so the sweep owns exactly the keys that define the comparison
(``method``, ``epochs``, ``seed``, ``weights``, ``out``) and refuses them anywhere else.

::

    name: my-sweep                      # default: the file name
    base: {model: timm/mobilenetv3_small_100, data: fashion-mnist, image_size: 32, batch_size: 128,
           warmup_epochs: 0}            # RunConfig keys shared by every run
    baseline: {epochs: 6, warmup_epochs: 1}   # RunConfig keys of the baseline run, or {weights: PATH}
    seeds: 2                            # N (seeds 0..N-1) or a list
    budgets: [1, 3]                     # E, epochs of every arm
    settings:                           # RefConv settings (RunConfig keys valid for method refconv)
      - {name: authors}
      - {name: zero-init, init: zeros}
    grid: {map_k: [1, 3], basis: [pretrained, random]}   # optional: cartesian product, named automatically
    controls: [continue, finetune]      # default
    parallel: 1                         # processes (int or "auto")
    time_budget_minutes: 60             # refuse a larger estimate unless --yes
    ci: t                               # t | bootstrap
    confidence: 0.95

Outputs in ``--out``: ``sweep.json`` (what the directory holds), ``runs/baseline``, ``runs/e<E>/<arm>/seed<s>``,
``results.json`` (every number), ``report.md`` / ``report.html`` and PNG plots, written by
:mod:`refconv.protocol.sweep_report` from ``results.json`` alone.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine import RunConfig, RunInterrupted, RunResult
from ..engine.rundir import RunDirLock, check_out_path, is_empty
from ..engine.rundir import inspect as inspect_run_dir
from ..engine.rundir import clear as clear_dir
from ..engine.config import (NON_RECIPE_KEYS, config_hash, make_config, packaged_yaml, resolve_packaged,
                             warmup_warning)
from ..errors import CheckpointError, ConfigError, ConversionError
from ..runlayout import deployable_weights, is_finished
from ..stats import paired_difference, summarize, verdict
from .cells import Arm, Cell, cell_config, run_cell, run_cells

__all__ = [
    "SweepSpec",
    "Setting",
    "SweepResult",
    "SweepTooLarge",
    "TOP_LEVEL_KEYS",
    "REFCONV_KEYS",
    "CONTROLS",
    "load_sweep",
    "parse_sweep",
    "packaged_sweeps",
    "resolve_sweep_path",
    "expand_grid",
    "compare_arms",
    "budget_rows",
    "estimate_sweep",
    "run_sweep",
]

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.json"
BASELINE_EVAL_FILE = "baseline-eval.json"

TOP_LEVEL_KEYS = ("name", "description", "base", "baseline", "seeds", "budgets", "settings", "grid", "controls",
                  "parallel", "time_budget_minutes", "ci", "confidence")
CONTROLS = ("continue", "finetune")
# RunConfig keys that only change RefConv itself: a setting that changes them is compared at equal recipe.
REFCONV_KEYS = ("map_k", "groups", "max_group_size", "init", "include", "exclude", "layers", "basis",
                "refocus_lr_mult", "refocus_weight_decay")
# Keys the sweep sets itself, per cell: nobody else may.
_SWEEP_OWNED = {
    "method": "the sweep sets it per arm (settings are refconv, controls are listed under 'controls')",
    "epochs": "the budget E comes from 'budgets' (and the baseline's from 'baseline: {epochs: N}')",
    "seed": "seeds come from 'seeds' (the baseline's from 'baseline: {seed: N}')",
    "out": "run directories live under the sweep's --out",
    "overwrite": "pass --overwrite to `refconv sweep` instead",
    "weights": "the arms start from the baseline; give 'baseline: {weights: PATH}' to start from a checkpoint",
}
# Keys that define the data and the architecture: every run of a comparison shares them, so only 'base' sets them.
_SHARED_ONLY = ("model", "data", "data_dir", "download", "num_classes", "in_chans", "image_size", "subset_train",
                "subset_test", "data_seed")
_RESERVED_NAMES = ("baseline",) + CONTROLS
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")
_RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig))
DEFAULT_TIME_BUDGET_MIN = 60.0
# The estimate's step timing: warm-up steps, then between MIN and MAX timed steps within a time budget.
_WARMUP_STEPS = 2
_TIMED_STEPS_MIN = 5
_TIMED_STEPS_MAX = 15
_TIMING_BUDGET_S = 3.0
_RUN_OVERHEAD_S = 1.0  # per run: checkpoint and weight files, done.json (added to the measured model build time)


class SweepTooLarge(ConfigError):
    """The estimated wall time exceeds ``time_budget_minutes`` and ``yes`` was not given."""

    def __init__(self, message: str, estimate: dict[str, Any]) -> None:
        super().__init__(message)
        self.estimate = estimate


@dataclass(frozen=True)
class Setting:
    """One named RefConv setting: RunConfig overrides applied on top of ``base`` for method ``refconv``."""

    name: str
    overrides: dict[str, Any]
    source: str  # "settings[i]" or "grid"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": dict(self.overrides), "source": self.source}


@dataclass
class SweepSpec:
    """A validated sweep: everything that defines it, in plain JSON-able values (see the module docstring)."""

    name: str
    base: dict[str, Any]
    baseline: dict[str, Any]
    seeds: list[int]
    budgets: list[int]
    settings: list[Setting]
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    parallel: int | str = 1
    time_budget_minutes: float = DEFAULT_TIME_BUDGET_MIN
    ci: str = "t"
    confidence: float = 0.95
    description: str = ""
    source: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["settings"] = [s.to_dict() for s in self.settings]
        return json.loads(json.dumps(d, default=str))

    @property
    def baseline_weights(self) -> str | None:
        """The checkpoint the arms start from when the baseline is not trained here."""
        return self.baseline.get("weights")

    def base_config(self, **runtime: Any) -> RunConfig:
        """The shared recipe as a :class:`RunConfig`; ``runtime`` adds non-recipe keys (data_dir, workers...)."""
        extra = {k: v for k, v in runtime.items() if v is not None}
        return make_config(self.base, extra, source="base")

    def arms(self) -> list[Arm]:
        """Every arm of the sweep, per budget: the settings (refconv) then the controls."""
        out: list[Arm] = []
        for e in self.budgets:
            out += [Arm(f"e{e}/{s.name}", "refconv", e, dict(s.overrides)) for s in self.settings]
            out += [Arm(f"e{e}/{c}", c, e) for c in self.controls]
        return out


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced (``results`` and the reports are ``None`` for an estimate only)."""

    out_dir: Path
    spec: SweepSpec
    estimate: dict[str, Any]
    results: dict[str, Any] | None = None
    report_md: Path | None = None
    report_html: Path | None = None


# ---------------------------------------------------------------------------------------------- loading
def packaged_sweeps() -> dict[str, Path]:
    """The sweeps shipped in ``refconv/configs/sweeps`` by name (file stem)."""
    return packaged_yaml("sweeps")


def resolve_sweep_path(name_or_path: str | os.PathLike) -> Path:
    """A sweep YAML path, or the name of a packaged sweep (``fashion-mnist-small``, ``ablations``)."""
    return resolve_packaged(name_or_path, packaged_sweeps(), "sweep config", "sweep")


def load_sweep(name_or_path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep YAML (a path or a packaged sweep name)."""
    path = resolve_sweep_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep config {path} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read sweep config {path}: {exc.strerror}.") from None
    if data is None:
        data = {}
    return parse_sweep(data, source=str(path), default_name=path.stem)


def _unknown_keys_error(keys: Sequence[str], where: str, allowed: Sequence[str], extra: str = "") -> ConfigError:
    hints = []
    for k in keys:
        close = difflib.get_close_matches(str(k), list(allowed), n=1)
        if close:
            hints.append(f"{close[0]!r} for {k!r}")
    hint = f" Did you mean {' and '.join(hints)}?" if hints else ""
    return ConfigError(
        f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(repr(k) for k in keys)} in {where}.{hint} "
        f"Allowed: {', '.join(allowed)}.{extra}"
    )


def _check_run_keys(data: Mapping[str, Any], where: str, forbidden: Mapping[str, str]) -> None:
    """Unknown RunConfig keys (all named at once), then keys this section may not set (with the reason)."""
    unknown = [k for k in data if k not in _RUN_KEYS]
    if unknown:
        allowed = [k for k in _RUN_KEYS if k not in forbidden]
        raise _unknown_keys_error(unknown, where, allowed, " (RunConfig keys: see docs/engine.md.)")
    bad = [k for k in data if k in forbidden]
    if bad:
        raise ConfigError("; ".join(f"{where} may not set {k!r}: {forbidden[k]}" for k in bad) + ".")


def _validated(where: str, *layers: Mapping[str, Any]) -> RunConfig:
    try:
        return make_config(*layers, source=where)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(value).__name__}.")
    return dict(value)


def _int_list(value: Any, where: str, *, minimum: int) -> list[int]:
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


def _auto_name(overrides: Mapping[str, Any]) -> str:
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
        out.append((_auto_name(overrides), overrides))
    return out


def parse_sweep(data: Mapping[str, Any], *, source: str = "", default_name: str = "sweep") -> SweepSpec:
    """Validate a sweep mapping (as read from YAML) into a :class:`SweepSpec`.

    Every error names the section and the key, and lists what is allowed; RunConfig values are checked by
    :func:`refconv.engine.make_config`, so a sweep is refused before anything trains.

    Raises:
        ConfigError: unknown or misplaced keys, bad values, empty or duplicate settings.
    """
    where = source or "the sweep config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must hold a mapping (base:, baseline:, seeds:, budgets:, settings:...), got "
                          f"{type(data).__name__}.")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise _unknown_keys_error(unknown, where, TOP_LEVEL_KEYS)
    warnings: list[str] = []

    # ---- base: the shared recipe
    base = _mapping(data.get("base"), "base")
    _check_run_keys(base, "base", {**_SWEEP_OWNED, "pretrained": "hub weights start the baseline: put "
                                                                 "'pretrained: true' under 'baseline'"})
    base_cfg = _validated("base", base)
    base = {k: getattr(base_cfg, k) for k in base}  # values as coerced by the engine

    # ---- baseline: trained here, or an existing checkpoint
    baseline = _mapping(data.get("baseline"), "baseline")
    if "weights" in baseline:
        others = [k for k in baseline if k != "weights"]
        if others:
            raise ConfigError(f"baseline: 'weights' starts the arms from an existing checkpoint and cannot be combined "
                              f"with training keys ({', '.join(others)}). Remove them, or remove 'weights' to train "
                              "the baseline here.")
        w = baseline["weights"]
        if not isinstance(w, (str, os.PathLike)) or not str(w):
            raise ConfigError(f"baseline.weights must be a path, got {w!r}.")
        path = Path(w).expanduser()
        from ..models import pretrained

        if pretrained.is_pretrained_name(w):  # fmnist/...: its card must fit 'base'; its SHA-256 is checked
            pretrained.check_compatible(str(w), model=base_cfg.model, data=base_cfg.data, image_size=base_cfg.image_size,
                                        in_chans=base_cfg.in_chans, num_classes=base_cfg.num_classes)
            path = pretrained.weights_path(str(w))
        if not path.exists():
            raise ConfigError(f"baseline.weights {str(w)!r} does not exist. Give a weights file, a finished run "
                              "directory or a pretrained model (`refconv pretrained` lists them).")
        baseline = {"weights": str(path.resolve())}
    else:
        _check_run_keys(baseline, "baseline", {
            **{k: v for k, v in _SWEEP_OWNED.items() if k not in ("epochs", "seed", "weights")},
            **{k: "the data and model are shared by every run: set it in 'base'" for k in _SHARED_ONLY},
        })
        if "epochs" not in baseline:
            raise ConfigError("baseline needs 'epochs' (how long to train the baseline here), or 'weights: PATH' to "
                              "start every arm from an existing checkpoint.")
        cfg = _validated("baseline", base, baseline, {"method": "baseline"})
        baseline = {k: getattr(cfg, k) for k in baseline}

    # ---- seeds, budgets, controls
    if "seeds" not in data:
        raise ConfigError("the sweep needs 'seeds': a count (e.g. 3) or a list of seeds.")
    seeds_v = data["seeds"]
    if isinstance(seeds_v, int) and not isinstance(seeds_v, bool):
        if seeds_v < 1:
            raise ConfigError(f"seeds must be >= 1, got {seeds_v}.")
        seeds = list(range(seeds_v))
    else:
        seeds = _int_list(seeds_v, "seeds", minimum=0)
    if len(seeds) < 2:
        warnings.append(f"only {len(seeds)} seed: results are reported without confidence intervals, and no setting "
                        "can be said to beat a control. Use seeds: 2 or more for a statistical claim.")
    if "budgets" not in data:
        raise ConfigError("the sweep needs 'budgets': a list of epoch budgets E, e.g. [1, 3].")
    budgets = sorted(_int_list(data["budgets"], "budgets", minimum=1))
    controls_v = data.get("controls", list(CONTROLS))
    controls = [controls_v] if isinstance(controls_v, str) else list(controls_v or [])
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        raise ConfigError(f"unknown control(s) {', '.join(repr(c) for c in bad)}; controls are {', '.join(CONTROLS)}.")
    if not controls:
        raise ConfigError("controls is empty: a RefConv gain is only claimed against a control (continue and/or "
                          "finetune).")
    if len(set(controls)) != len(controls):
        raise ConfigError(f"controls repeats a value: {controls}.")

    # ---- settings: explicit list, then the grid
    raw: list[tuple[str | None, dict[str, Any], str]] = []
    settings_v = data.get("settings") or []
    if not isinstance(settings_v, list):
        raise ConfigError(f"settings must be a list of mappings (e.g. - {{name: zero-init, init: zeros}}), got "
                          f"{type(settings_v).__name__}.")
    for i, entry in enumerate(settings_v):
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _mapping(entry, f"settings[{i}]")
        name = entry.pop("name", None)
        raw.append((None if name is None else str(name), entry, f"settings[{i}]"))
    grid = _mapping(data.get("grid"), "grid")
    for name, overrides in expand_grid(grid) if grid else []:
        raw.append((name, overrides, "grid"))
    if not raw:
        raise ConfigError("the sweep has no RefConv setting: add 'settings' (e.g. - {name: authors}) or a 'grid'.")
    forbidden = {**_SWEEP_OWNED,
                 "pretrained": "every arm starts from the baseline's weights",
                 **{k: "the data and model are shared by every run: set it in 'base'" for k in _SHARED_ONLY}}
    settings: list[Setting] = []
    seen_cfg: dict[str, str] = {}
    for name, overrides, where_s in raw:
        label = f"{where_s} ({name})" if name else where_s
        _check_run_keys(overrides, label, forbidden)
        cfg = _validated(label, base, overrides, {"method": "refconv", "weights": "baseline"})
        overrides = {k: getattr(cfg, k) for k in overrides}
        name = name or _auto_name(overrides)
        if not _NAME_RE.match(name):
            raise ConfigError(f"{label}: setting name {name!r} must start with a letter or digit and hold only letters, "
                              "digits and . _ = + , - (it names a directory).")
        if name in _RESERVED_NAMES:
            raise ConfigError(f"{label}: setting name {name!r} is reserved (baseline and control arms use it).")
        if any(s.name == name for s in settings):
            raise ConfigError(f"two settings are named {name!r}: names must be unique.")
        key = config_hash(cfg)
        if key in seen_cfg:
            raise ConfigError(f"settings {seen_cfg[key]!r} and {name!r} are the same run (same configuration after "
                              "defaults). Remove one.")
        seen_cfg[key] = name
        recipe_changes = [k for k in overrides if k not in REFCONV_KEYS and k not in NON_RECIPE_KEYS]
        if recipe_changes:
            warnings.append(f"setting {name!r} changes {', '.join(recipe_changes)}, which the controls keep at the base "
                            "value: its comparison with them is not at an equal recipe.")
        settings.append(Setting(name, overrides, where_s))

    # ---- how to run and how to judge
    parallel = data.get("parallel", 1)
    if not (parallel == "auto" or (isinstance(parallel, int) and not isinstance(parallel, bool) and parallel >= 1)):
        raise ConfigError(f"parallel must be an integer >= 1 or 'auto', got {parallel!r}.")
    tb = data.get("time_budget_minutes", DEFAULT_TIME_BUDGET_MIN)
    if isinstance(tb, bool) or not isinstance(tb, (int, float)) or not tb > 0:
        raise ConfigError(f"time_budget_minutes must be a number > 0, got {tb!r}.")
    ci = data.get("ci", "t")
    if ci not in ("t", "bootstrap"):
        raise ConfigError(f"ci must be 't' (paired Student t) or 'bootstrap', got {ci!r}.")
    conf = data.get("confidence", 0.95)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 < conf < 1:
        raise ConfigError(f"confidence must be in (0, 1), e.g. 0.95, got {conf!r}.")
    if ci == "bootstrap" and len(seeds) < 10:
        warnings.append(f"ci: bootstrap with {len(seeds)} seeds gives intervals that are too narrow (a percentile "
                        "bootstrap needs many pairs); ci: t is the honest choice for a handful of seeds.")
    warmup = warmup_warning(base_cfg.warmup_epochs, budgets[0], where=" in base", budget=f"the budget E={budgets[0]}",
                            fix="Set warmup_epochs in base (e.g. 0) and the baseline's own under 'baseline'.")
    if warmup:
        warnings.append(warmup)
    name = data.get("name", default_name)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"name must be a short identifier (letters, digits, . _ = + , -), got {name!r}.")
    desc = data.get("description", "") or ""
    return SweepSpec(name=name, description=str(desc).strip(), base=base, baseline=baseline, seeds=seeds,
                     budgets=budgets, settings=settings, controls=controls, parallel=parallel,
                     time_budget_minutes=float(tb), ci=ci, confidence=float(conf), source=source or None,
                     warnings=warnings)


# ---------------------------------------------------------------------------------------------- statistics
def compare_arms(values: Mapping[str, Sequence[float]], controls: Sequence[str], *, ci: str = "t",
                 confidence: float = 0.95) -> dict[str, Any]:
    """Summaries of every arm, the best control, and each non-control arm's paired differences to each control.

    The best control is the control with the higher mean (the first listed on a tie): a setting is judged
    against the strongest thing a user could have done instead with the same budget.

    Args:
        values: arm -> per-seed values, every list in the same seed order (the pairing).
        controls: the control arms among ``values``.

    Returns:
        ``{"best_control": name, "summaries": {arm: Summary}, "diffs": {arm: {control: PairedDifference}}}``.
    """
    missing = [c for c in controls if c not in values]
    if missing or not controls:
        raise ValueError(f"controls {missing or list(controls)} have no values.")
    summaries = {a: summarize(v) for a, v in values.items()}
    best = max(controls, key=lambda c: summaries[c].mean)
    diffs = {a: {c: paired_difference(v, values[c], confidence=confidence, method=ci) for c in controls}
             for a, v in values.items() if a not in controls}
    return {"best_control": best, "summaries": summaries, "diffs": diffs}


def budget_rows(spec: SweepSpec, budget: int, cells: Mapping[str, Mapping[str, Any]],
                baseline_top1: float | None) -> dict[str, Any]:
    """The results table of one budget, from the per-cell records (``cells["e3/zero-init/seed0"]``).

    Every number is computed from the cells' ``final`` metrics and ``history`` (the runs' metrics.jsonl),
    so the table can be checked against the run directories.
    """
    def key(arm: str, seed: int) -> str:
        return f"e{budget}/{arm}/seed{seed}"

    arms = [s.name for s in spec.settings] + list(spec.controls)
    top1 = {a: [float(cells[key(a, s)]["final"]["top1"]) for s in spec.seeds] for a in arms}
    top5 = {a: [float(cells[key(a, s)]["final"]["top5"]) for s in spec.seeds] for a in arms}
    cmp1 = compare_arms(top1, spec.controls, ci=spec.ci, confidence=spec.confidence)
    best = cmp1["best_control"]
    ref_time = _mean([t for s in spec.seeds for t in _epoch_times(cells[key(best, s)])])
    rows = []
    for a in arms:
        is_control = a in spec.controls
        recs = [cells[key(a, s)] for s in spec.seeds]
        times = [t for r in recs for t in _epoch_times(r)]
        epoch_time = _mean(times)
        row: dict[str, Any] = {
            "budget": budget,
            "arm": a,
            "kind": "control" if is_control else "setting",
            "method": a if is_control else "refconv",
            "overrides": {} if is_control else dict(next(s for s in spec.settings if s.name == a).overrides),
            "cells": [key(a, s) for s in spec.seeds],
            "values": top1[a],
            "values_top5": top5[a],
            "summary": cmp1["summaries"][a].to_dict(),
            "summary_top5": summarize(top5[a]).to_dict(),
            "best_control": best,
            "vs": {c: d.to_dict() for c, d in cmp1["diffs"].get(a, {}).items()},
            "vs_best": cmp1["diffs"][a][best].to_dict() if not is_control else None,
            "vs_baseline": (cmp1["summaries"][a].mean - baseline_top1) if baseline_top1 is not None else None,
            "verdict": verdict(cmp1["diffs"][a][best], f"the best control ({best})") if not is_control else None,
            "cost": {
                "epoch_time_s": epoch_time,
                "epoch_time_ratio": epoch_time / ref_time if epoch_time is not None and ref_time else None,
                "trainable_params": recs[0]["trainable_params"],
                "total_params": recs[0]["total_params"],
                "deploy_params": recs[0]["deploy_params"],
                "wall_time_s": _mean([r["wall_time_s"] for r in recs]),
            },
        }
        rows.append(row)
    return {"budget": budget, "best_control": best, "rows": rows}


def _epoch_times(cell: Mapping[str, Any]) -> list[float]:
    return [float(h["epoch_time_s"]) for h in cell.get("history", []) if h.get("epoch_time_s") is not None]


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    base: RunConfig
    baseline_cfg: RunConfig | None  # None: the arms start from spec.baseline_weights
    baseline_dir: str
    cells: list[Cell]
    status: dict[str, str]  # cell out dir -> done | partial | new | mismatch
    mismatch: dict[str, str]  # cell out dir -> diff text
    baseline_status: str
    clear_all: bool


def _cell_key(cell: Cell) -> str:
    return f"{cell.arm.name}/seed{cell.seed}"


def _run_status(cfg: RunConfig) -> tuple[str, str]:
    """``(done|partial|new|mismatch, diff text)`` of a run directory against the config meant for it
    (:func:`refconv.engine.rundir.inspect`; files that are not a run's count as a mismatch: only
    ``--overwrite`` may remove them)."""
    state = inspect_run_dir(cfg.run_dir(), cfg)
    return ("mismatch" if state.kind == "foreign" else state.kind), state.detail


def _identity(spec: SweepSpec, base: RunConfig) -> dict[str, Any]:
    """What every cell silently depends on (the shared recipe and the baseline): a change invalidates them all."""
    recipe = {k: v for k, v in base.to_dict().items() if k not in NON_RECIPE_KEYS}
    baseline = dict(spec.baseline)
    if spec.baseline_weights:
        baseline["sha256"] = _fingerprint(Path(spec.baseline_weights))
    return json.loads(json.dumps({"base": recipe, "baseline": baseline}, default=str))


def _fingerprint(path: Path) -> str:
    if path.is_dir() and is_finished(path):
        path = deployable_weights(path)
    if not path.is_file():
        return "unavailable"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _plan(spec: SweepSpec, out: Path, base: RunConfig, overwrite: bool) -> _Plan:
    marker = out / SWEEP_FILE
    clear_all = False
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        ident = _identity(spec, base)
        if saved.get("identity") != ident:
            old = saved.get("identity", {})
            changed = [f"base.{k}" for k in sorted(set(old.get("base", {})) | set(ident["base"]))
                       if old.get("base", {}).get(k) != ident["base"].get(k)]
            changed += [f"baseline.{k}" for k in sorted(set(old.get("baseline", {})) | set(ident["baseline"]))
                        if old.get("baseline", {}).get(k) != ident["baseline"].get(k)]
            if not overwrite:
                raise CheckpointError(
                    f"{out} holds a sweep with a different shared recipe or baseline ({', '.join(changed[:8]) or 'format'}"
                    "): its runs cannot be reused. Use another --out, or pass --overwrite to recompute everything there."
                )
            clear_all = True
    elif not is_empty(out):
        raise CheckpointError(f"{out} exists, is not empty and is not a sweep directory (no {SWEEP_FILE}): refusing to "
                              "write into it, even with --overwrite. Choose another --out.")
    runs = out / "runs"
    baseline_cfg = None
    if spec.baseline_weights:
        baseline_dir = spec.baseline_weights
        baseline_status = "given"
    else:
        baseline_cfg = base.replace(**{"method": "baseline", "seed": 0, "out": str(runs / "baseline"), **spec.baseline})
        baseline_dir = str(runs / "baseline")
        baseline_status = "new" if clear_all else _run_status(baseline_cfg)[0]
    cells = [Cell(a, s, cell_config(base, baseline_dir, a, s, runs)) for a in spec.arms() for s in spec.seeds]
    status: dict[str, str] = {}
    mismatch: dict[str, str] = {}
    for c in cells:
        st, diff = ("new", "") if clear_all else _run_status(c.config)
        status[_cell_key(c)] = st
        if st == "mismatch":
            mismatch[_cell_key(c)] = diff
    if mismatch and not overwrite:
        shown = "; ".join(f"{k} ({d})" for k, d in list(mismatch.items())[:4])
        raise CheckpointError(
            f"{len(mismatch)} run director{'y' if len(mismatch) == 1 else 'ies'} of {out} hold a different configuration "
            f"than this sweep gives them: {shown}. Rename the setting, use another --out, or pass --overwrite to "
            "recompute those cells (finished cells that match are kept)."
        )
    if baseline_cfg is not None and baseline_status == "mismatch":
        if not overwrite:
            raise CheckpointError(f"{baseline_cfg.out} holds a different baseline run. Use another --out or --overwrite.")
        clear_all = True
        status = {k: "new" for k in status}
        mismatch = {}
        baseline_status = "new"
    return _Plan(base, baseline_cfg, baseline_dir, cells, status, mismatch, baseline_status, clear_all)


def _resolve_parallel(parallel: int | str, todo: int) -> int:
    if parallel == "auto":
        return max(1, min(todo, (os.cpu_count() or 1) // 2))
    return max(1, int(parallel))


# ---------------------------------------------------------------------------------------------- estimate
def _time_settings(spec: SweepSpec, base: RunConfig, plain: Any, plain_cpu: Any, time_step: Callable[[Any], float],
                   time_eval: Callable[[Any], float]) -> tuple[dict[str, float], float, list[str]]:
    """Training-step seconds of the plain model and of each distinct conversion, one evaluation forward, and
    warnings about settings that resolve to the same run. Conversion errors become a ConfigError naming the
    setting."""
    from ..engine.modeling import apply_conversion, convert_kwargs, select_layers

    step_s: dict[str, float] = {"plain": time_step(plain)}
    eval_s = time_eval(plain)
    by_conv: dict[str, float] = {}
    resolved: dict[str, str] = {}
    warnings: list[str] = []
    for s in spec.settings:
        cfg = base.replace(method="refconv", weights="baseline", **s.overrides)
        kw = convert_kwargs(cfg)
        try:
            names = select_layers(plain_cpu, kw)
        except ConversionError as exc:
            raise ConfigError(f"setting {s.name!r} cannot be applied to {base.model}: {exc}") from None
        # Two settings that pick the same layers with the same options are the same run (e.g. layers: no-stem and
        # layers: depthwise on a model whose stem is its only dense conv): say so rather than spend the time twice.
        same = config_hash(cfg.replace(include=names, exclude=[], layers="all"))
        if same in resolved:
            warnings.append(f"settings {resolved[same]!r} and {s.name!r} convert the same layers of {base.model} with "
                            "the same options: they are the same run, trained twice.")
        resolved.setdefault(same, s.name)
        ckey = json.dumps({**{k: v for k, v in kw.items() if k not in ("init", "basis")}, "names": names},
                          sort_keys=True)
        if ckey not in by_conv:
            model = copy.deepcopy(plain_cpu)
            try:
                apply_conversion(model, kw)
            except ConversionError as exc:  # names the layer and the rule; add the setting
                raise ConfigError(f"setting {s.name!r} cannot be applied to {base.model}: {exc}") from None
            by_conv[ckey] = time_step(model)
            del model
        step_s[s.name] = by_conv[ckey]
    return step_s, eval_s, warnings


def estimate_sweep(spec: SweepSpec, base: RunConfig, *, baseline_todo: bool, todo: Sequence[Cell],
                   parallel: int, cells_total: int | None = None) -> dict[str, Any]:
    """Estimate the wall time of what is left to train, from a few timed steps per distinct model.

    Nothing expensive is measured: the train and test splits are built (as the runs will build them), one
    batch is made by the engine's input path, and training steps on it (forward, backward, the engine's
    optimizer, its memory format) are timed for the plain model and for each distinct RefConv conversion of
    the sweep: two warm-up steps, then 5-15 timed steps within about 3 s, whose **median** is used and whose
    quartiles give the estimate's range (a single step on a loaded machine was once 10x too slow). Plus one
    evaluation forward. Building each conversion also checks every setting's grouping and layer
    selection on the real model, so a bad setting fails here, before anything trains.

    Per run: ``epochs x (steps_per_epoch x (step + data) + eval_batches x eval)`` plus the measured model
    build time and a fixed overhead; RefConv runs add one more evaluation (the folded model). With
    ``workers > 0`` data loading overlaps compute: ``max(step, data / workers)``. With ``parallel`` P > 1 on
    CPU the cells are timed with one thread, as each process will run them, and their sum is divided by
    ``min(P, cores)``; on CUDA it is divided by P. The figure is a guide, not a promise: other load on the
    machine (which the timing sees only while it lasts), caches and thermal limits change it.
    """
    import torch
    from torch import nn
    from torch.utils.data import default_collate

    from ..data import build_dataset
    from ..engine.loop import amp_dtype, autocast
    from ..engine.modeling import create_stock_model
    from ..engine.optim import build_optimizer

    t_all = time.perf_counter()
    if base.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available. Use device: cpu (or auto).")
    device = torch.device("cuda" if base.device != "cpu" and torch.cuda.is_available() else "cpu")
    common = {"data_dir": base.data_dir, "image_size": base.image_size, "in_chans": base.in_chans,
              "download": base.download, "seed": base.data_seed}
    train_ds, info = build_dataset(base.data, "train", augment=base.augment, subset=base.subset_train, **common)
    test_ds, _ = build_dataset(base.data, "test", augment=False, subset=base.subset_test, **common)
    steps = len(train_ds) // base.batch_size  # the engine drops the last partial batch
    if steps < 1:
        raise ConfigError(f"batch_size={base.batch_size} is larger than the {len(train_ds)} training images: no full "
                          "batch. Lower batch_size in base or use more data (subset_train).")
    bs = base.batch_size
    eval_batches = math.ceil(len(test_ds) / base.batch_size)
    from ..data.resident import resident_images

    resident = (resident_images(train_ds, device=device, channels_last=base.channels_last)
                if base.input_pipeline != "loader" else None)
    index = torch.arange(bs)
    data_times = []
    for _ in range(3):  # the engine's own input path; the first call pays one-off costs
        t = time.perf_counter()
        if resident is not None:
            x, y = resident.batch(index, torch.Generator().manual_seed(0))
        else:
            x, y = default_collate([train_ds[i] for i in range(bs)])
        data_times.append(time.perf_counter() - t)
    data_s = statistics.median(data_times[1:])
    x, y = x.to(device), y.to(device)
    if base.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    spreads: list[tuple[float, float]] = []  # per timed model: (first quartile, third quartile) / median
    num_classes = base.num_classes or info.num_classes
    amp = amp_dtype(base.amp, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def time_step(model: nn.Module) -> float:
        model.to(device).train()
        if base.channels_last:
            model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, base.replace(lr=1e-4))  # the engine's optimizer (fused kernels...)
        loss_fn = nn.CrossEntropyLoss()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sync()

        for _ in range(_WARMUP_STEPS):  # allocations, oneDNN primitives, the allocator's thresholds settle
            step()
        times: list[float] = []
        t_end = time.perf_counter() + _TIMING_BUDGET_S
        while len(times) < _TIMED_STEPS_MIN or (len(times) < _TIMED_STEPS_MAX and time.perf_counter() < t_end):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        # The median, not the minimum or one step: load spikes on a shared machine skew single steps by 10x.
        q1, med, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
        spreads.append((q1 / med, q3 / med))
        return med

    def time_eval(model: nn.Module) -> float:
        model.to(device).eval()
        with torch.no_grad(), autocast(device, amp):
            model(x)
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
        return time.perf_counter() - t0

    rng_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    # Cells in parallel processes on CPU run with one thread each (refconv.protocol.run_cells): time them so.
    cell_threads = 1 if parallel > 1 and device.type == "cpu" else threads
    t = time.perf_counter()
    plain = create_stock_model(base.model, num_classes=num_classes, in_chans=info.in_chans)
    build_s = time.perf_counter() - t
    plain_cpu = copy.deepcopy(plain)
    baseline_step_s = time_step(copy.deepcopy(plain)) if baseline_todo and cell_threads != threads else None
    torch.set_num_threads(cell_threads)
    try:
        step_s, eval_s, resolved_warnings = _time_settings(spec, base, plain, plain_cpu, time_step, time_eval)
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)

    workers = max(0, base.workers)

    def per_step(compute: float) -> float:
        return max(compute, data_s / workers) if workers else compute + data_s

    def run_s(epochs: int, compute: float, refconv: bool) -> float:
        evals = eval_batches * eval_s
        return (epochs * (steps * per_step(compute) + evals) + (evals if refconv else 0.0) + build_s
                + _RUN_OVERHEAD_S)

    baseline_step = baseline_step_s if baseline_step_s is not None else step_s["plain"]
    baseline_s = run_s(int(spec.baseline.get("epochs", 0)), baseline_step, False) if baseline_todo else 0.0
    cells_s = sum(run_s(c.arm.epochs, step_s[c.arm.name.split("/", 1)[1]] if c.arm.method == "refconv"
                        else step_s["plain"], c.arm.method == "refconv") for c in todo)
    cores = os.cpu_count() or 1
    if parallel > 1 and device.type == "cpu":
        cells_wall = cells_s / min(parallel, cores)
    elif parallel > 1:
        cells_wall = cells_s / parallel
    else:
        cells_wall = cells_s
    wall = baseline_s + cells_wall
    # The interquartile range of the steps, relative to their median, bounds the estimate (steps dominate it).
    lo = min((a for a, _ in spreads), default=1.0)
    hi = max((b for _, b in spreads), default=1.0)
    return {
        "method": f"median of {_TIMED_STEPS_MIN}-{_TIMED_STEPS_MAX} timed steps after {_WARMUP_STEPS} warm-up steps",
        "wall_s_range": (wall * lo, wall * hi),
        "device": str(device),
        "threads": threads,
        "cell_threads": cell_threads,
        "baseline_step_s": baseline_step,
        "batch_size": base.batch_size,
        "train_images": len(train_ds),
        "test_images": len(test_ds),
        "steps_per_epoch": steps,
        "eval_batches": eval_batches,
        "data_s_per_batch": data_s,
        "step_s": step_s,
        "eval_s_per_batch": eval_s,
        "run_overhead_s": build_s + _RUN_OVERHEAD_S,
        "baseline_todo": baseline_todo,
        "baseline_s": baseline_s,
        "cells_total": cells_total if cells_total is not None else len(todo),
        "cells_todo": len(todo),
        "cells_s": cells_s,
        "parallel": parallel,
        "wall_s": wall,
        "time_budget_s": spec.time_budget_minutes * 60,
        "measured_in_s": time.perf_counter() - t_all,
        "warnings": resolved_warnings,
    }


def _estimate_text(est: dict[str, Any]) -> str:
    todo = est["cells_todo"] + (1 if est["baseline_todo"] else 0)
    lo, hi = est.get("wall_s_range", (est["wall_s"], est["wall_s"]))
    return (f"about {est['wall_s'] / 60:.1f} min for {todo} run(s) left to train "
            f"({'baseline + ' if est['baseline_todo'] else ''}{est['cells_todo']} of {est['cells_total']} cells), "
            f"{est['parallel']} process(es) on {est['device']}; {lo / 60:.1f}-{hi / 60:.1f} min at the quartiles of "
            f"the {est['method']} ({est['steps_per_epoch']} steps/epoch, plain step "
            f"{est['step_s']['plain'] * 1000:.0f} ms)")


# ---------------------------------------------------------------------------------------------- running
class _Progress:
    """One line per finished cell; the ETA counts only cells trained in this call (cached ones are instant)."""

    def __init__(self, total: int, todo: int, log: Callable[[str], None]) -> None:
        self.total, self.todo, self.log = total, todo, log
        self.done = self.trained = 0
        self.t0 = time.perf_counter()

    def cell(self, label: str, res: RunResult, cached: bool) -> None:
        self.done += 1
        if cached:
            state, eta = "cached", ""
        else:
            self.trained += 1
            left = self.todo - self.trained
            spent = time.perf_counter() - self.t0
            state = f"{res.wall_time_s:.0f}s"
            eta = f", ~{_duration(spent / self.trained * left)} left" if left else ""
        self.log(f"[sweep]   {self.done}/{self.total} {label}: top-1 {res.final.get('top1', float('nan')):.2f} "
                 f"({state}){eta}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _cell_record(res: RunResult, out: Path) -> dict[str, Any]:
    return {
        "run_dir": os.path.relpath(res.run_dir, out),
        "method": res.method,
        "seed": res.config.get("seed"),
        "epochs": res.config.get("epochs"),
        "final": res.final,
        "best": res.best,
        "history": res.history,
        "trainable_params": res.trainable_params,
        "total_params": res.total_params,
        "deploy_params": res.deploy_params,
        "wall_time_s": res.wall_time_s,
        "fold_max_abs_err": res.fold_max_abs_err,
        "folded_top1": (res.folded_metrics or {}).get("top1"),
    }


def _evaluate_baseline_weights(path: str, base: RunConfig, out: Path, fingerprint: str) -> dict[str, Any]:
    """Test metrics of the given starting weights (cached in ``baseline-eval.json`` by file fingerprint)."""
    cache = out / BASELINE_EVAL_FILE
    if cache.is_file():
        try:
            rec = json.loads(cache.read_text())
            if rec.get("sha256") == fingerprint:
                return rec
        except (OSError, json.JSONDecodeError):
            pass
    import torch
    from torch.utils.data import DataLoader

    from ..data import build_dataset
    from ..engine.loop import evaluate
    from ..engine.modeling import create_stock_model, load_start_weights

    test_ds, info = build_dataset(base.data, "test", data_dir=base.data_dir, image_size=base.image_size,
                                  in_chans=base.in_chans, augment=False, subset=base.subset_test, seed=base.data_seed)
    model = create_stock_model(base.model, num_classes=base.num_classes or info.num_classes, in_chans=info.in_chans)
    load_start_weights(model, path)
    device = torch.device("cuda" if base.device != "cpu" and torch.cuda.is_available() else "cpu")
    m = evaluate(model.to(device), DataLoader(test_ds, batch_size=base.batch_size), device=device)
    rec = {"weights": path, "sha256": fingerprint,
           "final": {k: m[k] for k in ("loss", "top1", "top5", "correct1")}}
    cache.write_text(json.dumps(rec, indent=2))
    return rec


def run_sweep(
    spec: SweepSpec | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    data_dir: str | None = None,
    parallel: int | str | None = None,
    yes: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    progress: str | None = None,
    estimate_only: bool = False,
    log: Callable[[str], None] | None = None,
    on_cell_done: Callable[[Cell, RunResult], None] | None = None,
    command: str | None = None,
) -> SweepResult:
    """Plan, estimate, run and report a sweep (see the module docstring).

    Args:
        spec: a :class:`SweepSpec`, a YAML path or a packaged sweep name.
        out: output directory (default ``sweeps/<name>``). Rerunning into it reuses finished cells, resumes
            interrupted ones and trains only what is missing (e.g. after adding seeds or settings).
        data_dir / workers / progress: non-recipe RunConfig keys laid over ``base`` (they do not change a run's
            identity); ``None`` keeps the config's value (progress: plain lines unless the config says otherwise).
        parallel: processes for the cells (overrides the spec's ``parallel``).
        yes: run even when the estimate exceeds ``time_budget_minutes``.
        overwrite: recompute what cannot be reused (a directory with another recipe/baseline, or cells whose
            configuration changed); matching finished cells are always kept.
        estimate_only: plan and estimate, write nothing.
        on_cell_done: called after each cell (hooks, tests).
        command: the command line recorded in the report (default: reconstructed).

    Raises:
        ConfigError: bad sweep (before anything is written); :class:`SweepTooLarge` for an estimate over budget.
        CheckpointError: an output directory that cannot be reused as asked.
        RunInterrupted: Ctrl-C; rerun the same command to resume.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    if not isinstance(spec, SweepSpec):
        spec = load_sweep(spec)
    out = Path(out) if out is not None else Path("sweeps") / spec.name
    check_out_path(out)
    if estimate_only:  # writes nothing: no need to own the directory
        return _run_sweep(spec, out, log, t0, data_dir=data_dir, parallel=parallel, yes=yes, overwrite=overwrite,
                          workers=workers, progress=progress, estimate_only=True, on_cell_done=on_cell_done,
                          command=command)
    lock = RunDirLock(out).acquire()  # one sweep per directory; each cell's run also locks its own
    try:
        return _run_sweep(spec, out, log, t0, data_dir=data_dir, parallel=parallel, yes=yes, overwrite=overwrite,
                          workers=workers, progress=progress, estimate_only=False, on_cell_done=on_cell_done,
                          command=command)
    finally:
        lock.release(remove_if_empty=True)


def _run_sweep(spec: SweepSpec, out: Path, log: Callable[[str], None], t0: float, *, data_dir: str | None,
               parallel: int | str | None, yes: bool, overwrite: bool, workers: int | None, progress: str | None,
               estimate_only: bool, on_cell_done: Callable[[Cell, RunResult], None] | None,
               command: str | None) -> SweepResult:
    for w in spec.warnings:
        log(f"[sweep] warning: {w}")
    if progress is None and "progress" not in spec.base:
        progress = "plain"  # per-run lines, not bars: a sweep's log is read afterwards
    base = spec.base_config(data_dir=data_dir, workers=workers, progress=progress)
    plan = _plan(spec, out, base, overwrite)
    todo = [c for c in plan.cells if plan.status[_cell_key(c)] != "done"]
    n_par = _resolve_parallel(parallel if parallel is not None else spec.parallel, len(todo))
    baseline_todo = plan.baseline_cfg is not None and plan.baseline_status != "done"
    est = estimate_sweep(spec, base, baseline_todo=baseline_todo, todo=todo, parallel=n_par,
                         cells_total=len(plan.cells))
    n_cached = len(plan.cells) - len(todo)
    for w in est["warnings"]:
        log(f"[sweep] warning: {w}")
    log(f"[sweep] {spec.name}: {len(spec.settings)} setting(s) + {len(spec.controls)} control(s) x "
        f"{len(spec.budgets)} budget(s) x {len(spec.seeds)} seed(s) = {len(plan.cells)} cells ({n_cached} finished); "
        f"estimate: {_estimate_text(est)}.")
    if estimate_only:
        return SweepResult(out_dir=out, spec=spec, estimate=est)
    if est["wall_s"] > est["time_budget_s"] and not yes:
        raise SweepTooLarge(
            f"this sweep would take {_estimate_text(est)}, over its time_budget_minutes="
            f"{spec.time_budget_minutes:g}. Pass --yes (yes=True) to run it anyway, raise time_budget_minutes, "
            "or shrink it (fewer seeds, budgets or settings, subset_train, parallel processes).", est)

    # ---- from here on the output directory is written
    if plan.clear_all and out.exists():
        log(f"[sweep] --overwrite: {out} held another recipe or baseline; removing it.")
        clear_dir(out)  # keeps the lock this sweep holds
    for key in plan.mismatch:
        cell = next(c for c in plan.cells if _cell_key(c) == key)
        log(f"[sweep] --overwrite: recomputing {key} (its directory held another configuration).")
        shutil.rmtree(cell.config.run_dir())
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(json.dumps({"identity": _identity(spec, base), "spec": spec.to_dict()}, indent=2))

    if plan.baseline_cfg is not None:
        log(f"[sweep] baseline: {spec.baseline['epochs']} epoch(s) of {base.model}"
            + (" (cached)" if not baseline_todo else ""))
        baseline_res = run_cell(plan.baseline_cfg)
        baseline = {"trained": True, **_cell_record(baseline_res, out)}
    else:
        fp = _identity(spec, base)["baseline"]["sha256"]
        rec = _evaluate_baseline_weights(spec.baseline_weights, base, out, fp)
        baseline = {"trained": False, "weights": spec.baseline_weights, "final": rec["final"], "history": [],
                    "epochs": None, "seed": None}
        log(f"[sweep] baseline: given weights {spec.baseline_weights} (top-1 {rec['final']['top1']:.2f})")

    log(f"[sweep] training {len(todo)} cell(s) ({n_cached} finished already), {n_par} process(es)")
    prog = _Progress(len(plan.cells), len(todo), log)
    done_before = {k for k, v in plan.status.items() if v == "done"}

    def on_done(cell: Cell, res: RunResult, i: int, n: int) -> None:
        prog.cell(f"{cell.arm.name} seed {cell.seed}", res, _cell_key(cell) in done_before)
        if on_cell_done is not None:
            on_cell_done(cell, res)

    # Finished cells first, in this process (instant); then the work, in parallel processes when asked.
    try:
        cell_results = run_cells([c for c in plan.cells if _cell_key(c) in done_before], on_done=on_done)
        cell_results.update(run_cells(todo, parallel=n_par, on_done=on_done))
    except KeyboardInterrupt as exc:
        finished = sum(1 for c in plan.cells if is_finished(c.config.run_dir()))
        msg = (f"sweep interrupted ({finished}/{len(plan.cells)} cells finished, kept; an interrupted cell resumes from "
               f"its checkpoint). Rerun the same command to continue: {command or _command(spec, out)}")
        raise RunInterrupted(msg, getattr(exc, "checkpoint", None)) from None

    cells = {_cell_key(c): _cell_record(cell_results[(c.arm.name, c.seed)], out) for c in plan.cells}
    baseline_top1 = float(baseline["final"]["top1"])
    tables = [budget_rows(spec, e, cells, baseline_top1) for e in spec.budgets]
    results: dict[str, Any] = {
        "spec": spec.to_dict(),
        "command": command or _command(spec, out),
        "environment": _environment(),
        "recipe": {"lr": base.recipe_lr(), "finetune_lr": base.replace(method="finetune", pretrained=True).recipe_lr(),
                   "batch_size": base.batch_size, "opt": base.opt, "sched": base.sched,
                   "warmup_epochs": base.warmup_epochs, "weight_decay": base.weight_decay},
        "baseline": baseline,
        "cells": cells,
        "cells_trained_now": len(todo),
        "budgets": tables,
        "estimate": est,
        "parallel": n_par,
        "warnings": list(spec.warnings) + list(est["warnings"]),
        "wall_time_s": time.perf_counter() - t0,
    }
    from .sweep_report import write_sweep_report

    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    md, html = write_sweep_report(results, out)
    log(f"[sweep] done in {results['wall_time_s'] / 60:.1f} min: {md} and {html}")
    return SweepResult(out_dir=out, spec=spec, estimate=est, results=results, report_md=md, report_html=html)


def _command(spec: SweepSpec, out: Path) -> str:
    if sys.argv and Path(sys.argv[0]).name in ("refconv", "__main__.py") and "sweep" in sys.argv:
        return " ".join(["refconv"] + sys.argv[sys.argv.index("sweep"):])
    return f"refconv sweep {spec.source or spec.name} --out {out}"


def _environment() -> dict[str, Any]:
    import platform

    import torch
    import torchvision

    from .. import __version__

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else False, "refconv": __version__}
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    return env
