"""The paper's analyses over a recorded sweep's seeds: is a RefConv model different from more training of it?

The pretrained study (docs/pretrained-study.md) answers the accuracy question from the sweeps' ``results.json``.
The paper also claims RefConv leaves *different* models behind: less redundant channels, a stronger kernel
skeleton, a flatter loss landscape, more robustness. This module measures those on a sweep's cells, for every
seed, the way the demo does (:mod:`refconv.protocol.analyses`): each seed's RefConv cell is compared with the
**same seed's same-budget control** (``continue`` by default), never with the starting model, so a difference
is RefConv's and not more training's. Per metric: each side's mean ± std over the seeds and the paired
difference RefConv − control with its t interval.

It reads the cells' run directories, so run it after the sweep and before deleting its ``runs/``::

    refconv study-analyses docs/results/pretrained-study/converged --budget 10

writes ``<sweep>/analyses/analyses.json`` (+ ``analyses.md`` and seed 0's plots per setting), which
:mod:`refconv.protocol.study` adds to the study's summary page.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..report import Section, Table, Text
from .demo_profile import PROFILES

__all__ = ["STUDY_ANALYSIS", "AnalysisProfile", "analyze_sweep", "analyses_section", "analyses_markdown",
           "load_analyses", "study_analyses_command"]

ANALYSES_DIR = "analyses"
ANALYSES_FILE = "analyses.json"

# The quick demo's settings (configs/demo/quick.yaml, read from there): two held-out batches for the landscape
# (three shared filter-normalised directions, sharpness at small radii), FGSM/PGD at 1 and 3 % of the pixel range.
STUDY_ANALYSIS: dict[str, Any] = dict(PROFILES["quick"].analysis)


@dataclass(frozen=True)
class AnalysisProfile:
    """The two fields :func:`refconv.protocol.analyses.run_analyses` reads from a demo profile."""

    analysis: dict[str, Any] = field(default_factory=lambda: dict(STUDY_ANALYSIS))
    analysis_batch_size: int = 128


def _rows(results: Mapping[str, Any], budget: int) -> list[dict[str, Any]]:
    for b in results["budgets"]:
        if b["budget"] == budget:
            return b["rows"]
    have = [b["budget"] for b in results["budgets"]]
    raise ConfigError(f"the sweep has no budget {budget}; it has {have}: pass one of them with --budget.")


def _cells_by_seed(results: Mapping[str, Any], row: Mapping[str, Any]) -> dict[int, str]:
    return {int(results["cells"][cid]["seed"]): cid for cid in row["cells"]}


def _run_result(sweep_dir: Path, results: Mapping[str, Any], cell_id: str, *, need_checkpoint: bool) -> Any:
    """The cell's :class:`~refconv.engine.RunResult`, read back from its ``done.json``; a clear error when gone."""
    from ..engine import RunResult
    from ..runlayout import checkpoint_path, done_record

    run_dir = sweep_dir / results["cells"][cell_id]["run_dir"]
    record = done_record(run_dir)
    if record is None or (need_checkpoint and not checkpoint_path(run_dir).is_file()):
        command = results.get("command") or "refconv sweep CONFIG --out DIR --yes"
        raise ConfigError(f"cell {cell_id}: {run_dir} no longer holds a finished run with its checkpoints (a recorded "
                          f"sweep's runs/ are deleted after recording). Re-run the sweep to restore them: {command}")
    res = RunResult.from_dict(record, cached=True)
    res.run_dir = run_dir  # done.json holds the path it was written at; the sweep directory may have moved
    return res


def _first_baseline(baseline: Mapping[str, Any]) -> str:
    """The run directory (relative to the sweep's) of the baseline trained here: the shared one, or the first
    seed's with per-seed baselines (the start whose channel diversity the page quotes)."""
    if "per_seed" in baseline:
        return baseline["per_seed"][min(baseline["per_seed"], key=lambda k: int(k.removeprefix("seed")))]["run_dir"]
    return baseline.get("run_dir") or "runs/baseline"


