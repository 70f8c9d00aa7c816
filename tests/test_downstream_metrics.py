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


@pytest.mark.parametrize(
    "shift,iou,matched_thresholds",
    [
        (3, 70 / 130, 1),  # IoU 0.538: a true positive at 0.50 only
        (1, 90 / 110, 7),  # IoU 0.818: at 0.50 ... 0.80
        (5, 50 / 150, 0),  # IoU 0.333 < 0.5: a miss at every threshold (and a false positive)
    ],
)
def test_shifted_box_with_known_iou(shift, iou, matched_thresholds) -> None:
    # a 10x10 box shifted right by `shift`: intersection 10*(10-shift), union 200 - intersection
    assert iou == pytest.approx(10 * (10 - shift) / (200 - 10 * (10 - shift)))
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    assert sum(iou >= t for t in thresholds) == matched_thresholds
    r = _map([_p([[shift, 0, 10 + shift, 10]], [0.9], [1])], [_t([[0, 0, 10, 10]], [1])])
    # one object, one detection: AP is 1 at a threshold where they match, 0 where they do not
    assert r["map"] == pytest.approx(matched_thresholds / 10, abs=1e-6)
    assert r["map_50"] == pytest.approx(1.0 if matched_thresholds >= 1 else 0.0)
    assert r["map_75"] == pytest.approx(1.0 if matched_thresholds >= 6 else 0.0)
    assert r["mar_100"] == pytest.approx(matched_thresholds / 10, abs=1e-6)


def test_missed_object_and_false_positive_by_hand() -> None:
    # 3 objects; detections by score: TP (0.9), FP far away (0.8), TP (0.7); the third object is missed.
    # Precision/recall after each: (1, 1/3), (1/2, 1/3), (2/3, 2/3). Interpolated precision (max to the right):
    # 1 for r <= 1/3 (34 of COCO's 101 recall points, r = 0.00..0.33), 2/3 for 1/3 < r <= 2/3 (r = 0.34..0.66,
    # 33 points), 0 above.
    r = _map([_p([[0, 0, 10, 10], [80, 80, 90, 90], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1])],
             [_t([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 1, 1])])
    expected = (34 * 1.0 + 33 * 2 / 3) / 101
    assert r["map_50"] == pytest.approx(expected, abs=1e-6)
    assert r["map"] == pytest.approx(expected, abs=1e-6)  # both TPs are exact boxes
    assert r["mar_100"] == pytest.approx(2 / 3, abs=1e-6)


def _pycocotools_stats(preds, targets):
    """COCO mAP straight from pycocotools (xywh boxes, crowd flags), independent of torchmetrics' wrapper."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for img_id, (p, t) in enumerate(zip(preds, targets), start=1):
        images.append({"id": img_id, "width": 200, "height": 200})
        crowd = t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool))
        for box, label, c in zip(t["boxes"].tolist(), t["labels"].tolist(), crowd.tolist()):
            x0, y0, x1, y1 = box
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": label, "iscrowd": int(c),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
        for box, score, label in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            x0, y0, x1, y1 = box
            dets.append({"image_id": img_id, "category_id": label, "score": score,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    labels = sorted({a["category_id"] for a in anns} | {d["category_id"] for d in dets})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in labels]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": ev.stats[0], "map_50": ev.stats[1], "map_75": ev.stats[2], "mar_100": ev.stats[8]}


def test_agrees_with_pycocotools_on_noisy_detections() -> None:
    pytest.importorskip("pycocotools")
    gen = torch.Generator().manual_seed(3)
    preds, targets = [], []
    for _ in range(6):
        n = int(torch.randint(1, 5, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * 120
        wh = 10 + torch.rand(n, 2, generator=gen) * 60
        gt = torch.cat([xy, xy + wh], 1).round()
        labels = torch.randint(1, 4, (n,), generator=gen)
        difficult = torch.rand(n, generator=gen) < 0.15
        # detections: each object jittered (IoUs spread over 0.3..1), some with a wrong label, plus clutter
        jitter = (torch.rand(n, 4, generator=gen) - 0.5) * wh.repeat(1, 2) * 0.5
        found = torch.rand(n, generator=gen) < 0.8
        det = (gt + jitter)[found]
        det_labels = torch.where(torch.rand(n, generator=gen) < 0.85, labels,
                                 torch.randint(1, 4, (n,), generator=gen))[found]
        m = int(torch.randint(0, 3, (1,), generator=gen))
        cxy = torch.rand(m, 2, generator=gen) * 150
        clutter = torch.cat([cxy, cxy + 5 + torch.rand(m, 2, generator=gen) * 40], 1)
        boxes = torch.cat([det, clutter]).round()
        scores = torch.rand(len(boxes), generator=gen)
        preds.append(_p(boxes.tolist(), scores.tolist(), torch.cat([det_labels, torch.randint(1, 4, (m,),
                                                                                            generator=gen)]).tolist()))
        targets.append(_t(gt.tolist(), labels.tolist(), difficult=difficult.tolist()))
    ours = _map(preds, targets)
    ref = _pycocotools_stats(preds, targets)
    assert 0.05 < ref["map"] < 0.95 and ref["map_50"] > ref["map_75"]  # a case that exercises the thresholds
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_miou_against_loops_and_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(0)
    c = 5
    target = torch.randint(0, c, (3, 17, 13), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.1] = 255
    pred = torch.where(torch.rand(target.shape, generator=gen) < 0.6, target.clamp(max=c - 1),
                       torch.randint(0, c, target.shape, generator=gen))
    # confusion matrix and IoU with plain loops over pixels and classes
    cm = [[0] * c for _ in range(c)]
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            cm[t][p] += 1
    assert confusion_matrix(pred, target, c).tolist() == cm
    ious = []
    for k in range(c):
        tp = cm[k][k]
        fp = sum(cm[r][k] for r in range(c)) - tp
        fn = sum(cm[k]) - tp
        ious.append(tp / (tp + fp + fn))
    m = SegmentationMetric(c)
    m.update(pred[:2], target[:2])
    m.update(pred[2:], target[2:])
    r = m.compute()
    assert r["iou_per_class"] == pytest.approx(ious, abs=1e-12)
    assert r["miou"] == pytest.approx(sum(ious) / c, abs=1e-12)
    assert r["pixel_acc"] == pytest.approx(sum(cm[k][k] for k in range(c)) / sum(map(sum, cm)), abs=1e-12)
    from torchmetrics.classification import MulticlassJaccardIndex

    tm = MulticlassJaccardIndex(num_classes=c, average=None, ignore_index=255)
    assert tm(pred, target).tolist() == pytest.approx(ious, abs=1e-6)
