"""Progress lines of a study (demo or sweep): its stages, and one line per finished cell with an ETA.

A study's log is read while it runs (is it stuck? how long is left?) and afterwards (which cells were reused),
so each cell says whether it was trained or reused, and the ETA is estimated from trained cells only: a cached
cell returns at once and would make the estimate meaninglessly short.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine import RunResult

__all__ = ["StudyProgress", "duration"]


def duration(seconds: float) -> str:
    """``42 s`` below 90 seconds, ``3.5 min`` above."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class StudyProgress:
    """Stage and cell lines, prefixed ``[tag]``, written with ``log``.

    Args:
        tag: the study's name in the lines (``demo``, ``sweep``).
        total: the cells the study will report (cached ones included).
        log: where a line goes (stderr in the CLI).
        parallel: processes training cells at once: the ETA divides the remaining training time by it.
    """

    def __init__(self, tag: str, total: int, log: Callable[[str], None], *, parallel: int = 1) -> None:
        self.tag, self.total, self.log, self.parallel = tag, total, log, max(1, parallel)
        self.done = self.trained = 0
        self.trained_s = 0.0

    def stage(self, i: int, n: int, text: str) -> None:
        self.log(f"[{self.tag}] stage {i}/{n}: {text}")

    def cell(self, label: str, res: RunResult, cached: bool | None = None) -> None:
        """One finished cell; ``cached`` defaults to what the run says (``res.cached``)."""
        cached = res.cached if cached is None else cached
        self.done += 1
        left = self.total - self.done
        if cached:
            state, eta = "cached", ""
        else:
            self.trained += 1
            self.trained_s += res.wall_time_s
            state = f"{res.wall_time_s:.0f}s"
            eta = f", ~{duration(self.trained_s / self.trained * left / self.parallel)} left" if left else ""
        self.log(f"[{self.tag}]   {self.done}/{self.total} {label}: top-1 {res.final.get('top1', float('nan')):.2f} "
                 f"({state}){eta}")
