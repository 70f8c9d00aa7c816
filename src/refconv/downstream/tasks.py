"""Detection and segmentation as tasks of the one engine (:mod:`refconv.engine.task`).

``refconv detect`` / ``refconv segment`` are :func:`refconv.engine.run` with ``task="detection"`` /
``"segmentation"``: the engine's config, loop, optimiser and schedule (timm's factories), AMP, DDP, EMA,
checkpoints with exact mid-epoch resume, Ctrl-C and NaN handling, run directory, fold check and export. This
module holds only what differs: the data (VOC, Cityscapes, the synthetic Fashion-MNIST scenes), the torchvision
model builder and its RefConv scope, the loss step, mAP / mIoU, the detector-aware fold comparison and ONNX.

The task's own settings live in the config's ``task_options`` (:class:`DownstreamOptions`: scope, backbone
weights, data splits and synthetic-data settings...). Methods, as in classification (docs/method.md, "The
protocol"): ``baseline`` trains from the given weights; ``refconv`` converts the backbone (``scope="backbone"``)
or every eligible conv (``"all"``) and trains with the bases frozen; ``continue`` and ``finetune`` are the
controls (``finetune``: ``lr * finetune_lr_mult``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import typing
import warnings
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from ..convert import RefConvWarning, convert, refconv_layers, reparameterize
from ..engine import distributed as dist_utils
from ..engine.config import coerce_value
from ..engine.loop import autocast
from ..engine.modeling import count_params, groups_spec
from ..engine.task_registry import register_task
from ..engine.task import StepOutput, Task, rank0_first
from ..errors import ConfigError, DataError
from ..models import get_model, rebuild_converted
from ..models.detection import SCOPES, check_min_size, get_spec, load_model_weights, scope_patterns, set_image_size
from . import synthetic
from .cityscapes import CityscapesSegmentation
from .metrics import DetectionMetric, SegmentationMetric
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionTrainTransform,
    SegmentationTransform,
    detection_collate,
    segmentation_collate,
)
from .voc import IGNORE_INDEX, VOCDetection, VOCSegmentation

if TYPE_CHECKING:
    from ..engine.config import RunConfig
    from ..engine.distributed import DistInfo
    from ..engine.progress import Reporter

__all__ = ["CLASSIFICATION_ONLY", "DATASETS", "DownstreamOptions", "DetectionTask", "SegmentationTask", "build_datasets", "evaluate",
           "input_size", "model_from_checkpoint", "rebuild_model"]

_log = logging.getLogger(__name__)

DATASETS = ("synthetic", "synthetic-cityscapes", "voc", "cityscapes")

# RunConfig keys that mean something for classification only, with their defaults: a detection/segmentation
# config that sets one otherwise is refused (it would silently do nothing), and refconv detect/segment have no flag.
CLASSIFICATION_ONLY = {"pretrained": False, "num_classes": None, "in_chans": None, "subset_train": None,
                       "subset_test": None, "layers": "all", "basis": "pretrained", "label_smoothing": 0.0,
                       "augment": True, "download": False, "data_seed": 0, "input_pipeline": "auto",
                       # implicit refocusing and BN recalibration are tested for classification only
                       "refocus_impl": "explicit", "refocus_precond": "exact", "bn_recalibrate_batches": 0}


def _opt(default: Any, text: str, *aliases: str) -> Any:
    """A task option: its default, its help (the flag's and the docs'), other spellings of its flag."""
    return field(default=default, metadata={"help": text, "aliases": aliases})


@dataclass
class DownstreamOptions:
    """The ``task_options`` of a detection / segmentation run; each is a ``refconv detect/segment`` flag, whose help
    is the field's."""

    scope: str = _opt("backbone", "refconv: convert the pretrained backbone or all eligible convs (backbone | all); "
                                  "--include replaces the scope's patterns")
    weights_backbone: str | None = _opt(None, "backbone weights: torchvision name (IMAGENET1K_V1) or a classifier "
                                              "file / run dir; the *_timm archs take a pretrained registry name "
                                              "(fmnist/mobilenetv3_small_100) or a classifier file",
                                        "--backbone-weights")
    aux_weight: float = _opt(0.5, "weight of the auxiliary head's loss (DeepLabV3 / FCN with --weights having one)")
    fashion_mnist_dir: str | None = _opt(None, "where Fashion-MNIST's IDX files are, for synthetic data [the usual "
                                               "places]")
    train_split: str = _opt("train", "training split (VOC ImageSets file name / Cityscapes split)")
    val_split: str = _opt("val", "validation split")
    classes: list[str] | None = _opt(None, "VOC object class names, comma-separated [classes.txt in the root, else "
                                           "VOC's 20]")
    clip_boxes: bool = _opt(False, "clip out-of-image VOC boxes instead of refusing the dataset")
    synthetic_train: int = _opt(256, "synthetic data: training images")
    synthetic_val: int = _opt(64, "synthetic data: validation images")
    synthetic_size: int = _opt(96, "synthetic data: canvas height in px (Cityscapes format: width = 2x)")
    synthetic_seed: int = _opt(0, "synthetic data: generator seed")
    max_steps: int | None = _opt(None, "stop every epoch after this many steps (smoke tests)")
    eval_images: int | None = _opt(None, "evaluate on the first N validation images only")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> DownstreamOptions:
        """Build from ``task_options`` (YAML or flags: strings are converted), refusing unknown keys and values of
        the wrong type."""
        hints = typing.get_type_hints(cls)
        for key in data:
            if key not in hints:
                close = difflib.get_close_matches(key, list(hints), n=1)
                raise ConfigError(f"unknown task option {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                                  + f" Options of detection / segmentation: {', '.join(hints)}.")
        return cls(**{k: coerce_value(k, v, "task_options", hints) for k, v in data.items()})


def _options(cfg: RunConfig) -> DownstreamOptions:
    return DownstreamOptions(**cfg.task_options)


# --------------------------------------------------------------------------- data
def input_size(cfg: RunConfig) -> tuple[int, int]:
    """The network input ``(height, width)``: ``image_size``, else the synthetic canvas, else the arch's default
    (Cityscapes: 512 x 1024)."""
    wide = cfg.data in ("cityscapes", "synthetic-cityscapes")
    if cfg.image_size is not None:
        h = cfg.image_size
    elif cfg.data.startswith("synthetic"):
        h = _options(cfg).synthetic_size
    else:
        h = 512 if wide else get_spec(cfg.model).default_size
    return (h, 2 * h) if wide else (h, h)


def _synthetic_root(cfg: RunConfig) -> Path:
    opt = _options(cfg)
    wide = cfg.data == "synthetic-cityscapes"
    scfg = synthetic.SyntheticConfig(
        num_train=opt.synthetic_train, num_val=opt.synthetic_val, height=opt.synthetic_size,
        width=2 * opt.synthetic_size if wide else opt.synthetic_size, seed=opt.synthetic_seed,
        scale=(0.8, min(1.6, opt.synthetic_size / 28)), objects=(1, 3 if not wide else 5),
    )
    fmt = "cityscapes" if wide else "voc"
    root = Path(cfg.data_dir) if cfg.data_dir else synthetic.default_root(fmt, scfg)
    stamp = root / "synthetic.json"
    wanted = json.loads(synthetic._provenance(scfg, fmt)[1])
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return root
        except json.JSONDecodeError:
            pass
        _log.info("%s holds synthetic data of other settings; regenerating.", root)
    elif root.exists() and any(root.iterdir()):
        raise DataError(f"{root} is not empty and holds no synthetic.json: refusing to write synthetic data into it.")
    writer = synthetic.write_cityscapes if wide else synthetic.write_voc
    writer(root, scfg, data_dir=opt.fashion_mnist_dir)
    return root


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset, tuple[str, ...], int]:
    """``(train, val, class_names, num_classes)`` for the config's task and data, with transforms.

    ``class_names`` names every output of the model (background first for VOC).

    Raises:
        DataError: missing or malformed data (every problem listed).
    """
    opt = _options(cfg)
    root = _synthetic_root(cfg) if cfg.data.startswith("synthetic") else Path(cfg.data_dir)
    if cfg.task == "detection":
        train = VOCDetection(root, opt.train_split, classes=opt.classes, clip_boxes=opt.clip_boxes,
                             transforms=DetectionTrainTransform())
        val = VOCDetection(root, opt.val_split, classes=opt.classes, clip_boxes=opt.clip_boxes)
        return train, val, ("background", *train.classes), train.num_classes
    size = input_size(cfg)
    train_t, val_t = SegmentationTransform(size, train=True), SegmentationTransform(size, train=False)
    if cfg.data in ("cityscapes", "synthetic-cityscapes"):
        train = CityscapesSegmentation(root, opt.train_split, transforms=train_t)
        val = CityscapesSegmentation(root, opt.val_split, transforms=val_t)
    else:
        train = VOCSegmentation(root, opt.train_split, classes=opt.classes, transforms=train_t)
        val = VOCSegmentation(root, opt.val_split, classes=opt.classes, transforms=val_t)
    return train, val, train.class_names, train.num_classes