def default_settings(results: Mapping[str, Any], budget: int) -> list[str]:
    """The authors' defaults and the setting closest to the best control at this budget (by mean Δ)."""
    settings = [r for r in _rows(results, budget) if r["kind"] == "setting"]
    if not settings:
        raise ConfigError(f"the sweep has no RefConv setting at budget {budget}.")
    best = max(settings, key=lambda r: (r.get("vs_best") or {}).get("mean", float("-inf")))["arm"]
    names = [r["arm"] for r in settings]
    return list(dict.fromkeys(([n for n in names if n == "authors"][:1]) + [best]))


def analyze_sweep(sweep_dir: str | os.PathLike, *, budget: int | None = None, settings: Sequence[str] | None = None,
                  control: str = "continue", data_dir: str | None = None,
                  profile: AnalysisProfile | None = None, command: str | None = None) -> dict[str, Any]:
    """Analyse each chosen setting's cells against the same seed's ``control`` cell at one budget.

    Args:
        sweep_dir: a sweep's ``--out`` directory (``results.json`` and its ``runs/``).
        budget: the budget to analyse (default: the largest, where RefConv has trained longest).
        settings: RefConv settings (default: :func:`default_settings`).
        control: the control arm each seed is paired with.
        data_dir: Fashion-MNIST's location, if not in the usual places.
        profile: analysis settings (default: :data:`STUDY_ANALYSIS`).
        command: the command line recorded in the output (default: :func:`study_analyses_command` of these
            arguments).

    Returns the ``analyses.json`` data, also written to ``<sweep_dir>/analyses/``.
    """
    from ..engine.checkpoint import atomic_write_bytes
    from .analyses import compared_sides, run_analyses, summarize_analyses
    from .evaldata import test_loader
    from .runner import StudyModels

    t0 = time.perf_counter()
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "results.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: give a sweep's --out directory after the sweep has finished.")
    results = json.loads(path.read_text())
    budget = budget if budget is not None else max(b["budget"] for b in results["budgets"])
    rows = {r["arm"]: r for r in _rows(results, budget)}
    if control not in rows or rows[control]["kind"] == "setting":
        controls = [a for a, r in rows.items() if r["kind"] != "setting"]
        raise ConfigError(f"{control!r} is not a control of this sweep; its controls are {controls}.")
    settings = list(settings) if settings else default_settings(results, budget)
    unknown = [s for s in settings if s not in rows or rows[s]["kind"] != "setting"]
    if unknown:
        known = [a for a, r in rows.items() if r["kind"] == "setting"]
        raise ConfigError(f"unknown setting(s) {unknown} at budget {budget}; the sweep's settings are {known}.")
    profile = profile or AnalysisProfile()
    start = results["spec"]["baseline"].get("weights") or str(sweep_dir / _first_baseline(results["baseline"]))
    ctrl_cells = _cells_by_seed(results, rows[control])
    out = sweep_dir / ANALYSES_DIR
    data: dict[str, Any] = {
        "sweep": results["spec"].get("name"), "budget": budget, "control": control, "start": start,
        "analysis": json.loads(json.dumps(profile.analysis)), "settings": {},
    }
    models, loader = StudyModels(), None
    for i, setting in enumerate(settings):
        ref_cells = _cells_by_seed(results, rows[setting])
        seeds = sorted(set(ref_cells) & set(ctrl_cells))
        per_seed = []
        for s in seeds:
            ctrl = _run_result(sweep_dir, results, ctrl_cells[s], need_checkpoint=False)
            ref = _run_result(sweep_dir, results, ref_cells[s], need_checkpoint=True)
            loader = loader or test_loader(ref.config, data_dir=data_dir, batch_size=profile.analysis_batch_size)
            per_seed.append(run_analyses(
                models.deployed(ctrl), models.trained(ref), models.start(start) if i == 0 and s == seeds[0] else None,
                loader, out / setting / f"seed{s}", profile, plot=s == seeds[0], compared=compared_sides(ctrl, ref)))
        data["settings"][setting] = {
            "seeds": seeds,
            "cells": {"refconv": [ref_cells[s] for s in seeds], control: [ctrl_cells[s] for s in seeds]},
            "top1": {"refconv": [results["cells"][ref_cells[s]]["final"]["top1"] for s in seeds],
                     control: [results["cells"][ctrl_cells[s]]["final"]["top1"] for s in seeds]},
            "compared": [r["compared"] for r in per_seed],
            "rows": summarize_analyses(per_seed, seeds),
        }
        if i == 0 and per_seed and "baseline_redundancy" in per_seed[0]:
            data["start_redundancy"] = per_seed[0]["baseline_redundancy"].get("overall")
    data["command"] = command or study_analyses_command(sweep_dir, budget=budget, settings=settings, control=control)
    data["wall_time_s"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / ANALYSES_FILE, (json.dumps(data, indent=2) + "\n").encode())
    atomic_write_bytes(out / "analyses.md", ("\n".join(analyses_markdown(data, heading="#")) + "\n").encode())
    return data


