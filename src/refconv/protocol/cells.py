"""Cells of a study: one engine run per (arm, seed), all from the same baseline checkpoint."""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Iterator
from contextlib import contextmanager
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import RunConfig, RunResult, rundir, run
from ..errors import CheckpointError
from ..runlayout import is_finished

__all__ = ["Arm", "Cell", "cell_config", "run_cell", "run_cells", "run_waves", "cell_record", "study_dir"]


@dataclass(frozen=True)
class Arm:
    """One row of a study: a method with its settings, trained for ``epochs`` from the baseline."""

    name: str
    method: str  # refconv | continue | finetune
    epochs: int
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_control(self) -> bool:
        return self.method in ("continue", "finetune", "baseline")  # baseline: the from-scratch control


@dataclass(frozen=True)
class Cell:
    """One engine run of a study: its arm and seed (the tables' row and column), its config (whose ``out`` is its
    run directory) and its ``key``, unique in the study (``e3/zero-init/seed0``, ``detection/refconv/seed1``): the
    name the log, ``results.json`` and a launcher's job use. ``after``: keys of cells that must finish first, beside
    those inferred from the starting weights (:func:`refconv.protocol.launch.infer_dependencies`)."""

    arm: Arm
    seed: int
    config: RunConfig
    key: str = ""
    after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", f"{self.arm.name}/seed{self.seed}")

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()


@contextmanager
def study_dir(out: Path, *, lock: bool = True) -> Iterator[None]:
    """Own a study's output directory while the study runs: one study per directory (each of its runs also locks
    its own), and a directory this created is removed again when nothing was written (a refused study leaves no
    trace). ``lock=False`` only checks the path, for a study that writes nothing (an estimate)."""
    rundir.check_out_path(out)
    held = rundir.RunDirLock(out).acquire() if lock else None
    try:
        yield
    finally:
        if held is not None:
            held.release(remove_if_empty=True)


def cell_config(base: RunConfig, baseline_dir: str | os.PathLike, arm: Arm, seed: int, root: str | os.PathLike) -> RunConfig:
    """The engine config of one cell: the base recipe, the arm's method/settings, the seed, its own directory."""
    return base.replace(
        method=arm.method,
        weights=str(baseline_dir) if arm.method != "baseline" else None,  # the scratch control starts from nothing
        pretrained=False,
        epochs=arm.epochs,
        seed=seed,
        out=str(Path(root) / arm.name / f"seed{seed}"),
        overwrite=False,
        **dict(arm.overrides),
    )


def run_cell(cfg: RunConfig, *, overwrite: bool = False, reporter=None) -> RunResult:
    """Run one cell: reuse it when finished, resume it when interrupted, start it otherwise (as
    :func:`refconv.engine.rundir.inspect` classifies its directory); ``overwrite`` recomputes it.

    A directory holding a different configuration is refused unless ``overwrite``.
    """
    run_dir = cfg.run_dir()
    if not overwrite:
        state = rundir.inspect(run_dir, cfg)
        if state.kind == "mismatch":
            raise CheckpointError(
                f"{run_dir} holds a run with a different configuration ({state.detail}). Use another --out, or pass "
                "--overwrite to recompute it."
            )
        if state.kind == "done":
            return run(cfg, reporter=reporter)
        if state.resumable:
            return run(cfg, resume=True, reporter=reporter)
    return run(cfg.replace(overwrite=True) if run_dir.exists() else cfg, reporter=reporter)


def _run_cell_in_subprocess(cfg_dict: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from ..engine.config import make_config

    return run_cell(make_config(cfg_dict), overwrite=overwrite).to_dict()


def run_cells(
    cells: Sequence[Cell],
    *,
    parallel: int = 1,
    overwrite: bool = False,
    on_done: Callable[[Cell, RunResult, int, int], None] | None = None,
    reporter=None,
) -> dict[str, RunResult]:
    """Run every cell (cached cells return at once); ``parallel > 1`` runs cells in separate processes. Returns
    ``{cell.key: result}``; a study runs its cells through :func:`refconv.protocol.runner.execute`, which calls this.

    ``on_done(cell, result, done_count, total)`` is called as each cell finishes (progress/ETA).
    """
    results: dict[str, RunResult] = {}
    for i, (cell, res) in enumerate(_finished(cells, parallel, overwrite, reporter), 1):
        results[cell.key] = res
        if on_done:
            on_done(cell, res, i, len(cells))
    return results


def run_waves(waves: Sequence[Sequence[Cell]], *, parallel: int = 1, overwrite: bool = False,
              on_done: Callable[[Cell, RunResult, int, int], None] | None = None,
              reporter: Any = None) -> dict[str, RunResult]:
    """Run the cells wave after wave (each wave's prerequisites lie in earlier ones:
    :func:`refconv.protocol.launch.in_waves`): in a wave, the finished cells first, in this process (instant), then
    the work, in ``parallel`` processes when asked. Returns ``{cell.key: result}``; ``on_done`` as
    :func:`run_cells`' (its count runs over all waves)."""
    results: dict[str, RunResult] = {}
    total = sum(len(w) for w in waves)

    def done(cell: Cell, res: RunResult, _i: int, _n: int) -> None:
        results[cell.key] = res
        if on_done is not None:
            on_done(cell, res, len(results), total)

    for wave in waves:
        done_keys = {c.key for c in wave if is_finished(c.config.run_dir())}
        finished = [c for c in wave if c.key in done_keys]
        todo = [c for c in wave if c.key not in done_keys]
        run_cells(finished, overwrite=overwrite, on_done=done, reporter=reporter)
        run_cells(todo, parallel=min(parallel, max(len(todo), 1)), overwrite=overwrite, on_done=done,
                  reporter=reporter)
    return results


def _finished(cells: Sequence[Cell], parallel: int, overwrite: bool, reporter: Any) -> Iterator[tuple[Cell, RunResult]]:
    """``(cell, result)`` as each cell finishes: in order in this process, or as they complete in ``parallel``
    spawned processes (one thread each, so P processes do not fight over the cores)."""
    if parallel <= 1:
        for cell in cells:
            yield cell, run_cell(cell.config, overwrite=overwrite, reporter=reporter)
        return
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_cell_in_subprocess, c.config.to_dict(), overwrite): c for c in cells}
        for fut in cf.as_completed(futures):
            yield futures[fut], RunResult.from_dict(fut.result())


def cell_record(res: RunResult, out: Path) -> dict[str, Any]:
    """A finished run as a study's ``results.json`` holds it: every number its report prints, and its directory
    relative to the study's ``out`` (so a recorded study can be moved and still checked against its runs)."""
    return {
        "run_dir": os.path.relpath(res.run_dir, out),
        "method": res.method,
        "seed": res.config.get("seed"),
        "epochs": res.config.get("epochs"),
        "lr": res.config.get("lr"),
        "final": res.final,
        "best": res.best,
        "history": res.history,
        "trainable_params": res.trainable_params,
        "total_params": res.total_params,
        "deploy_params": res.deploy_params,
        "wall_time_s": res.wall_time_s,
        "cached": res.cached,
        "fold_max_abs_err": res.fold_max_abs_err,
        "folded_top1": (res.folded_metrics or {}).get("top1"),
    }