# --------------------------------------------------------------------------- models
def rebuild_model(meta: dict[str, Any]) -> nn.Module:
    """The model a checkpoint's record describes (``arch``, ``task``, ``num_classes``, ``image_size``,
    ``backbone_layout``, ``aux_loss``, ``conversion``), randomly initialised: its weights load next."""
    spec = get_spec(meta["arch"], meta["task"])
    model = get_model(spec.name, num_classes=int(meta["num_classes"]), task=spec.task, aux_loss=meta.get("aux_loss"),
                      pretrained_layout=meta.get("backbone_layout") == "pretrained")
    if meta.get("image_size"):
        set_image_size(model, tuple(meta["image_size"]))
    if meta.get("conversion"):
        rebuild_converted(model, meta["conversion"]["layers"])
    return model


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a ``refconv detect``/``segment`` checkpoint holds, weights loaded strictly, eval mode."""
    model = rebuild_model(ckpt)
    spec = get_spec(ckpt["arch"], ckpt["task"])
    load_model_weights(model, spec, ckpt["state_dict"], source=f"{spec.task} checkpoint", new_head=False)
    return model.eval()


def _deploy_params(model: nn.Module) -> int:
    """Parameters of the folded model: a RefConv layer folds into its own conv, so only RT goes away."""
    return count_params(model)[1] - sum(m.refocus_weight.numel() for m in refconv_layers(model).values())


def _starting_model(cfg: RunConfig, num_classes: int, size: tuple[int, int]) -> nn.Module:
    """The model a new run starts from: built with its weights, then converted (``refconv``) or folded (a RefConv
    checkpoint as the start of a plain method)."""
    opt = _options(cfg)
    model = get_model(cfg.model, num_classes=num_classes, task=cfg.task, weights=cfg.weights,
                      weights_backbone=opt.weights_backbone, image_size=size)
    layout, backbone = model.refconv_backbone_layout, model.refconv_backbone
    has_refconv = bool(refconv_layers(model))
    if cfg.method == "refconv":
        if not has_refconv:
            if cfg.weights is None and opt.weights_backbone is None:
                warnings.warn(
                    "refconv from random weights: RefConv refocuses a *pretrained* basis, which stays frozen. Pass "
                    "--weights-backbone (ImageNet) or --weights (a baseline run) for a meaningful run.",
                    RefConvWarning, stacklevel=4,
                )
            convert(model, map_k=cfg.map_k, groups=groups_spec(cfg.groups, cfg.max_group_size), init=cfg.init,
                    include=cfg.include or scope_patterns(cfg.model, opt.scope), exclude=cfg.exclude or None)
    elif has_refconv:
        warnings.warn(f"--weights {cfg.weights} is a RefConv checkpoint; folded before {cfg.method} training.",
                      RefConvWarning, stacklevel=4)
        model = reparameterize(model)
    model.refconv_backbone_layout = layout
    model.refconv_backbone = backbone
    return model


# --------------------------------------------------------------------------- evaluation
def _gathered(items: list[Any]) -> list[Any]:
    """Every rank's ``items``, concatenated in rank order (just ``items`` in one process)."""
    if not dist_utils._active():
        return items
    return [x for part in dist_utils.all_gather_object(items) for x in part]


