"""``refconv sweep``: when does RefConv beat fair controls, and by how much? A study with arms given as data.

For every budget a sweep runs each RefConv setting and the controls (``continue``, ``finetune``) from the same
baseline checkpoint with the same recipe, once per seed; every cell is a normal engine run (cached by its
``done.json``, resumed from its ``last.pt``), so a sweep can be stopped, extended (more seeds, budgets or
settings) and rerun without redoing finished cells.

The sweep lives in rooms, each one job:
:mod:`~refconv.protocol.sweep_spec` (the YAML schema and its validation), :mod:`~refconv.protocol.sweep_plan`
(what the directory holds and what is left), :mod:`~refconv.protocol.sweep_estimate` (timed steps, the time
guard), :mod:`~refconv.protocol.tables` (the statistics, shared with the demo), this module (running it) and
:mod:`~refconv.protocol.sweep_report` (report.md / report.html from ``results.json`` alone). The runs go through
the study runner every study shares (:func:`refconv.protocol.runner.execute`: here, in parallel processes or as
cluster jobs). The public names of all of them are importable from here.

Outputs in ``--out``: ``sweep.json`` (what the directory holds), ``runs/baseline``, ``runs/e<E>/<arm>/seed<s>``,
``results.json`` (every number), ``report.md`` / ``report.html`` and PNG plots.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import RunInterrupted, RunResult
from ..engine.rundir import clear as clear_dir
from ..environment import environment
from ..runlayout import is_finished
from .cells import Arm, Cell, cell_record, study_dir
from .evaldata import evaluate_start
from .launch import LaunchOptions, Launcher, LocalLauncher
from .progress import StudyProgress
from .runner import execute
from .sweep_estimate import SweepTooLarge, estimate_sweep, estimate_text
from .sweep_plan import SWEEP_FILE, Plan, identity, plan_sweep, resolve_parallel
from .sweep_spec import (CONTROLS, REFCONV_KEYS, TOP_LEVEL_KEYS, Setting, SweepSpec, expand_grid, load_sweep,
                         packaged_sweeps, parse_sweep, resolve_sweep_path)
from .tables import budget_rows, compare_arms

__all__ = ["SweepSpec", "Setting", "SweepResult", "SweepTooLarge", "TOP_LEVEL_KEYS", "REFCONV_KEYS", "CONTROLS",
           "load_sweep", "parse_sweep", "packaged_sweeps", "resolve_sweep_path", "expand_grid", "compare_arms",
           "budget_rows", "estimate_sweep", "run_sweep"]

RESULTS_FILE = "results.json"
BASELINE_EVAL_FILE = "baseline-eval.json"


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced (``results`` and the reports are ``None`` for an estimate only)."""

    out_dir: Path
    spec: SweepSpec
    estimate: dict[str, Any]
    results: dict[str, Any] | None = None
    report_md: Path | None = None
    report_html: Path | None = None


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
    launcher: LaunchOptions | Launcher | None = None,
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
        launcher: where the cells run (:mod:`~refconv.protocol.launch`): ``None`` / local is this process or
            ``parallel`` processes; a submitit launcher submits every unfinished cell as a job (Slurm, or submitit's
            local executor), waits, and the report is built from the run directories.

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
    with study_dir(out, lock=not estimate_only):  # an estimate writes nothing: no need to own the directory
        return _run_sweep(spec, out, log, t0, data_dir=data_dir, parallel=parallel, yes=yes, overwrite=overwrite,
                          workers=workers, progress=progress, estimate_only=estimate_only, on_cell_done=on_cell_done,
                          command=command, launcher=launcher)


