"""mAP (torchmetrics, COCO protocol) and mIoU (own confusion matrix) against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from refconv.downstream.metrics import (
    DetectionMetric,
    SegmentationMetric,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)


def _t(boxes, labels, difficult=None):
    d = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if difficult is not None:
        d["difficult"] = torch.tensor(difficult)
    return d


def _p(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def _map(preds, targets, **kw):
    m = DetectionMetric(**kw)
    m.update(preds, targets)
    return m.compute()


def test_perfect_detection_is_one() -> None:
    r = _map([_p([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [1, 2])],
             [_t([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2])])
    assert r["map"] == pytest.approx(1.0) and r["map_50"] == pytest.approx(1.0) and r["mar_100"] == pytest.approx(1.0)


def test_false_positive_ranked_first() -> None:
    # 2 ground truths; detections by score: FP (0.9), TP (0.8). Precision/recall: (0, 0), (0.5, 0.5).
    # COCO's 101 recall points: precision 0.5 at r = 0.00..0.50 (51 points), 0 above -> 51 * 0.5 / 101.
    r = _map([_p([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])],
             [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])])
    assert r["map_50"] == pytest.approx(51 * 0.5 / 101, abs=1e-6)
    assert r["map"] == pytest.approx(51 * 0.5 / 101, abs=1e-6)  # the TP is exact: same at every IoU threshold
    assert r["mar_100"] == pytest.approx(0.5)


def test_iou_thresholds() -> None:
    # IoU = 62 / 100 = 0.62: a match at 0.50, 0.55, 0.60 and not above -> map = 3/10, map_75 = 0.
    r = _map([_p([[0, 0, 10, 6.2]], [0.9], [1])], [_t([[0, 0, 10, 10]], [1])])
    assert r["map_50"] == pytest.approx(1.0)
    assert r["map_75"] == pytest.approx(0.0)
    assert r["map"] == pytest.approx(0.3, abs=1e-6)


def test_wrong_label_and_two_classes() -> None:
    # The class-2 object is detected with label 1: for class 1 that is a FP ranked below its TP (AP 1), class 2
    # has no detection (AP 0); the mean over the two classes with ground truth is 0.5.
    r = _map([_p([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.5], [1, 1])],
             [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])], class_metrics=True)
    assert r["map_50"] == pytest.approx(0.5)
    assert r["map_per_class"] == pytest.approx([1.0, 0.0]) and r["classes"] == [1, 2]


def test_difficult_objects_are_ignored() -> None:
    # a detection on a "difficult" object is neither TP nor FP; the missed difficult one costs no recall
    r = _map([_p([[20, 20, 30, 30], [0, 0, 10, 10]], [0.95, 0.9], [1, 1])],
             [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], difficult=[False, True])])
    assert r["map_50"] == pytest.approx(1.0)
    r = _map([_p([[20, 20, 30, 30], [0, 0, 10, 10]], [0.95, 0.9], [1, 1])],
             [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], difficult=[False, False])])
    assert r["map_50"] == pytest.approx(1.0)  # both found
    r = _map([_p([[0, 0, 10, 10]], [0.9], [1])], [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])])
    assert r["map_50"] == pytest.approx(51 / 101, abs=1e-6)  # recall capped at 0.5 without the flag


def test_accumulates_over_images_and_no_ground_truth_is_nan() -> None:
    m = DetectionMetric()
    m.update([_p([[0, 0, 10, 10]], [0.9], [1])], [_t([[0, 0, 10, 10]], [1])])
    m.update([_p([], [], [])], [_t([[5, 5, 15, 15]], [1])])
    assert m.compute()["map_50"] == pytest.approx(51 / 101, abs=1e-6) and m.images == 2
    assert math.isnan(_map([_p([[0, 0, 1, 1]], [0.5], [1])], [_t([], [])])["map"])


# --------------------------------------------------------------------------- segmentation
def test_confusion_matrix_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm = confusion_matrix(pred, target, 3)
    # rows truth, columns prediction; the 255 pixel is not counted
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    iou = iou_per_class(cm)
    # class 0: TP 1, FP 1 (truth 2 -> 0), FN 1 -> 1/3; class 1: 2 / (2 + 1 + 1) = 1/2; class 2: 1 / (1 + 1 + 1)
    assert iou.tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 3])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert pixel_accuracy(cm) == pytest.approx(4 / 7)


def test_absent_class_has_no_iou() -> None:
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), 4)
    iou = iou_per_class(cm)
    assert iou[:2].tolist() == [1.0, 1.0] and iou[2:].isnan().all()
    assert mean_iou(cm) == 1.0  # classes 2, 3 occur nowhere: left out, not counted as 0


def test_segmentation_metric_accumulates_dataset_level() -> None:
    m = SegmentationMetric(2)
    m.update(torch.tensor([[1, 1]]), torch.tensor([[1, 1]]))  # image 1: perfect
    m.update(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0]]))  # image 2: half of class 1 missed
    r = m.compute()
    # accumulated: class 0 TP 2 FP 2 -> 0.5; class 1 TP 2 FN 2 -> 0.5 (a mean of per-image IoUs would differ)
    assert r["iou_per_class"] == pytest.approx([0.5, 0.5]) and r["miou"] == pytest.approx(0.5)
    assert r["pixel_acc"] == pytest.approx(4 / 6)


def test_logits_and_bad_values() -> None:
    m = SegmentationMetric(3)
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 2, 0, 0] = 1
    logits[0, 1, 0, 1] = 1
    m.update(logits, torch.tensor([[[2, 1]]]))
    assert m.compute()["miou"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)