@torch.no_grad()
def evaluate(model: nn.Module, task: str, loader: Any, num_classes: int, device: torch.device, *,
             amp: torch.dtype | None = None) -> dict[str, Any]:
    """Detection: COCO mAP, mAP@0.5, mAP@0.75, AR@100. Segmentation: mIoU, pixel accuracy, per-class IoU,
    computed at each mask's full resolution (logits upsampled bilinearly). Exact over all ranks (each rank
    evaluates its share of the images; the detections or confusion matrices are combined)."""
    was_training = model.training
    model.eval()
    metric: DetectionMetric | SegmentationMetric
    metric = DetectionMetric() if task == "detection" else SegmentationMetric(num_classes)
    seen, pairs = 0, []
    for batch_images, batch_targets in loader:
        with autocast(device, amp):
            if task == "detection":
                preds = model([im.to(device) for im in batch_images])
            else:
                logits = model(batch_images.to(device))["out"]
        if task == "detection":
            pairs += [({k: p[k].float().cpu() if k != "labels" else p[k].cpu() for k in ("boxes", "scores", "labels")},
                       t) for p, t in zip(preds, batch_targets)]
        else:
            masks = batch_targets if isinstance(batch_targets, list) else list(batch_targets)
            for lg, mask in zip(logits.float(), masks):
                if lg.shape[-2:] != mask.shape[-2:]:
                    lg = F.interpolate(lg[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[0]
                metric.update(lg.argmax(0), mask)
        seen += len(batch_images)
    model.train(was_training)
    if task == "detection":
        pairs = _gathered(pairs)
        if pairs:
            metric.update([p for p, _ in pairs], [t for _, t in pairs])
        seen = len(pairs)
    else:
        metric.cm = dist_utils.all_reduce_sum(metric.cm.to(device)).cpu()
        seen = int(dist_utils.all_reduce_sum(torch.tensor(seen, device=device)).item())
    return {**metric.compute(), "images": seen}


# --------------------------------------------------------------------------- the tasks
class _DownstreamTask(Task):
    """What detection and segmentation share; the subclasses add the loss step and the metric's names."""

    MIN_EPOCHS: ClassVar[int] = 0
    NON_RECIPE_OPTIONS: ClassVar[frozenset[str]] = frozenset({"fashion_mnist_dir"})
    input_note: ClassVar[str]

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        opt = DownstreamOptions.from_mapping(cfg.task_options)
        cfg.task_options = dataclasses.asdict(opt)  # resolved: config.yaml names every setting
        spec = get_spec(cfg.model, cls.name)
        if cfg.data not in DATASETS:
            raise ConfigError(f"data must be one of {', '.join(DATASETS)} for {cls.name}, got {cfg.data!r}.")
        if cls.name == "detection" and cfg.data in ("cityscapes", "synthetic-cityscapes"):
            raise ConfigError("Cityscapes is a segmentation dataset here; detection takes --data voc or synthetic.")
        if cfg.data in ("voc", "cityscapes") and not cfg.data_dir:
            raise ConfigError(f"--data {cfg.data} needs --data-dir (the dataset root).")
        if opt.scope not in SCOPES:
            raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {opt.scope!r}.")
        scope_patterns(cfg.model, opt.scope)
        for key in ("synthetic_train", "synthetic_val", "synthetic_size"):
            if getattr(opt, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(opt, key)}.")
        if opt.synthetic_seed < 0 or opt.aux_weight < 0:
            raise ConfigError("synthetic_seed and aux_weight must be >= 0.")
        for key in ("max_steps", "eval_images"):
            if getattr(opt, key) is not None and getattr(opt, key) < 1:
                raise ConfigError(f"{key} must be >= 1 when given, got {getattr(opt, key)}.")
        check_min_size(spec, input_size(cfg))  # from the config alone: before any data is generated or read
        if cls.name == "segmentation" and cfg.batch_size < 2 and cfg.epochs > 0:
            raise ConfigError("segmentation training needs batch_size >= 2 (BatchNorm in the ASPP pooling branch).")
        for key, default in CLASSIFICATION_ONLY.items():
            if getattr(cfg, key) != default:
                raise ConfigError(f"{key}={getattr(cfg, key)!r} is a classification setting; refconv {cls.command} "
                                  "does not use it. Remove it (start weights: --weights / --weights-backbone).")

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.options = _options(cfg)
        self.max_steps = self.options.max_steps

    # ---- data
    def build_data(self, info: DistInfo) -> list[str]:
        built = rank0_first(info, lambda: build_datasets(self.cfg))  # synthetic data is generated once
        self.train_ds, val, self.class_names, self.num_classes = built
        self.val_ds = val
        n = self.options.eval_images
        self.test_ds = Subset(val, range(min(n, len(val)))) if n is not None else val
        self.size = input_size(self.cfg)
        return []

    def data_name(self) -> str:
        return self.cfg.data

    def describe_data(self) -> str:
        return (f"{self.cfg.data} ({len(self.train_ds)} train / {len(self.test_ds)} val images, {self.num_classes} "
                f"classes, input {self.size[0]}x{self.size[1]})")


    # ---- model
    def build_model(self, *, ckpt: dict[str, Any] | None, reporter: Reporter) -> nn.Module:
        cfg = self.cfg
        if ckpt is not None:
            model = rebuild_model(ckpt)
            self.layout = ckpt.get("backbone_layout", "scratch")
            self.backbone = ckpt.get("backbone")
        else:
            model = _starting_model(cfg, self.num_classes, self.size)
            self.layout = model.refconv_backbone_layout
            self.backbone = model.refconv_backbone
        self.aux_loss = getattr(model, "aux_classifier", None) is not None
        self.deploy_params = _deploy_params(model)
        self.start_weights = cfg.weights or self.options.weights_backbone
        return model

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"arch": get_spec(self.cfg.model).name, "num_classes": self.num_classes,
                "classes": list(self.class_names), "image_size": list(self.size), "backbone_layout": self.layout,
                "aux_loss": self.aux_loss, "backbone": self.backbone}

    def run_facts(self) -> dict[str, Any]:
        """Where a registry backbone came from (``refconv.models.trunk.load_backbone``'s record, kept
        through checkpoints and runs started from them); nothing for the torchvision backbones."""
        return {"backbone": self.backbone} if self.backbone else {}

    @classmethod
    def fact_rows(cls, facts: dict[str, Any]) -> list[tuple[str, str]]:
        from ..models.trunk import describe

        return [("backbone", describe(facts["backbone"]))] if facts.get("backbone") else []

    # ---- training and evaluation
    @abstractmethod
    def losses(self, model: nn.Module, batch: Any, device: torch.device, channels_last: bool) -> tuple[dict, int]:
        """``({name: loss}, images)`` of one batch: the losses the step minimises the sum of."""

    def step(self, model: nn.Module, batch: Any, *, device: torch.device, amp: torch.dtype | None,
             channels_last: bool) -> StepOutput:
        with autocast(device, amp):
            losses, count = self.losses(model, batch, device, channels_last)
        return StepOutput(sum(v.float() for v in losses.values()), count)

    def evaluate(self, model: nn.Module, loader: Any, *, device: torch.device, amp: torch.dtype | None,
                 channels_last: bool) -> dict[str, Any]:
        return evaluate(model, self.name, loader, self.num_classes, device, amp=amp)

    def epoch_row(self, train: dict[str, Any], test: dict[str, Any] | None, ema_test: dict[str, Any] | None) -> dict:
        row = super().epoch_row(train, test, ema_test)
        return {k: v for k, v in row.items() if not isinstance(v, list)}  # per-class lists: in done.json only

    # ---- deployable outputs
    def sample(self, device: torch.device) -> Any:
        items = [self.val_ds[i] for i in range(min(4, len(self.val_ds)))]
        images = [im.to(device) for im, _ in items]
        return images if self.name == "detection" else torch.stack(images)

    def fold(self, model: nn.Module, sample: Any) -> tuple[nn.Module, dict[str, Any]]:
        """Fold into a freshly built *stock* model (``strict=True``); its raw outputs (and a detector's
        detections, tie-blind) are compared with the RefConv model's (:mod:`refconv.downstream.export`)."""
        from ..engine.artifacts import fold_model
        from .export import output_equivalence

        stock = rebuild_model({**self.checkpoint_meta(), "task": self.name})
        return fold_model(model, sample, into=stock, compare=lambda a, b, x: output_equivalence(a, b, self.name, x))

    def weights_meta(self, fold_report: dict[str, Any] | None) -> dict[str, Any]:
        spec = get_spec(self.cfg.model)
        meta = {"task": self.name, "arch": spec.name, "model": spec.name, **self.checkpoint_meta(),
                "method": self.cfg.method, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "format": "plain",
                "input": self.input_note}
        if fold_report is not None:
            meta["fold"] = fold_report
        return meta

    def export_onnx(self, model: nn.Module, path: Path, sample: Any) -> dict[str, Any]:
        from .export import export_onnx

        return export_onnx(model, self.name, path, sample[:1])


@register_task("detection")
class DetectionTask(_DownstreamTask):
    """SSD / SSDlite on VOC-format data: torchvision's detection losses, COCO mAP (``map_50`` picks best.pt)."""

    name = "detection"
    command = "detect"
    score = "map_50"
    collate_fn = staticmethod(detection_collate)
    input_note = "RGB in [0, 1], any size (the model resizes)"

    def losses(self, model: nn.Module, batch: Any, device: torch.device, channels_last: bool) -> tuple[dict, int]:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        wanted = []
        for t in targets:  # VOC "difficult" objects are not trained on (the VOC protocol)
            keep = ~t["difficult"] if "difficult" in t else torch.ones(len(t["labels"]), dtype=torch.bool)
            wanted.append({"boxes": t["boxes"][keep].to(device), "labels": t["labels"][keep].to(device)})
        return model(images, wanted), len(images)

    @classmethod
    def format_metrics(cls, m: dict[str, Any]) -> str:
        return f"mAP@0.5 {m['map_50']:.4f}  mAP {m['map']:.4f}"


@register_task("segmentation")
class SegmentationTask(_DownstreamTask):
    """DeepLabV3 / LR-ASPP / FCN on VOC- or Cityscapes-format data: per-pixel cross-entropy (plus the auxiliary
    head's, weighted), dataset-level mIoU (``miou`` picks best.pt)."""

    name = "segmentation"
    command = "segment"
    score = "miou"
    collate_fn = staticmethod(segmentation_collate)
    input_note = "RGB normalised with mean/std, (N, 3, H, W)"

    def losses(self, model: nn.Module, batch: Any, device: torch.device, channels_last: bool) -> tuple[dict, int]:
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        losses = {"out": F.cross_entropy(out["out"].float(), y, ignore_index=IGNORE_INDEX)}
        if "aux" in out and self.options.aux_weight > 0:
            aux = F.cross_entropy(out["aux"].float(), y, ignore_index=IGNORE_INDEX)
            losses["aux"] = self.options.aux_weight * aux
        return losses, x.shape[0]

    @classmethod
    def format_metrics(cls, m: dict[str, Any]) -> str:
        return f"mIoU {m['miou']:.4f}  pixel acc {m['pixel_acc']:.4f}"
