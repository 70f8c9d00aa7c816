"""The launchers a study picks from (:func:`make_launcher`), and :func:`run_with_launcher`, what a study calls
before it runs its cells itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .options import LaunchOptions
from .state import CellLike, LaunchError, in_waves, infer_dependencies
from .submitit_launcher import SubmititLauncher

__all__ = ["Launcher", "LocalLauncher", "make_launcher", "run_with_launcher"]


class Launcher(Protocol):
    """Runs a study's cells somewhere; returns ``{key: "done" | "failed: reason" | "submitted"}``."""

    name: str

    def launch(self, cells: Sequence[CellLike], study_out: Path,
               log: Callable[[str], None]) -> dict[str, str]: ...


class LocalLauncher:
    """Today's runner: prerequisites first, then the rest in this process or ``parallel`` spawned processes."""

    name = "local"

    def __init__(self, options: LaunchOptions | None = None) -> None:
        self.options = options or LaunchOptions()

    def launch(self, cells: Sequence[CellLike], study_out: Path,
               log: Callable[[str], None]) -> dict[str, str]:
        from ..cells import run_waves

        run_waves(in_waves(cells, infer_dependencies(cells)), parallel=self.options.parallel)  # type: ignore[arg-type]
        return {c.key: "done" for c in cells}


def make_launcher(options: LaunchOptions | None, **kwargs: Any) -> Launcher:
    options = options or LaunchOptions()
    return LocalLauncher(options) if options.launcher == "local" else SubmititLauncher(options, **kwargs)


def run_with_launcher(launcher: Launcher | LaunchOptions | None, cells: Sequence[CellLike], study_out: Path,
                      log: Callable[[str], None], *, resubmit: str) -> bool:
    """What a study calls before it runs its cells itself: with a submitit launcher, run them as jobs first (the
    study then reads each finished cell back from its directory). Returns False when the study must stop here:
    submitted without waiting.

    Raises:
        LaunchError: cells failed (each named with its reason; ``resubmit`` is the command that resumes them).
    """
    if launcher is None:
        return True
    if isinstance(launcher, LaunchOptions):
        launcher = make_launcher(launcher)
    if isinstance(launcher, LocalLauncher):
        return True  # the study's own runner is the local launcher
    launcher.command = resubmit  # type: ignore[attr-defined]
    outcome = launcher.launch(cells, study_out, log)
    if any(v == "submitted" for v in outcome.values()):
        log(f"[launch] submitted; follow it with `refconv sweep status {study_out}`, build the report from what has "
            f"finished with `refconv sweep report {study_out}`.")
        return False
    failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
    if failed:
        shown = "; ".join(f"{k} ({v[len('failed: '):]})" for k, v in list(failed.items())[:3])
        raise LaunchError(f"{len(failed)} of {len(cells)} cell(s) failed: {shown}. Fix the cause and resubmit with "
                          f"`{resubmit}` (finished cells are kept, interrupted ones resume).")
    return True
