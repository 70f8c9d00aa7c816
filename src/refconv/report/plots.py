"""Plots for reports (matplotlib, headless).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot: no global figure
state to leak across a long study, no display needed, safe in worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_curves", "new_figure", "save_figure", "colours"]


def new_figure(ncols: int = 1, *, figsize: tuple[float, float], **subplots: Any) -> tuple[Any, Any]:
    """A figure and its row of ``ncols`` axes (``axes[0][i]``); ``subplots`` go to ``Figure.subplots``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols, squeeze=False, **subplots)


def save_figure(fig: Any, path: str | os.PathLike) -> str:
    """Lay ``fig`` out and write it as a 110-dpi PNG; returns the path as a string."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def colours() -> list[str]:
    """The default colour cycle, so one label keeps one colour across panels."""
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def plot_curves(
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
    path: str | os.PathLike,
    *,
    keys: Sequence[str] = ("train_loss", "test_top1"),
    title: str = "",
) -> str:
    """Plot per-epoch curves, one panel per key, one line per run (runs of the same label share a colour).

    Args:
        histories: label -> list of runs (one per seed) -> list of per-epoch metric dicts (with ``epoch``).
        path: PNG to write.
        keys: metrics to plot; keys missing from a run are skipped.
    """
    fig, axes = new_figure(len(keys), figsize=(5 * len(keys), 3.6))
    cycle = colours()
    for ax, key in zip(axes[0], keys):
        for i, (label, runs) in enumerate(histories.items()):
            for j, run in enumerate(runs):
                pts = [(r.get("epoch", n + 1), r[key]) for n, r in enumerate(run) if key in r]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, color=cycle[i % len(cycle)], alpha=0.85,
                        label=label if j == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