def _run_sweep(spec: SweepSpec, out: Path, log: Callable[[str], None], t0: float, *, data_dir: str | None,
               parallel: int | str | None, yes: bool, overwrite: bool, workers: int | None, progress: str | None,
               estimate_only: bool, on_cell_done: Callable[[Cell, RunResult], None] | None,
               command: str | None, launcher: LaunchOptions | Launcher | None = None) -> SweepResult:
    for w in spec.warnings:
        log(f"[sweep] warning: {w}")
    if progress is None and "progress" not in spec.base:
        progress = "plain"  # per-run lines, not bars: a sweep's log is read afterwards
    base = spec.base_config(data_dir=data_dir, workers=workers, progress=progress)
    plan = plan_sweep(spec, out, base, overwrite)
    n_par = resolve_parallel(parallel if parallel is not None else spec.parallel, len(plan.todo))
    est = estimate_sweep(spec, base, baseline_todo=plan.baseline_todo, todo=plan.todo, parallel=n_par,
                         cells_total=len(plan.cells))
    for w in est["warnings"]:
        log(f"[sweep] warning: {w}")
    log(f"[sweep] {spec.name}: {len(spec.settings)} setting(s) + {len(spec.controls)} control(s) x "
        f"{len(spec.budgets)} budget(s) x {len(spec.seeds)} seed(s) = {len(plan.cells)} cells "
        f"({len(plan.cells) - len(plan.todo)} finished); estimate: {estimate_text(est)}.")
    if estimate_only:
        return SweepResult(out_dir=out, spec=spec, estimate=est)
    remote = launcher is not None and not isinstance(launcher, LocalLauncher) and getattr(
        launcher, "launcher", "slurm") != "local"  # the estimate is this machine's: a cluster's time is its own
    if est["wall_s"] > est["time_budget_s"] and not yes and not remote:
        raise SweepTooLarge(
            f"this sweep would take {estimate_text(est)}, over its time_budget_minutes="
            f"{spec.time_budget_minutes:g}. Pass --yes (yes=True) to run it anyway, raise time_budget_minutes, "
            "or shrink it (fewer seeds, budgets or settings, subset_train, parallel processes).", est)
    _prepare_dir(spec, plan, out, base, log)  # from here on the output directory is written
    command = command or _command(spec, out)
    runs = _train(spec, plan, out, base, log, n_par, launcher, on_cell_done, command)
    if runs is None:  # submitted to a cluster without waiting
        return SweepResult(out_dir=out, spec=spec, estimate=est)
    results = _results(spec, plan, out, base, runs, est, command, 1 if remote else n_par, t0)
    from .sweep_report import write_sweep_report

    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    md, html = write_sweep_report(results, out)
    log(f"[sweep] done in {results['wall_time_s'] / 60:.1f} min: {md} and {html}")
    return SweepResult(out_dir=out, spec=spec, estimate=est, results=results, report_md=md, report_html=html)


def _prepare_dir(spec: SweepSpec, plan: Plan, out: Path, base: Any, log: Callable[[str], None]) -> None:
    """Clear what ``--overwrite`` recomputes and record what the directory holds (``sweep.json``)."""
    if plan.clear_all and out.exists():
        log(f"[sweep] --overwrite: {out} held another recipe or baseline; removing it.")
        clear_dir(out)  # keeps the lock this sweep holds
    for key in plan.mismatch:
        cell = next(c for c in plan.cells if c.key == key)
        log(f"[sweep] --overwrite: recomputing {key} (its directory held another configuration).")
        shutil.rmtree(cell.config.run_dir())
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(json.dumps({"identity": identity(spec, base), "spec": spec.to_dict()}, indent=2))


def baseline_cells(spec: SweepSpec, plan: Plan) -> list[Cell]:
    """The baseline runs trained here (none when the sweep starts from given weights): ``baseline``, or
    ``baseline/seed<s>`` with per-seed baselines."""
    per_seed = len(plan.baseline_cfgs) > 1
    return [Cell(Arm("baseline", "baseline", int(spec.baseline["epochs"])), s, cfg,
                 key=f"baseline/seed{s}" if per_seed else "baseline") for s, cfg in plan.baseline_cfgs.items()]


def sweep_runs(spec: SweepSpec, plan: Plan) -> list[Cell]:
    """Every run of the sweep, as the study runner and a launcher take them: the baselines, then the cells (each
    waits for the baseline its weights come from)."""
    return baseline_cells(spec, plan) + plan.cells


