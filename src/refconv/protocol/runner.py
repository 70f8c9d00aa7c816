"""The one way a study runs its cells, and hands the trained models from stage to stage.

Every study (the demo, a sweep, the downstream study) plans its engine runs as :class:`~refconv.protocol.cells.Cell`
objects once, then calls :func:`execute`, which runs them where the study's launcher says:

- here, in this process or in ``parallel`` spawned processes, in waves (a cell waits for the cells whose run
  directory holds its starting weights), finished cells read back first;
- or as jobs of a cluster launcher (:mod:`refconv.protocol.launch`: Slurm, or submitit's local executor), after
  which the finished runs are read back from their directories.

Either way the study gets ``{cell key: RunResult}``. A run trained in this process carries its models
(:attr:`RunResult.models`); :class:`StudyModels` gives a study's later stages (fold check, analyses) each model
from memory, or loads it once from disk when the run was trained elsewhere, so no stage rebuilds a model another
stage already holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..engine import RunResult
from ..engine.result import TrainedModels
from .cells import Cell, run_waves
from .launch import LaunchOptions, Launcher, in_waves, infer_dependencies, run_with_launcher

__all__ = ["execute", "StudyModels"]

OnDone = Callable[[Cell, RunResult, int, int], None]


def execute(cells: Sequence[Cell], study_out: Path, *, parallel: int = 1,
            launcher: LaunchOptions | Launcher | None = None, overwrite: bool = False, on_done: OnDone | None = None,
            log: Callable[[str], None] = print, resubmit: str = "",
            keep_models: bool | Callable[[Cell], bool] = False,
            reporter: Any = None) -> dict[str, RunResult] | None:
    """Run ``cells`` (see the module docstring) and return ``{cell.key: RunResult}``; None when a cluster launcher
    submitted them without waiting (the study stops there; rerunning its command reads them back).

    Args:
        study_out: the study's directory (a launcher keeps its bookkeeping there).
        parallel: processes for the cells of a wave run here (1: this process).
        on_done: ``(cell, result, done_count, total)`` as each cell finishes (progress, hooks).
        resubmit: the command that resumes the study, for a launcher's messages.
        keep_models: keep each result's in-memory models (a study whose later stages read them), for every cell or
            for the cells this predicate accepts; the others' are dropped as each cell finishes, so a long sweep
            does not hold every model it trained.
        reporter: where the runs trained in this process write their progress (default: the engine's).

    Raises:
        LaunchError: cells failed as jobs (each named, with the command that resumes them).
    """
    if not run_with_launcher(launcher, cells, study_out, log, resubmit=resubmit):
        return None

    def done(cell: Cell, res: RunResult, i: int, n: int) -> None:
        if not (keep_models(cell) if callable(keep_models) else keep_models):
            res.models = None
        if on_done is not None:
            on_done(cell, res, i, n)

    results = run_waves(in_waves(cells, infer_dependencies(cells)), parallel=parallel, overwrite=overwrite,
                        on_done=done, reporter=reporter)
    return {c.key: results[c.key] for c in cells}


class StudyModels:
    """The models a study's stages read, each obtained once: from the run that trained it in this process, or
    loaded from its directory (a cached run, a run trained in another process or as a job), or, for a starting
    point, from the registry name or run directory the arms started from. Every model is on the CPU in eval
    mode."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], nn.Module] = {}

    def _load(self, source: str | os.PathLike, form: str, **kwargs: str) -> nn.Module:
        key = (str(source), form)
        if key not in self._loaded:
            from ..engine.artifacts import load_model

            self._loaded[key] = load_model(source, **kwargs).model.eval()
        return self._loaded[key]

    def trained(self, result: RunResult) -> nn.Module:
        """The model as trained (RefConv layers unfolded): what ``checkpoints/last.pt`` holds."""
        if result.models is not None:
            return result.models.trained
        return self._load(result.run_dir, "trained", which="last")

    def deployed(self, result: RunResult) -> nn.Module:
        """The plain model the run ships (folded for RefConv): what its deployable weights file holds."""
        if result.models is not None:
            return result.models.deployed
        return self._load(result.folded_path or result.weights_path or result.run_dir, "deployed")

    def of(self, result: RunResult) -> TrainedModels:
        """Both forms of the run's model."""
        return result.models or TrainedModels(trained=self.trained(result), deployed=self.deployed(result))

    def start(self, weights: str | os.PathLike, trained_here: RunResult | None = None) -> nn.Module:
        """The model the arms started from: the baseline trained in this study (``trained_here``), else the
        registry entry or run directory ``weights`` names."""
        return self.deployed(trained_here) if trained_here is not None else self._load(weights, "start")
