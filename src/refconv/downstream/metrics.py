"""Detection mAP (torchmetrics, COCO protocol) and segmentation mIoU (from a confusion matrix).

Detection: :class:`DetectionMetric` wraps ``torchmetrics.detection.MeanAveragePrecision`` (pycocotools or
faster-coco-eval backend): ``map`` is COCO's mAP averaged over IoU 0.50:0.95, ``map_50`` the mAP at IoU 0.5
(the number SSD papers report on VOC). Both use COCO's 101-point interpolated precision, not VOC2007's
11-point one, so ``map_50`` can differ from the VOC devkit's number by about a point. VOC "difficult" objects
are passed as COCO "crowd" regions: a detection on them is neither a true nor a false positive, as in VOC.

Segmentation: a ``C x C`` confusion matrix is accumulated over all pixels of all images (rows: truth,
columns: prediction, ignore label left out), then IoU per class = TP / (TP + FP + FN) and mIoU = the mean
over classes that occur in the truth or the predictions (a class absent from both has no IoU). This is the
dataset-level ("accumulated") mIoU of the VOC and Cityscapes benchmarks, not a mean of per-image IoUs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "DetectionMetric",
    "SegmentationMetric",
    "confusion_matrix",
    "detection_backend",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
]


def detection_backend() -> str:
    """The COCO evaluation backend torchmetrics can use here (``pycocotools`` or ``faster_coco_eval``).

    Raises:
        ConfigError: neither is installed (the message says which package to install).
    """
    from torchmetrics.utilities.imports import (
        _FASTER_COCO_EVAL_AVAILABLE,
        _PYCOCOTOOLS_AVAILABLE,
    )

    if _PYCOCOTOOLS_AVAILABLE:
        return "pycocotools"
    if _FASTER_COCO_EVAL_AVAILABLE:
        return "faster_coco_eval"
    raise ConfigError(
        "detection mAP needs a COCO evaluation backend for torchmetrics: pip install pycocotools "
        "(or faster-coco-eval)."
    )


def _nan_if_undefined(value: float) -> float:
    return float("nan") if value == -1 else value


class DetectionMetric:
    """Accumulate detections over a dataset; :meth:`compute` returns COCO mAP, mAP@0.5 and mAP@0.75.

    Args:
        class_metrics: also return per-class mAP (``map_per_class``, indexed by label - 1).
    """

    def __init__(self, *, class_metrics: bool = False) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self._metric = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=class_metrics, backend=detection_backend()
        )
        # COCO scores the 100 best detections per image; SSD returns up to 300, which is expected, not a problem.
        self._metric.warn_on_many_detections = False
        self.class_metrics = class_metrics
        self.images = 0

    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Any]]) -> None:
        """Add one batch.

        Args:
            preds: per image ``boxes`` (``(n, 4)`` xyxy), ``scores``, ``labels`` (a detector's eval output).
            targets: per image ``boxes`` and ``labels``, optionally ``difficult`` (bool; treated as crowd).
        """
        p = [{k: d[k].detach().cpu() for k in ("boxes", "scores", "labels")} for d in preds]
        t = []
        for d in targets:
            item = {"boxes": d["boxes"].detach().cpu().float(), "labels": d["labels"].detach().cpu().long()}
            if "difficult" in d:
                item["iscrowd"] = d["difficult"].detach().cpu().long()
            t.append(item)
        self._metric.update(p, t)
        self.images += len(t)

    def compute(self) -> dict[str, Any]:
        """``map``, ``map_50``, ``map_75``, ``mar_100`` as floats (NaN where undefined: no ground truth)."""
        out = self._metric.compute()
        res: dict[str, Any] = {
            k: _nan_if_undefined(float(out[k])) for k in ("map", "map_50", "map_75", "mar_100")
        }
        if self.class_metrics:
            per = out["map_per_class"].flatten().tolist()
            res["map_per_class"] = [_nan_if_undefined(float(v)) for v in per]
            res["classes"] = [int(c) for c in out["classes"].flatten().tolist()]
        return res

    def reset(self) -> None:
        self._metric.reset()
        self.images = 0


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = 255) -> Tensor:
    """``int64 (C, C)`` counts of (truth row, prediction column) over the pixels whose truth is not ignored.

    Raises:
        ValueError: shapes differ or a truth value is outside ``0..C-1`` (and not ``ignore_index``).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target holds values outside 0..{num_classes - 1} other than {ignore_index}.")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"prediction holds values outside 0..{num_classes - 1}.")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: Tensor) -> Tensor:
    """IoU of each class, ``TP / (TP + FP + FN)``; NaN for a class absent from truth and prediction."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: Tensor) -> float:
    """Mean IoU over the classes that occur (NaN when no pixel was counted)."""
    iou = iou_per_class(cm)
    valid = ~iou.isnan()
    return float(iou[valid].mean()) if valid.any() else float("nan")


def pixel_accuracy(cm: Tensor) -> float:
    """Fraction of counted pixels predicted right."""
    total = int(cm.sum())
    return float(cm.diag().sum()) / total if total else float("nan")


class SegmentationMetric:
    """Accumulate a confusion matrix; :meth:`compute` returns ``miou``, ``pixel_acc`` and per-class IoU.

    Args:
        num_classes: the number of classes (mask values ``0..C-1``).
        ignore_index: truth value left out of every count (VOC/Cityscapes void: 255).
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add predictions: class indices ``(..., H, W)`` or logits ``(N, C, H, W)`` (argmax over C)."""
        if pred.is_floating_point():
            pred = pred.argmax(1)
        self.cm += confusion_matrix(pred.cpu(), target.cpu(), self.num_classes, ignore_index=self.ignore_index)

    def compute(self) -> dict[str, Any]:
        iou = iou_per_class(self.cm)
        return {
            "miou": mean_iou(self.cm),
            "pixel_acc": pixel_accuracy(self.cm),
            "iou_per_class": [None if math.isnan(v) else float(v) for v in iou.tolist()],
        }

    def reset(self) -> None:
        self.cm.zero_()
