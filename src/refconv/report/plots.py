"""Plots for reports (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = ["plot_curves"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        for i, (label, runs) in enumerate(histories.items()):
            for j, run in enumerate(runs):
                pts = [(r.get("epoch", n + 1), r[key]) for n, r in enumerate(run) if key in r]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, color=colours[i % len(colours)], alpha=0.85,
                        label=label if j == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
