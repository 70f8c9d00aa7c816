"""PNG plots of the analysis results, drawn from the plain dicts the metric functions return.

Plotting is kept apart from the metrics so the numbers can be computed (and tested) without matplotlib and
re-plotted later from ``analysis.json``. Figures are built with ``matplotlib.figure.Figure`` and the Agg
canvas directly: no pyplot global state, no display needed, safe in worker processes.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "plot_redundancy",
    "plot_skeleton",
    "plot_spectrum",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "plot_robustness",
    "plot_cost",
]

_COLORS = {"baseline": "tab:blue", "refconv": "tab:orange"}
_COST_COLORS = {"baseline": "tab:blue", "refconv_train": "tab:red", "refconv_folded": "tab:orange"}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def plot_redundancy(comparison: dict, path: str | Path) -> Path:
    """Bar chart of per-layer channel diversity, baseline vs RefConv (from ``compare_redundancy``)."""
    layers = list(comparison["layers"])
    n = len(layers)
    fig = Figure(figsize=(max(6.0, 0.35 * n + 2), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(n))
    for k, label in enumerate(("baseline", "refconv")):
        vals = [comparison["layers"][name][label] for name in layers]
        ax.bar([x + (k - 0.5) * 0.4 for x in xs], vals, width=0.4, label=label, color=_COLORS[label])
    ax.set_xticks(xs)
    ax.set_xticklabels([_short(name) for name in layers], rotation=90, fontsize=7)
    ax.set_ylabel("mean symmetric KL between channels (nats)")
    ov = comparison["overall"]
    ax.set_title(f"Channel diversity: baseline {ov['baseline']:.4g}, RefConv {ov['refconv']:.4g} (overall)")
    ax.legend()
    return _save(fig, path)


def _as_2d(m: list) -> list:
    """Nested-list skeleton map as 2-D rows: 1-D maps become one row, 3-D maps are summed over depth."""
    if not isinstance(m[0], list):
        return [m]
    if isinstance(m[0][0], list):
        rows = len(m[0])
        cols = len(m[0][0])
        return [[sum(m[d][r][c] for d in range(len(m))) for c in range(cols)] for r in range(rows)]
    return m


def plot_skeleton(
    comparison: dict, path: str | Path, *, level: str = "stages", max_maps: int = 48, per_row: int = 12
) -> Path:
    """Heat maps of mean normalised kernel magnitude, baseline above RefConv (from ``compare_skeleton``).

    Each column (one layer or stage group) has its own colour scale, shared by the two models, so a 5x5
    layer (uniform level 1/25) stays readable beside a 3x3 one (1/9) while the models stay comparable.

    Args:
        comparison: Output of ``compare_skeleton`` (or ``{"baseline": report}`` for one model).
        path: PNG path.
        level: ``"stages"`` (one map per stage and kernel size) or ``"layers"``.
        max_maps: At most this many maps per model (the first ones) to keep the figure readable.
        per_row: Maps per row before wrapping.
    """
    models = [m for m in ("baseline", "refconv") if m in comparison]
    keys = list(comparison[models[0]][level])[:max_maps]
    n = len(keys)
    ncols = max(1, min(n, per_row))
    blocks = math.ceil(n / ncols)
    nrows = blocks * len(models)
    fig = Figure(figsize=(max(3.0, 1.7 * ncols), 2.0 * nrows + 0.7))
    for c, k in enumerate(keys):
        grids = {m: _as_2d(comparison[m][level][k]["map"]) for m in models}
        values = [v for g in grids.values() for row in g for v in row]
        lo, hi = min(values), max(values)
        block, col = divmod(c, ncols)
        for r, m in enumerate(models):
            ax = fig.add_subplot(nrows, ncols, (block * len(models) + r) * ncols + col + 1)
            grid = grids[m]
            ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
            cells = len(grid) * len(grid[0])
            if cells <= 9 or (cells <= 25 and ncols <= 6):
                for i, row in enumerate(grid):
                    for j, v in enumerate(row):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{_short(k, 22)}\n{m} cross {comparison[m][level][k]['share']:.2f}", fontsize=7)
    fig.suptitle(
        "Kernel skeleton: mean share of |w| per position (per-kernel normalised); "
        "colour scale per column, shared by both models",
        fontsize=9,
    )
    return _save(fig, path)


def plot_spectrum(layers: list[dict], path: str | Path, *, max_maps: int = 48, per_row: int = 8) -> Path:
    """Heat maps of ``diag(M)`` per refocused layer (from ``refocus_spectrum``), each over its own maximum.

    ``diag(M)[p]`` is the refocusing step at kernel position ``p``: the map shows the padding geometry (small at
    the border, large in the centre) and the title gives ``lambda_max`` / ``lambda_min`` of ``M``. 2-D kernels as
    they are; 1-D as one row; 3-D summed over depth.
    """
    layers = layers[:max_maps]
    n = len(layers)
    ncols = max(1, min(n, per_row))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(max(3.0, 1.7 * ncols), 2.0 * nrows + 0.7))
    for c, rec in enumerate(layers):
        grid = _as_2d(rec["diag_relative"])
        ax = fig.add_subplot(nrows, ncols, c + 1)
        top = max(max(row) for row in grid) or 1.0
        ax.imshow(grid, cmap="magma", vmin=0.0, vmax=top)
        if len(grid) * len(grid[0]) <= 25:
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="k" if v > 0.6 * top else "w")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{_short(rec['layer'], 22)}\nlmax {rec['lambda_max']['max']:.3g} lmin "
                     f"{rec['lambda_min']['min']:.3g}", fontsize=7)
    fig.suptitle("Refocusing preconditioner: diag(M) per kernel position over its maximum (mean over RT groups)",
                 fontsize=9)
    return _save(fig, path)


def plot_landscape_1d(landscape: dict, path: str | Path) -> Path:
    """Interpolation baseline -> RefConv (left) and random filter-normalised direction (right)."""
    fig = Figure(figsize=(11, 4))
    ax = fig.add_subplot(1, 2, 1)
    interp = landscape["interpolation"]
    ax.plot(interp["alpha"], interp["loss"], color="k")
    ax.axvline(0.0, color=_COLORS["baseline"], ls="--", label="baseline (0)")
    ax.axvline(1.0, color=_COLORS["refconv"], ls="--", label="RefConv (1)")
    ax.set_xlabel("interpolation coefficient")
    ax.set_ylabel("loss")
    ax.set_title("Linear interpolation of weights")
    ax.legend()
    ax = fig.add_subplot(1, 2, 2)
    for label, curve in landscape["random_1d"].items():
        ax.plot(curve["alpha"], curve["loss"], label=label, color=_COLORS.get(label))
    ax.set_xlabel("step along a filter-normalised random direction")
    ax.set_ylabel("loss (log scale)")
    ax.set_yscale("log")  # the far points explode to 1e5-1e6: a linear axis hides the neighbourhood of 0
    ax.set_title("1-D loss landscape (Li et al. 2018)")
    ax.legend()
    return _save(fig, path)


def plot_landscape_2d(landscape: dict, path: str | Path, *, levels: int = 20) -> Path:
    """Contour plots of the 2-D surfaces, one panel per model, sharing contour levels."""
    surfaces = landscape["surface_2d"]
    names = list(surfaces)
    finite = [v for s in surfaces.values() for row in s["loss"] for v in row if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    level_values = [lo + (hi - lo) * i / levels for i in range(levels + 1)]
    fig = Figure(figsize=(5.2 * len(names), 4.4))
    for k, name in enumerate(names):
        s = surfaces[name]
        ax = fig.add_subplot(1, len(names), k + 1)
        z = [[v if math.isfinite(v) else hi for v in row] for row in s["loss"]]
        cs = ax.contour(s["x"], s["y"], z, levels=level_values, cmap="viridis")
        ax.clabel(cs, inline=True, fontsize=6, fmt="%.2g")
        ax.plot([0], [0], "r+", ms=10)
        ax.set_title(f"{name}: 2-D loss contours")
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.set_aspect("equal")
    return _save(fig, path)


def plot_robustness(comparison: dict, path: str | Path) -> Path:
    """Accuracy vs eps (pixel units x 255) for each attack, baseline vs RefConv (``compare_robustness``)."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    styles = {"fgsm": "--", "pgd": "-"}
    for label, res in comparison.items():
        eps = [0.0] + [e * 255 for e in res["eps"]]
        for attack in ("fgsm", "pgd"):
            if attack in res:
                ax.plot(
                    eps, [res["clean"]] + res[attack], styles[attack], marker="o",
                    color=_COLORS.get(label), label=f"{label} {attack.upper()}",
                )
    ax.set_xlabel("eps (x 1/255, L-inf, pixel space)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Adversarial robustness")
    ax.legend()
    return _save(fig, path)