def study_analyses_command(sweep_dir: str | os.PathLike, *, budget: int, settings: Sequence[str],
                           control: str = "continue") -> str:
    """The ``refconv study-analyses`` command line that analyses these settings of ``sweep_dir`` again."""
    argv = ["refconv", "study-analyses", str(sweep_dir), "--budget", str(budget), "--settings", ",".join(settings)]
    return shlex.join(argv + (["--control", control] if control != "continue" else []))


def load_analyses(sweep_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A sweep's recorded ``analyses/analyses.json``, or None when it has none."""
    path = Path(sweep_dir) / ANALYSES_DIR / ANALYSES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _ms(s: Mapping[str, Any]) -> str:
    return f"{s['mean']:.4g} ± {s['std']:.2g}" if s.get("std") is not None and s.get("n", 0) > 1 else f"{s['mean']:.4g}"


def _ci(d: Mapping[str, Any]) -> str:
    if d.get("ci_low") is None:
        return f"{d['mean']:+.4g}"
    return f"{d['mean']:+.4g} [{d['ci_low']:+.4g}, {d['ci_high']:+.4g}]"


def analyses_section(data: Mapping[str, Any], *, label: str | None = None) -> Section:
    """The analyses as a report section: per setting, one row per metric, with the paired Δ and its interval."""
    control = data["control"]
    title = "Analyses over seeds" + (f": {label} start" if label else "") + f" ({data['budget']} epochs)"
    s = Section(title).add(Text(
        f"Each seed's RefConv cell against the same seed's `{control}` cell (same start, same budget), "
        f"from `{data['start']}`; Δ = RefConv − {control}, paired by seed, 95 % t interval. "
        f"Command: `{data.get('command', '')}`."))
    if data.get("start_redundancy") is not None:
        s.add(Text(f"Channel diversity of the start itself: {data['start_redundancy']:.4g}."))
    rows: list[list[object]] = []
    for setting, block in data["settings"].items():
        top = block["top1"]
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        rows.append([setting, f"test top-1 % ({len(block['seeds'])} seeds)", f"{mean(top[control]):.2f}",
                     f"{mean(top['refconv']):.2f}", f"{mean(top['refconv']) - mean(top[control]):+.2f}"])
        rows += [[setting, r["metric"], _ms(r["continue_summary"]), _ms(r["refconv_summary"]), _ci(r["diff"])]
                 for r in block["rows"]]
    return s.add(Table(["setting", "metric", control, "RefConv", "Δ [95 % CI]"], rows, align="llrrr"))


def analyses_markdown(data: Mapping[str, Any], *, heading: str = "##", label: str | None = None) -> list[str]:
    """:func:`analyses_section` as Markdown lines, its heading at ``heading``'s level (``#``: a page of its own)."""
    return analyses_section(data, label=label).markdown_lines(len(heading))