def _train(spec: SweepSpec, plan: Plan, out: Path, base: Any, log: Callable[[str], None], n_par: int,
           launcher: LaunchOptions | Launcher | None, on_cell_done: Callable[[Cell, RunResult], None] | None,
           command: str) -> dict[str, RunResult] | None:
    """Every run of the sweep (its baselines, then its cells) through the study runner; None when submitted."""
    if plan.baseline_cfgs:
        log(f"[sweep] baseline: {spec.baseline['epochs']} epoch(s) of {base.model}"
            + (f", one per seed ({len(plan.baseline_cfgs)})" if spec.per_seed_baselines else "")
            + (" (cached)" if not plan.baseline_todo else ""))
    log(f"[sweep] training {len(plan.todo)} cell(s) ({len(plan.cells) - len(plan.todo)} finished already), "
        f"{n_par} process(es)")
    prog = StudyProgress("sweep", len(plan.cells), log, parallel=n_par)
    done_before = {k for k, v in plan.status.items() if v == "done"}

    def on_done(cell: Cell, res: RunResult, i: int, n: int) -> None:
        if cell.key not in plan.status:
            return  # a baseline: the sweep's progress counts its cells, the baseline has its own line
        prog.cell(f"{cell.arm.name} seed {cell.seed}", res, cell.key in done_before)
        if on_cell_done is not None:
            on_cell_done(cell, res)

    try:
        return execute(sweep_runs(spec, plan), out, parallel=n_par, launcher=launcher,
                       on_done=on_done, log=log, resubmit=command)
    except KeyboardInterrupt as exc:
        finished = sum(1 for c in plan.cells if is_finished(c.config.run_dir()))
        msg = (f"sweep interrupted ({finished}/{len(plan.cells)} cells finished, kept; an interrupted cell resumes from "
               f"its checkpoint). Rerun the same command to continue: {command}")
        raise RunInterrupted(msg, getattr(exc, "checkpoint", None)) from None


def _baseline_record(spec: SweepSpec, plan: Plan, out: Path, base: Any,
                     runs: dict[str, RunResult]) -> dict[str, Any]:
    """The baseline as ``results.json`` holds it: the run(s) trained here, or the given weights evaluated."""
    if not plan.baseline_cfgs:
        rec = evaluate_start(spec.baseline_weights, base, out / BASELINE_EVAL_FILE)
        return {"trained": False, "weights": spec.baseline_weights, "final": rec["final"], "history": [],
                "epochs": None, "seed": None}
    records = {c.seed: cell_record(runs[c.key], out) for c in baseline_cells(spec, plan)}
    if not spec.per_seed_baselines:
        return {"trained": True, **records[min(records)]}
    tops = [float(r["final"]["top1"]) for r in records.values()]
    return {"trained": True, "per_seed": {f"seed{s}": r for s, r in records.items()},
            "final": {"top1": sum(tops) / len(tops)}, "epochs": spec.baseline["epochs"], "seed": None, "history": []}


def _results(spec: SweepSpec, plan: Plan, out: Path, base: Any, runs: dict[str, RunResult], est: dict[str, Any],
             command: str, n_par: int, t0: float) -> dict[str, Any]:
    """``results.json``: every number the report prints, read from the runs."""
    baseline = _baseline_record(spec, plan, out, base, runs)
    cells = {c.key: cell_record(runs[c.key], out) for c in plan.cells}
    return {
        "spec": spec.to_dict(),
        "command": command,
        "environment": environment(),
        "recipe": {"lr": base.recipe_lr(), "finetune_lr": base.replace(method="finetune", pretrained=True).recipe_lr(),
                   "batch_size": base.batch_size, "opt": base.opt, "sched": base.sched,
                   "warmup_epochs": base.warmup_epochs, "weight_decay": base.weight_decay},
        "baseline": baseline,
        "cells": cells,
        "cells_trained_now": len(plan.todo),
        "budgets": [budget_rows(spec, e, cells, float(baseline["final"]["top1"])) for e in spec.budgets],
        "estimate": est,
        "parallel": n_par,
        "warnings": list(spec.warnings) + list(est["warnings"]),
        "wall_time_s": time.perf_counter() - t0,
    }


def _command(spec: SweepSpec, out: Path) -> str:
    """The command that reruns this sweep, for a call without the command line (the CLI passes its own)."""
    return f"refconv sweep {spec.source or spec.name} --out {out}"

