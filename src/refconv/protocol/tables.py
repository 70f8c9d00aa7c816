"""The statistics tables of a study, shared by ``refconv demo`` and ``refconv sweep``.

One place computes what every table of the protocol says about an arm: its summary over seeds and its paired
per-seed differences to the controls (:mod:`refconv.stats`). The demo's table (:func:`arm_table`, one budget,
fixed arms) and the sweep's (:func:`budget_rows`, any settings, judged against the best control) are two
layouts of :func:`compare_arms`, so the two reports cannot drift apart in how they compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..stats import paired_difference, summarize, verdict

if TYPE_CHECKING:
    from ..engine import RunResult
    from .cells import Arm
    from .sweep_spec import SweepSpec

__all__ = ["compare_arms", "arm_table", "budget_rows", "mean_epoch_time"]


def compare_arms(values: Mapping[str, Sequence[float]], controls: Sequence[str], *, ci: str = "t",
                 confidence: float = 0.95) -> dict[str, Any]:
    """Summaries of every arm, the best control, and each non-control arm's paired differences to each control.

    The best control is the control with the higher mean (the first listed on a tie): a setting is judged
    against the strongest thing a user could have done instead with the same budget.

    Args:
        values: arm -> per-seed values, every list in the same seed order (the pairing).
        controls: the control arms among ``values``.

    Returns:
        ``{"best_control": name, "summaries": {arm: Summary}, "diffs": {arm: {control: PairedDifference}}}``.
    """
    missing = [c for c in controls if c not in values]
    if missing or not controls:
        raise ValueError(f"controls {missing or list(controls)} have no values.")
    summaries = {a: summarize(v) for a, v in values.items()}
    best = max(controls, key=lambda c: summaries[c].mean)
    diffs = {a: {c: paired_difference(v, values[c], confidence=confidence, method=ci) for c in controls}
             for a, v in values.items() if a not in controls}
    return {"best_control": best, "summaries": summaries, "diffs": diffs}


def arm_table(
    arms: Sequence[Arm],
    seeds: Sequence[int],
    results: Mapping[tuple[str, int], RunResult],
    *,
    metric: str = "top1",
    reference: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """Per arm: summary of ``metric`` over seeds and paired differences to every control arm.

    ``reference`` may add fixed per-seed series (e.g. the baseline's value repeated) to compare against.
    """
    values = {a.name: [float(results[(a.name, s)].final[metric]) for s in seeds] for a in arms}
    references = {name: [float(v) for v in ref] for name, ref in (reference or {}).items()}
    controls = [a.name for a in arms if a.is_control] + list(references)
    cmp = compare_arms({**values, **references}, controls)
    return [{"arm": a.name, "method": a.method, "epochs": a.epochs, "values": values[a.name],
             "summary": cmp["summaries"][a.name].to_dict(),
             "vs": {c: d.to_dict() for c, d in cmp["diffs"].get(a.name, {}).items()}}
            for a in arms]


def budget_rows(spec: SweepSpec, budget: int, cells: Mapping[str, Mapping[str, Any]],
                baseline_top1: float | None) -> dict[str, Any]:
    """The results table of one budget, from the per-cell records (``cells["e3/zero-init/seed0"]``).

    Every number is computed from the cells' ``final`` metrics and ``history`` (the runs' metrics.jsonl),
    so the table can be checked against the run directories.
    """
    def key(arm: str, seed: int) -> str:
        return f"e{budget}/{arm}/seed{seed}"

    arms = [s.name for s in spec.settings] + list(spec.controls)
    matched = {s.name: spec.lr_matched_control(s.name) for s in spec.settings}
    top1 = {a: [float(cells[key(a, s)]["final"]["top1"]) for s in spec.seeds] for a in arms}
    top5 = {a: [float(cells[key(a, s)]["final"]["top5"]) for s in spec.seeds] for a in arms}
    cmp1 = compare_arms(top1, spec.controls, ci=spec.ci, confidence=spec.confidence)
    best = cmp1["best_control"]
    ref_time = _mean([t for s in spec.seeds for t in _epoch_times(cells[key(best, s)])])
    rows = []
    for a in arms:
        is_control = a in spec.controls
        recs = [cells[key(a, s)] for s in spec.seeds]
        epoch_time = _mean([t for r in recs for t in _epoch_times(r)])
        rows.append({
            "budget": budget,
            "arm": a,
            "kind": "control" if is_control else "setting",
            "method": spec.control_method(a) if is_control else "refconv",
            "overrides": {} if is_control else dict(next(s for s in spec.settings if s.name == a).overrides),
            "cells": [key(a, s) for s in spec.seeds],
            "values": top1[a],
            "values_top5": top5[a],
            "summary": cmp1["summaries"][a].to_dict(),
            "summary_top5": summarize(top5[a]).to_dict(),
            "best_control": best,
            "vs": {c: d.to_dict() for c, d in cmp1["diffs"].get(a, {}).items()},
            "vs_best": cmp1["diffs"][a][best].to_dict() if not is_control else None,
            # the control at the setting's own recipe lr: everything equal but refocusing
            "lr_matched_control": matched.get(a),
            "vs_lr_matched": cmp1["diffs"][a][matched[a]].to_dict() if matched.get(a) else None,
            "vs_baseline": (cmp1["summaries"][a].mean - baseline_top1) if baseline_top1 is not None else None,
            "verdict": verdict(cmp1["diffs"][a][best], f"the best control ({best})") if not is_control else None,
            "cost": {
                "epoch_time_s": epoch_time,
                "epoch_time_ratio": epoch_time / ref_time if epoch_time is not None and ref_time else None,
                "trainable_params": recs[0]["trainable_params"],
                "total_params": recs[0]["total_params"],
                "deploy_params": recs[0]["deploy_params"],
                "wall_time_s": _mean([r["wall_time_s"] for r in recs]),
            },
        })
    return {"budget": budget, "best_control": best, "rows": rows}


def _epoch_times(cell: Mapping[str, Any]) -> list[float]:
    return [float(h["epoch_time_s"]) for h in cell.get("history", []) if h.get("epoch_time_s") is not None]


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def mean_epoch_time(cell: Mapping[str, Any]) -> float | None:
    """Mean seconds per epoch of a run record (None when its history times no epoch)."""
    return _mean(_epoch_times(cell))