def plot_cost(report: dict, path: str | Path) -> Path:
    """Bars of parameters, and per regime FLOPs, peak memory and latency, per model (``compare_cost``)."""
    models = report["models"]
    names = list(models)
    regimes = report.get("regimes", [])
    colors = [_COST_COLORS.get(n, "tab:gray") for n in names]
    rows = max(1, len(regimes))
    fig = Figure(figsize=(14, 3.4 * rows))
    xs = range(len(names))

    def bars(ax: object, vals: list, title: str) -> None:
        ax.bar(xs, [0 if v is None else v for v in vals], color=colors)  # type: ignore[attr-defined]
        ax.set_xticks(list(xs))  # type: ignore[attr-defined]
        ax.set_xticklabels(names, rotation=20, fontsize=8)  # type: ignore[attr-defined]
        ax.set_title(title, fontsize=9)  # type: ignore[attr-defined]

    ax = fig.add_subplot(rows, 4, 1)
    bars(ax, [models[n]["params"]["total"] / 1e6 for n in names], "parameters, total (M)")
    if rows > 1:
        ax = fig.add_subplot(rows, 4, 5)
        bars(ax, [models[n]["params"]["trainable"] / 1e6 for n in names], "parameters, trainable (M)")
    for r, regime in enumerate(regimes):
        entries = [models[n][regime] for n in names]
        bars(fig.add_subplot(rows, 4, 4 * r + 2), [e["flops"] / 1e9 for e in entries], f"{regime}: GFLOPs")
        mem = [e["peak_memory"]["bytes"] / 2**20 if e["peak_memory"] and e["peak_memory"]["bytes"] is not None
               else None for e in entries]
        bars(fig.add_subplot(rows, 4, 4 * r + 3), mem, f"{regime}: peak memory (MiB)")
        lat = [e["latency"]["median_ms"] if e["latency"] else None for e in entries]
        bars(fig.add_subplot(rows, 4, 4 * r + 4), lat, f"{regime}: latency, median (ms)")
    fig.suptitle(f"Cost per call, input {report['input_shape']}")
    fig.subplots_adjust(hspace=0.55, wspace=0.45)
    return _save(fig, path)
