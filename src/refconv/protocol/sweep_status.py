"""``refconv sweep status OUT`` / ``refconv sweep report OUT``: a sweep read back from its directory alone.

Both need only ``OUT`` (on the shared file system of a cluster): ``sweep.json`` holds the spec, each cell's run
directory says whether it finished, ``launch/`` what its job reported (:mod:`~refconv.protocol.launch`). The
report is built from the cells that finished; when some are missing, ``results.json`` names them and only the
budgets whose cells all finished get their table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine import RunResult
from ..errors import CheckpointError
from ..runlayout import done_record
from .cells import cell_record
from .launch import LAUNCH_DIR, SUBMISSION_FILE, LaunchCell, cell_done, cell_states, read_state, status_text
from .sweep_plan import SWEEP_FILE
from .sweep_spec import TOP_LEVEL_KEYS, SweepSpec, parse_sweep

__all__ = ["recorded_spec", "sweep_cells", "sweep_status", "sweep_report"]


def recorded_spec(out: str | os.PathLike) -> SweepSpec:
    """The spec ``sweep.json`` in ``out`` recorded (as it was parsed when the sweep was submitted)."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        raise CheckpointError(f"{out} is not a sweep directory (no {SWEEP_FILE}): give the --out of a submitted sweep.")
    d = json.loads(path.read_text())["spec"]
    data = {k: v for k, v in d.items() if k in TOP_LEVEL_KEYS and k not in ("settings", "grid")}
    data["settings"] = [{"name": s["name"], **s["overrides"]} for s in d["settings"]]
    return parse_sweep(data, source=d.get("source") or "")


def sweep_cells(out: str | os.PathLike, spec: SweepSpec | None = None) -> list[LaunchCell]:
    """The sweep's runs (baseline first) with the configs their directories must hold."""
    from .sweep import sweep_runs
    from .sweep_plan import plan_sweep

    spec = spec or recorded_spec(out)
    plan = plan_sweep(spec, Path(out), spec.base_config(), overwrite=True)  # classify only: nothing is written
    return sweep_runs(spec, plan)


def _resubmit(out: Path, spec: SweepSpec) -> str:
    rec = read_state(out / LAUNCH_DIR / SUBMISSION_FILE)
    return rec.get("command") or f"refconv sweep {spec.source or spec.name} --out {out} --launcher slurm"


def sweep_status(out: str | os.PathLike) -> tuple[list[dict[str, Any]], str]:
    """Each cell's row (see :func:`refconv.protocol.launch.cell_states`) and the table as text."""
    out = Path(out)
    spec = recorded_spec(out)
    rows = cell_states(sweep_cells(out, spec), out)
    return rows, status_text(rows, _resubmit(out, spec))


def sweep_report(out: str | os.PathLike, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build ``results.json`` and the report from the finished cells of ``out``; returns the results.

    When every cell finished this is exactly the report the sweep itself writes (nothing is trained: every
    cell is read back); otherwise ``results["missing"]`` lists the unfinished cells and only complete budgets
    get tables.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    spec = recorded_spec(out)
    cells = sweep_cells(out, spec)
    missing = [c.key for c in cells if not cell_done(c.config)]
    command = _resubmit(out, spec)
    if not missing:
        from .sweep import run_sweep

        return run_sweep(spec, out, yes=True, log=log, command=command).results or {}
    return _partial_report(spec, out, cells, missing, command, log)


def _partial_report(spec: SweepSpec, out: Path, cells: list[LaunchCell], missing: list[str], command: str,
                    log: Callable[[str], None]) -> dict[str, Any]:
    from ..environment import environment
    from .sweep import RESULTS_FILE
    from .tables import budget_rows

    t0 = time.perf_counter()
    records = {c.key: cell_record(RunResult.from_dict(done_record(c.run_dir), cached=True), out)
               for c in cells if c.key not in missing}
    baseline = records.pop("baseline", None)
    baseline_top1 = float(baseline["final"]["top1"]) if baseline else None
    complete = [e for e in spec.budgets if not any(k.startswith(f"e{e}/") for k in missing)]
    results: dict[str, Any] = {
        "spec": spec.to_dict(), "command": command, "environment": environment(),
        "baseline": {"trained": True, **baseline} if baseline else None,
        "cells": records, "missing": missing,
        "budgets": [budget_rows(spec, e, records, baseline_top1) for e in complete] if baseline_top1 is not None
        else [],
        "complete": False, "wall_time_s": time.perf_counter() - t0,
    }
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    lines = [f"# RefConv sweep: {spec.name} (partial)", "",
             f"{len(missing)} of {len(cells)} run(s) have not finished; this page lists them. Budgets with every cell "
             f"finished: {', '.join(map(str, complete)) or 'none'} (their tables are in results.json).", "",
             "Missing:", ""] + [f"- `{k}`" for k in missing] + ["", f"Resubmit: `{command}`", ""]
    (out / "report.md").write_text("\n".join(lines))
    log(f"[sweep] partial report: {len(missing)} run(s) missing ({', '.join(missing[:4])}"
        f"{' ...' if len(missing) > 4 else ''}); wrote {out / RESULTS_FILE} and {out / 'report.md'}")
    return results
