"""What a run returns (:class:`RunResult`, also ``done.json``), how an interrupted run ends
(:class:`RunInterrupted`) and the end-of-run summary."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .task_registry import task_class

if TYPE_CHECKING:
    from torch import nn

__all__ = ["RunResult", "RunInterrupted", "TrainedModels", "summary_rows"]


@dataclass
class TrainedModels:
    """The models a run ended with, on the CPU in eval mode, for whoever reads the run in the same process.

    A study's later stages (fold check, analyses) take them from here instead of rebuilding them from the run
    directory; a run read back from disk (cached, or trained in another process) has none, and the reader loads
    them once (:class:`refconv.protocol.runner.StudyModels`).

    Attributes:
        trained: the model as trained (RefConv layers unfolded for an explicit RefConv run; the EMA model with
            ``ema``): what ``checkpoints/last.pt`` holds.
        deployed: the plain model whose weights are the run's deployable file (folded for RefConv; the same
            object as ``trained`` for a plain model).
    """

    trained: nn.Module
    deployed: nn.Module


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
    # In memory only (never in done.json): set by a run trained in this process; None when read back from disk.
    models: TrainedModels | None = field(default=None, repr=False, compare=False, metadata={"transient": True})

    def to_dict(self) -> dict[str, Any]:
        """The ``done.json`` form: every field but the in-memory models, paths as strings."""
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
             if not f.metadata.get("transient")}
        for key in ("run_dir", "weights_path", "folded_path"):
            d[key] = None if d[key] is None else str(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, cached: bool = False) -> RunResult:
        known = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("transient")}
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
