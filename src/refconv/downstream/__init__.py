"""Detection and segmentation with RefConv backbones: data, models, metrics, training, fold and export.

The paper reports that RefConv transfers to SSD on Pascal VOC and DeepLabv3+ on Cityscapes at no inference
cost. This package runs that experiment on torchvision's detectors (SSDlite320-MobileNetV3-Large,
SSD300-VGG16) and segmenters (DeepLabV3 with MobileNetV3-Large / ResNet-50, LR-ASPP, FCN), on VOC and
Cityscapes in their own on-disk formats, or offline on a synthetic Fashion-MNIST multi-object dataset written
in those formats::

    from refconv.downstream import downstream_config, run_downstream
    res = run_downstream(downstream_config("detection", method="refconv", epochs=1, out="runs/det"))
    res.final["map_50"], res.weights_path          # folded.safetensors: the stock SSDlite's keys

Detection and segmentation are tasks of the one training engine (:mod:`refconv.engine.task`): the same config,
loop, AMP, DDP, EMA, checkpoints, resume and run directory as ``refconv train``.

Modules: :mod:`.synthetic` (the generator), :mod:`.voc` / :mod:`.cityscapes` (datasets with validation),
:mod:`.metrics` (mAP, mIoU), :mod:`.tasks` (the engine's detection and segmentation tasks), :mod:`.run`
(``run_downstream``, the config), :mod:`.export` (fold checks, ONNX). The detectors and segmenters themselves
(builders, weights, scopes) are models of the one model API: :mod:`refconv.models.detection`, built by
``refconv.models.get_model``.
"""

from __future__ import annotations

from .cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation
from .export import compare_detections, export_onnx, network_outputs, output_equivalence
from .metrics import (
    DetectionMetric,
    SegmentationMetric,
    confusion_matrix,
    iou_per_class,
    mean_iou,
)
from ..models.detection import (
    ARCHS,
    ArchSpec,
    build_model,
    get_spec,
    list_archs,
    load_model_weights,
    scope_patterns,
)
from .synthetic import SyntheticConfig, write_cityscapes, write_voc
from .tasks import DownstreamOptions, build_datasets, evaluate, model_from_checkpoint
from .run import downstream_config, load_checkpoint, run_downstream
from .voc import VOC_CLASSES, VOCDetection, VOCSegmentation, parse_voc_xml

__all__ = [
    "ARCHS",
    "CITYSCAPES_CLASSES",
    "VOC_CLASSES",
    "ArchSpec",
    "CityscapesSegmentation",
    "DetectionMetric",
    "DownstreamOptions",
    "SegmentationMetric",
    "SyntheticConfig",
    "VOCDetection",
    "VOCSegmentation",
    "build_datasets",
    "build_model",
    "compare_detections",
    "confusion_matrix",
    "downstream_config",
    "evaluate",
    "export_onnx",
    "get_spec",
    "iou_per_class",
    "list_archs",
    "load_checkpoint",
    "load_model_weights",
    "mean_iou",
    "model_from_checkpoint",
    "network_outputs",
    "output_equivalence",
    "parse_voc_xml",
    "run_downstream",
    "scope_patterns",
    "write_cityscapes",
    "write_voc",
]
