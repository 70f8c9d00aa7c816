"""Planning a sweep: which cells a directory already holds, which to train, and whether it may be reused.

A sweep directory is reused cell by cell (finished cells are kept, interrupted ones resume), but only while
everything the cells silently depend on is unchanged: the shared recipe and the baseline (its weights'
fingerprint when given). ``sweep.json`` records that identity; a change refuses the directory unless
``--overwrite``, and a cell whose own configuration changed is refused or recomputed the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import RunConfig
from ..engine.config import NON_RECIPE_KEYS
from ..engine.rundir import inspect as inspect_run_dir
from ..engine.rundir import is_empty
from ..errors import CheckpointError
from .cells import Cell, cell_config
from .evaldata import weights_fingerprint
from .sweep_spec import SweepSpec

__all__ = ["SWEEP_FILE", "Plan", "plan_sweep", "identity", "resolve_parallel"]

SWEEP_FILE = "sweep.json"


@dataclass
class Plan:
    """What a sweep will do in its directory (see :func:`plan_sweep`)."""

    baseline_cfgs: dict[int, RunConfig]  # seed -> its baseline run ({}: the arms start from spec.baseline_weights;
    #                                      one entry under seed 0 when every seed shares one baseline)
    cells: list[Cell]
    status: dict[str, str]  # cell key -> done | partial | new | mismatch
    mismatch: dict[str, str]  # cell key -> diff text
    baseline_status: str
    clear_all: bool

    @property
    def baseline_cfg(self) -> RunConfig | None:
        """The shared baseline run (the first per-seed one with per-seed baselines); None when given."""
        return next(iter(self.baseline_cfgs.values()), None)

    @property
    def baseline_todo(self) -> bool:
        """Whether a baseline is trained here and is not finished yet."""
        return bool(self.baseline_cfgs) and self.baseline_status != "done"

    @property
    def todo(self) -> list[Cell]:
        """The cells left to train (every cell not finished), in plan order."""
        return [c for c in self.cells if self.status[c.key] != "done"]


def _run_status(cfg: RunConfig) -> tuple[str, str]:
    """``(done|partial|new|mismatch, diff text)`` of a run directory against the config meant for it
    (:func:`refconv.engine.rundir.inspect`; files that are not a run's count as a mismatch: only
    ``--overwrite`` may remove them)."""
    state = inspect_run_dir(cfg.run_dir(), cfg)
    return ("mismatch" if state.kind == "foreign" else state.kind), state.detail


def identity(spec: SweepSpec, base: RunConfig) -> dict[str, Any]:
    """What every cell silently depends on (the shared recipe and the baseline): a change invalidates them all."""
    recipe = {k: v for k, v in base.to_dict().items() if k not in NON_RECIPE_KEYS}
    baseline = dict(spec.baseline)
    if spec.baseline_weights:
        baseline["sha256"] = weights_fingerprint(spec.baseline_weights)
    return json.loads(json.dumps({"base": recipe, "baseline": baseline}, default=str))


def plan_sweep(spec: SweepSpec, out: Path, base: RunConfig, overwrite: bool) -> Plan:
    """Classify the baseline and every cell of ``spec`` in ``out``; writes nothing.

    Raises:
        CheckpointError: ``out`` holds another sweep (recipe or baseline) or files that are not a sweep's, or
            cells with another configuration, and ``overwrite`` is not given (not even with it for files that
            are not a sweep's).
    """
    marker = out / SWEEP_FILE
    clear_all = False
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        ident = identity(spec, base)
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
    baseline_cfgs: dict[int, RunConfig] = {}
    baseline_dirs: dict[int, str] = {}
    if spec.baseline_weights:
        baseline_dirs = {s: spec.baseline_weights for s in spec.seeds}
        baseline_status = "given"
    elif spec.per_seed_baselines:  # one baseline per seed, its seed the cells' seed
        for s in spec.seeds:
            baseline_dirs[s] = str(runs / "baseline" / f"seed{s}")
            baseline_cfgs[s] = base.replace(**{"method": "baseline", "seed": s, "out": baseline_dirs[s],
                                               **spec.baseline_recipe()})
        states = {_run_status(c)[0] for c in baseline_cfgs.values()}
        baseline_status = "new" if clear_all else ("done" if states == {"done"} else
                                                   "mismatch" if "mismatch" in states else "partial")
    else:
        baseline_cfgs[0] = base.replace(**{"method": "baseline", "seed": 0, "out": str(runs / "baseline"),
                                           **spec.baseline_recipe()})
        baseline_dirs = {s: str(runs / "baseline") for s in spec.seeds}
        baseline_status = "new" if clear_all else _run_status(baseline_cfgs[0])[0]
    cells = [Cell(a, s, cell_config(base, baseline_dirs[s], a, s, runs)) for a in spec.arms() for s in spec.seeds]
    status: dict[str, str] = {}
    mismatch: dict[str, str] = {}
    for c in cells:
        st, diff = ("new", "") if clear_all else _run_status(c.config)
        status[c.key] = st
        if st == "mismatch":
            mismatch[c.key] = diff
    if mismatch and not overwrite:
        shown = "; ".join(f"{k} ({d})" for k, d in list(mismatch.items())[:4])
        raise CheckpointError(
            f"{len(mismatch)} run director{'y' if len(mismatch) == 1 else 'ies'} of {out} hold a different configuration "
            f"than this sweep gives them: {shown}. Rename the setting, use another --out, or pass --overwrite to "
            "recompute those cells (finished cells that match are kept)."
        )
    if baseline_cfgs and baseline_status == "mismatch":
        if not overwrite:
            raise CheckpointError(f"{runs / 'baseline'} holds a different baseline run. Use another --out or "
                                  "--overwrite.")
        clear_all = True
        status = {k: "new" for k in status}
        mismatch = {}
        baseline_status = "new"
    return Plan(baseline_cfgs, cells, status, mismatch, baseline_status, clear_all)


def resolve_parallel(parallel: int | str, todo: int) -> int:
    """Processes for ``todo`` cells: ``auto`` is half the cores (each cell's step uses more than one), at most one
    per cell."""
    if parallel == "auto":
        return max(1, min(todo, (os.cpu_count() or 1) // 2))
    return max(1, int(parallel))

