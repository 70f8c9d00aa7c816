"""What a run returns (:class:`RunResult`, also ``done.json``), how an interrupted run ends
(:class:`RunInterrupted`) and the end-of-run summary."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .task_registry import task_class

__all__ = ["RunResult", "RunInterrupted", "summary_rows"]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped the run after saving ``checkpoint``; resume with ``run(cfg, resume=True)``."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class RunResult:
    """What a finished run produced. ``final`` is the last epoch's test metrics of the exported model
    (the EMA model when ``ema``), ``best`` the best epoch's; ``history`` one dict per epoch. The metrics are the
    task's (classification: loss, top-1, top-5; detection: COCO mAP...; segmentation: mIoU...)."""

    run_dir: Path
    method: str
    model: str
    data: str
    config: dict[str, Any]
    config_hash: str
    final: dict[str, Any]
    best: dict[str, Any]
    history: list[dict[str, Any]]
    weights_path: Path | None = None  # deployable plain weights (folded for refconv)
    folded_path: Path | None = None  # set for refconv runs
    folded_metrics: dict[str, Any] | None = None
    fold_max_abs_err: float | None = None
    fold: dict[str, Any] | None = None  # the fold check's full report (detection: detections compared too)
    onnx: dict[str, Any] | None = None
    trainable_params: int = 0
    total_params: int = 0
    deploy_params: int = 0
    wall_time_s: float = 0.0
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("run_dir", "weights_path", "folded_path"):
            d[key] = None if d[key] is None else str(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, cached: bool = False) -> RunResult:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("run_dir", "weights_path", "folded_path"):
            if d.get(key) is not None:
                d[key] = Path(d[key])
        d["cached"] = cached
        return cls(**d)


def summary_rows(result: RunResult) -> list[tuple[str, str]]:
    """The end-of-run summary as (label, value) rows."""
    task = task_class(result.task)
    f, b = result.final, result.best
    score = task.score
    rows = [
        ("run", str(result.run_dir)),
        ("method / model / data", f"{result.method} / {result.model} / {result.data}"),
        ("final test", task.format_metrics(f)),
        ("best test", f"{score} {b.get(score, float('nan')):.4g} at epoch {b.get('epoch', '-')}"
         if result.task != "classification" else
         f"top-1 {b.get('top1', float('nan')):.2f}% at epoch {b.get('epoch', '-')}"),
        ("params", f"trainable {result.trainable_params:,} / total {result.total_params:,} / deployed "
                   f"{result.deploy_params:,}"),
    ]
    rows += task.fact_rows(result.extra)
    if result.history and "eval_images_per_s" in result.history[-1]:
        last = result.history[-1]
        rows.append(("throughput", f"{last['images_per_s']:.0f} img/s train, {last['eval_images_per_s']:.0f} img/s eval"))
    if result.folded_metrics is not None:
        fm = result.folded_metrics
        if "correct1" in fm:
            same = "identical" if fm["correct1"] == f["correct1"] else "DIFFERENT"
            rows.append(("folded", f"top-1 {fm['top1']:.2f}% ({same} to RefConv), max abs err "
                                   f"{result.fold_max_abs_err:.3g}"))
        else:
            rows.append(("folded", f"{task.format_metrics(fm)}, max abs err {result.fold_max_abs_err:.3g}"))
    if result.weights_path is not None:
        rows.append(("deployable weights", str(result.weights_path)))
    if result.onnx:
        rows.append(("onnx", f"{result.onnx['path']} (max abs err {result.onnx['max_abs_err']:.3g})"))
    rows.append(("wall time", f"{result.wall_time_s:.1f}s"))
    if "loss" in f and not math.isfinite(f["loss"]):
        rows.append(("warning", "final loss is not finite"))
    return rows
