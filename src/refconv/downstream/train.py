"""Train, evaluate, fold and export detectors and segmenters with RefConv backbones: one run, one directory.

``run_downstream(DownstreamConfig(...))`` is what ``refconv detect`` / ``refconv segment`` call. Methods, as in
classification (see REFCONV.md, "The protocol"):

- ``baseline``: plain training from the given weights (typically ImageNet backbone weights);
- ``refconv``: convert the backbone (``scope="backbone"``) or every eligible conv (``"all"``), then train;
  the bases stay frozen, everything else trains;
- ``continue``: plain training with the same recipe (control);
- ``finetune``: plain training at ``lr * finetune_lr_mult`` (control).

The controls and ``refconv`` start from the same weights (``weights=`` a baseline run's checkpoint or
deployable file). A run directory holds::

    config.json                    the resolved DownstreamConfig
    metrics.jsonl                  one line per epoch: loss, mAP / mIoU, lr at the epoch's start, time
    checkpoints/last.pt, best.pt   full training state, written atomically (temp file + os.replace)
    folded.safetensors (+ .json)   refconv: the folded model, stock keys, loads strict=True into the stock
    model.safetensors (+ .json)    plain methods: the trained model
    model.onnx                     when onnx=True
    done.json                      the result, written last

After a ``refconv`` run the folded model is loaded ``strict=True`` into a freshly built stock model, and that
model's raw outputs and detections (or logits) are compared with the RefConv model's on validation images
and evaluated again; both numbers are in ``done.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..convert import (
    RefConvWarning,
    conversion_config,
    convert,
    refconv_layers,
    reparameterize,
)
from ..engine.checkpoint import atomic_copy, atomic_write, atomic_write_bytes
from ..engine.artifacts import fold_model
from ..engine.export import save_weights
from ..engine.rundir import RunDirLock, check_out_path
from ..errors import CheckpointError, ConfigError, DataError
from ..runlayout import CHECKPOINT_DIR, DONE_FILE, METRICS_FILE, checkpoint_path
from . import synthetic
from .cityscapes import CityscapesSegmentation
from .backbones import describe as describe_backbone
from .export import export_onnx, output_equivalence
from .metrics import DetectionMetric, SegmentationMetric
from .models import (
    DOWNSTREAM_FORMAT,
    build_model,
    get_spec,
    load_model_weights,
    scope_patterns,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionTrainTransform,
    SegmentationTransform,
    detection_collate,
    segmentation_collate,
)
from .voc import IGNORE_INDEX, VOCDetection, VOCSegmentation

__all__ = [
    "DATASETS",
    "METHODS",
    "DownstreamConfig",
    "DownstreamResult",
    "build_datasets",
    "evaluate",
    "fold_and_verify",
    "load_checkpoint",
    "model_from_checkpoint",
    "run_downstream",
    "save_checkpoint",
    "train_one_epoch",
]

_log = logging.getLogger(__name__)

METHODS = ("baseline", "refconv", "continue", "finetune")
DATASETS = ("synthetic", "synthetic-cityscapes", "voc", "cityscapes")
CHECKPOINT_VERSION = 1


@dataclass
class DownstreamConfig:
    """Everything a detection/segmentation run depends on (saved as ``config.json``).

    Attributes:
        task: ``"detection"`` or ``"segmentation"``.
        arch: a torchvision architecture (:func:`refconv.downstream.list_archs`).
        data: ``synthetic`` (Fashion-MNIST scenes in VOC format, generated on first use), ``synthetic-cityscapes``
            (the same in Cityscapes format; segmentation), ``voc`` or ``cityscapes``.
        data_dir: the dataset root (VOC: the ``VOC20xx`` directory); for synthetic data where to write it
            (default: a cache directory keyed by the generator settings).
        fashion_mnist_dir: where Fashion-MNIST's IDX files are, for synthetic data (default: the usual places).
        train_split / val_split: VOC ``ImageSets`` file names or Cityscapes split directories.
        classes: VOC object classes (default: ``classes.txt`` in the root, else VOC's 20).
        clip_boxes: clip out-of-image VOC boxes instead of refusing them.
        synthetic_train / synthetic_val / synthetic_size / synthetic_seed: synthetic data: image counts, canvas
            height (Cityscapes format: width = 2 * height) and generator seed.
        image_size: network input height (int); width = height, or 2 * height for Cityscapes data. Default:
            the synthetic canvas, else the architecture's default (Cityscapes: 512).
        method / scope / map_k / groups / max_group_size / init / include / exclude: see the module docstring
            and :func:`refconv.convert`; ``include`` replaces the scope's patterns when given.
        weights: whole-model starting weights (torchvision name or file, e.g. a baseline run's
            ``checkpoints/last.pt``); weights_backbone: ImageNet backbone weights (name or file); for the
            ``*_timm`` archs a pretrained registry name (``fmnist/mobilenetv3_small_100``) or classifier file.
        epochs, batch_size, lr, finetune_lr_mult, momentum, weight_decay, warmup_epochs: the recipe (SGD with
            momentum, linear warm-up then cosine to 0, per step). aux_weight: DeepLabV3/FCN auxiliary loss weight.
        max_steps: stop each epoch after this many steps (smoke tests); eval_images: evaluate on the first N
            validation images only.
        workers, seed, device: data loader processes, seed of everything, ``cpu`` / ``cuda`` / ``auto``.
        onnx: export ``model.onnx`` with an onnxruntime parity check.
        out: the run directory.
    """

    task: str = "detection"
    arch: str = "ssdlite320_mobilenet_v3_large"
    data: str = "synthetic"
    data_dir: str | None = None
    fashion_mnist_dir: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    classes: list[str] | None = None
    clip_boxes: bool = False
    synthetic_train: int = 256
    synthetic_val: int = 64
    synthetic_size: int = 96
    synthetic_seed: int = 0
    image_size: int | None = None
    method: str = "refconv"
    scope: str = "backbone"
    map_k: int = 3
    groups: int | None = None
    max_group_size: int | None = None
    init: str = "default"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    weights: str | None = None
    weights_backbone: str | None = None
    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.01
    finetune_lr_mult: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 0.0
    aux_weight: float = 0.5
    max_steps: int | None = None
    eval_images: int | None = None
    workers: int = 0
    seed: int = 0
    device: str = "cpu"
    onnx: bool = True
    out: str = "runs/downstream"

    def validate(self) -> DownstreamConfig:
        """Check values and cross-field rules; raise :class:`ConfigError` naming the field and the fix."""
        if self.task not in ("detection", "segmentation"):
            raise ConfigError(f"task must be 'detection' or 'segmentation', got {self.task!r}.")
        get_spec(self.arch, self.task)
        if self.data not in DATASETS:
            raise ConfigError(f"data must be one of {DATASETS}, got {self.data!r}.")
        if self.task == "detection" and self.data in ("cityscapes", "synthetic-cityscapes"):
            raise ConfigError("Cityscapes is a segmentation dataset here; detection takes --data voc or synthetic.")
        if self.data in ("voc", "cityscapes") and not self.data_dir:
            raise ConfigError(f"--data {self.data} needs --data-dir (the dataset root).")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}.")
        scope_patterns(self.arch, self.scope)
        for name in ("epochs", "synthetic_seed", "workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("batch_size", "synthetic_train", "synthetic_val", "synthetic_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.task == "segmentation" and self.batch_size < 2 and self.epochs > 0:
            raise ConfigError("segmentation training needs batch_size >= 2 (BatchNorm in the ASPP pooling branch).")
        for name in ("lr", "finetune_lr_mult"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("weight_decay and warmup_epochs must be >= 0 and momentum in [0, 1).")
        if self.init not in ("default", "zeros"):
            raise ConfigError(f"init must be 'default' or 'zeros', got {self.init!r}.")
        if self.max_steps is not None and self.max_steps < 1 or self.eval_images is not None and self.eval_images < 1:
            raise ConfigError("max_steps and eval_images must be >= 1 when given.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DownstreamConfig:
        """Build from a dict, refusing unknown keys (a typo must not be ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {sorted(names)}.")
        return cls(**data)


@dataclass
class DownstreamResult:
    """What a run produced (``done.json``)."""

    run_dir: Path
    task: str
    arch: str
    method: str
    final: dict[str, Any]
    best: dict[str, Any]
    history: list[dict[str, Any]]
    weights_path: Path | None
    checkpoint_path: Path
    fold: dict[str, Any] | None = None
    folded_metrics: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None
    trainable_params: int = 0
    deploy_params: int = 0
    wall_time_s: float = 0.0
    backbone: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("run_dir", "weights_path", "checkpoint_path"):
            d[k] = None if d[k] is None else str(d[k])
        return _json_safe(d)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- data
def _input_size(cfg: DownstreamConfig) -> tuple[int, int]:
    wide = cfg.data in ("cityscapes", "synthetic-cityscapes")
    if cfg.image_size is not None:
        h = cfg.image_size
    elif cfg.data.startswith("synthetic"):
        h = cfg.synthetic_size
    else:
        h = 512 if wide else get_spec(cfg.arch).default_size
    return (h, 2 * h) if wide else (h, h)


def _synthetic_root(cfg: DownstreamConfig) -> Path:
    wide = cfg.data == "synthetic-cityscapes"
    scfg = synthetic.SyntheticConfig(
        num_train=cfg.synthetic_train, num_val=cfg.synthetic_val, height=cfg.synthetic_size,
        width=2 * cfg.synthetic_size if wide else cfg.synthetic_size, seed=cfg.synthetic_seed,
        scale=(0.8, min(1.6, cfg.synthetic_size / 28)), objects=(1, 3 if not wide else 5),
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
    writer(root, scfg, data_dir=cfg.fashion_mnist_dir)
    return root


def build_datasets(cfg: DownstreamConfig) -> tuple[Dataset, Dataset, tuple[str, ...], int]:
    """``(train, val, class_names, num_classes)`` for the config's task and data, with transforms.

    ``class_names`` names every output of the model (background first for VOC).

    Raises:
        DataError: missing or malformed data (every problem listed).
    """
    size = _input_size(cfg)
    if cfg.data.startswith("synthetic"):
        root = _synthetic_root(cfg)
    else:
        root = Path(cfg.data_dir)
    if cfg.task == "detection":
        train = VOCDetection(root, cfg.train_split, classes=cfg.classes, clip_boxes=cfg.clip_boxes,
                             transforms=DetectionTrainTransform())
        val = VOCDetection(root, cfg.val_split, classes=cfg.classes, clip_boxes=cfg.clip_boxes)
        return train, val, ("background", *train.classes), train.num_classes
    train_t, val_t = SegmentationTransform(size, train=True), SegmentationTransform(size, train=False)
    if cfg.data in ("cityscapes", "synthetic-cityscapes"):
        train = CityscapesSegmentation(root, cfg.train_split, transforms=train_t)
        val = CityscapesSegmentation(root, cfg.val_split, transforms=val_t)
    else:
        train = VOCSegmentation(root, cfg.train_split, classes=cfg.classes, transforms=train_t)
        val = VOCSegmentation(root, cfg.val_split, classes=cfg.classes, transforms=val_t)
    return train, val, train.class_names, train.num_classes


def _loader(ds: Dataset, task: str, batch_size: int, *, train: bool, workers: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    collate = detection_collate if task == "detection" else segmentation_collate
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train and len(ds) > batch_size,
                      num_workers=workers, collate_fn=collate, generator=gen)


# --------------------------------------------------------------------------- loops
def _detection_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Training targets: boxes and labels, VOC "difficult" objects left out (as the VOC protocol does)."""
    out = []
    for t in targets:
        keep = ~t["difficult"] if "difficult" in t else torch.ones(len(t["labels"]), dtype=torch.bool)
        out.append({"boxes": t["boxes"][keep].to(device), "labels": t["labels"][keep].to(device)})
    return out


def train_one_epoch(
    model: nn.Module,
    task: str,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    *,
    aux_weight: float = 0.5,
    max_steps: int | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean loss (and its parts), steps and images.

    Raises:
        FloatingPointError: the loss became NaN/inf (lower the learning rate).
    """
    model.train()
    totals: dict[str, float] = {}
    steps = images = 0
    for batch_images, batch_targets in loader:
        if task == "detection":
            imgs = [im.to(device) for im in batch_images]
            losses = model(imgs, _detection_targets(batch_targets, device))
        else:
            x, y = batch_images.to(device), batch_targets.to(device)
            out = model(x)
            losses = {"seg": F.cross_entropy(out["out"], y, ignore_index=IGNORE_INDEX)}
            if "aux" in out and aux_weight > 0:
                losses["aux"] = aux_weight * F.cross_entropy(out["aux"], y, ignore_index=IGNORE_INDEX)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {float(loss)} at step {steps}: lower the learning rate (--lr) or add warm-up."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss = loss.detach()
        totals["loss"] = totals.get("loss", 0.0) + float(loss)
        for k, v in losses.items():
            totals[f"loss_{k}"] = totals.get(f"loss_{k}", 0.0) + float(v.detach())
        steps += 1
        images += len(batch_images)
        if max_steps is not None and steps >= max_steps:
            break
    return {**{k: v / max(steps, 1) for k, v in totals.items()}, "steps": steps, "images": images}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: str,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    *,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Detection: COCO mAP, mAP@0.5, mAP@0.75, AR@100. Segmentation: mIoU, pixel accuracy, per-class IoU,
    computed at each mask's full resolution (logits upsampled bilinearly)."""
    model.eval()
    metric: DetectionMetric | SegmentationMetric
    metric = DetectionMetric() if task == "detection" else SegmentationMetric(num_classes)
    seen = 0
    for batch_images, batch_targets in loader:
        if max_images is not None and seen >= max_images:
            break
        if task == "detection":
            preds = model([im.to(device) for im in batch_images])
            metric.update(preds, batch_targets)
        else:
            logits = model(batch_images.to(device))["out"]
            masks = batch_targets if isinstance(batch_targets, list) else list(batch_targets)
            for lg, mask in zip(logits, masks):
                if lg.shape[-2:] != mask.shape[-2:]:
                    lg = F.interpolate(lg[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[0]
                metric.update(lg.argmax(0), mask)
        seen += len(batch_images)
    return {**metric.compute(), "images": seen}


def _primary(task: str) -> str:
    return "map_50" if task == "detection" else "miou"


# --------------------------------------------------------------------------- optimisation
def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)  # no decay on biases and norm parameters
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, model: nn.Module, cfg: DownstreamConfig, meta: dict[str, Any],
                    **state: Any) -> Path:
    """Write a downstream checkpoint atomically (temp file in the same directory, fsync, ``os.replace``).

    It holds only tensors and plain values (``torch.load(weights_only=True)`` reads it) and enough to rebuild
    the model without the data: task, architecture, class names and count, input size, backbone layout,
    auxiliary head, and the per-layer RefConv conversion record.
    """
    layers = conversion_config(model)
    ckpt = {
        "format": DOWNSTREAM_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "task": cfg.task,
        "arch": get_spec(cfg.arch).name,
        **meta,
        "method": cfg.method,
        "conversion": {"layers": layers} if layers else None,
        "config": cfg.to_dict(),
        "state_dict": model.state_dict(),
        **state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | Path, *, task: str | None = None) -> dict[str, Any]:
    """Load a ``refconv detect``/``segment`` checkpoint, refusing one of another task or kind.

    Raises:
        CheckpointError: missing/corrupt file, a classification checkpoint, or one of the other task.
    """
    path = Path(path)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}).") from None
    if not isinstance(obj, dict) or obj.get("format") != DOWNSTREAM_FORMAT:
        kind = "an image-classification run checkpoint" if isinstance(obj, dict) and obj.get("format") == "refconv-run" \
            else "not a refconv detect/segment checkpoint"
        raise CheckpointError(
            f"{path} is {kind}. Detection/segmentation runs resume from and rebuild their own checkpoints; an "
            "ImageNet classifier goes to --weights-backbone."
        )
    if task is not None and obj.get("task") != task:
        cmd = "detect" if obj.get("task") == "detection" else "segment"
        raise CheckpointError(
            f"{path} is a {obj.get('task')} checkpoint ({obj.get('arch')}), not a {task} one: use `refconv {cmd}`."
        )
    return obj


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint holds (RefConv layers re-created from the record), weights loaded strictly."""
    from ..engine.modeling import rebuild_converted

    spec = get_spec(ckpt["arch"], ckpt["task"])
    model = build_model(spec.name, int(ckpt["num_classes"]), task=spec.task, aux_loss=ckpt.get("aux_loss"),
                        pretrained_layout=ckpt.get("backbone_layout") == "pretrained")
    if ckpt.get("image_size"):
        from .models import set_image_size

        set_image_size(model, tuple(ckpt["image_size"]))
    if ckpt.get("conversion"):
        rebuild_converted(model, ckpt["conversion"]["layers"])
    load_model_weights(model, spec, ckpt["state_dict"], source=f"{spec.task} checkpoint", new_head=False)
    return model.eval()


# --------------------------------------------------------------------------- fold
def _sample(val: Dataset, task: str, n: int = 4) -> Any:
    items = [val[i] for i in range(min(n, len(val)))]
    images = [im for im, _ in items]
    return images if task == "detection" else torch.stack(images)


def fold_and_verify(
    model: nn.Module, cfg: DownstreamConfig, meta: dict[str, Any], sample: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Fold a RefConv model into a freshly built *stock* model (``strict=True``) and check its outputs.

    Returns:
        ``(stock_model, report)``; ``report`` holds ``max_abs_err``/``rel_err`` of the raw outputs and, for
        detection, the tie-blind comparison of detections (see :mod:`refconv.downstream.export`).

    Raises:
        ConversionError: the folded model's raw outputs differ by more than
            :data:`refconv.engine.artifacts.FOLD_REL_TOL` relative (the engine's one fold-and-verify).
    """
    from .models import set_image_size

    stock = build_model(cfg.arch, meta["num_classes"], task=cfg.task, aux_loss=meta.get("aux_loss"),
                        pretrained_layout=meta.get("backbone_layout") == "pretrained")
    set_image_size(stock, tuple(meta["image_size"]))
    return fold_model(model, sample, into=stock, compare=lambda a, b, x: output_equivalence(a, b, cfg.task, x))


# --------------------------------------------------------------------------- the run
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but CUDA is not available; use --device cpu.")
    return torch.device(name)


def _count(model: nn.Module) -> tuple[int, int]:
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _groups_spec(cfg: DownstreamConfig) -> Any:
    if cfg.max_group_size is None:
        return cfg.groups
    from ..engine.modeling import groups_spec

    return groups_spec(cfg.groups, cfg.max_group_size)


def _prepare_model(cfg: DownstreamConfig, num_classes: int, size: tuple[int, int]) -> nn.Module:
    model = build_model(cfg.arch, num_classes, task=cfg.task, weights=cfg.weights,
                        weights_backbone=cfg.weights_backbone, image_size=size)
    layout = model.refconv_backbone_layout
    has_refconv = bool(refconv_layers(model))
    if cfg.method == "refconv":
        if not has_refconv:
            if cfg.weights is None and cfg.weights_backbone is None:
                warnings.warn(
                    "refconv from random weights: RefConv refocuses a *pretrained* basis, which stays frozen. Pass "
                    "--weights-backbone (ImageNet) or --weights (a baseline run) for a meaningful run.",
                    RefConvWarning, stacklevel=3,
                )
            convert(model, map_k=cfg.map_k, groups=_groups_spec(cfg), init=cfg.init,
                    include=cfg.include or scope_patterns(cfg.arch, cfg.scope), exclude=cfg.exclude or None)
    elif has_refconv:
        warnings.warn(f"--weights {cfg.weights} is a RefConv checkpoint; folded before {cfg.method} training.",
                      RefConvWarning, stacklevel=3)
        model = reparameterize(model)
    model.refconv_backbone_layout = layout
    return model


def run_downstream(
    config: DownstreamConfig | dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> DownstreamResult:
    """Train, evaluate, fold (``refconv``), export; see the module docstring for the run directory.

    Args:
        config: the run's settings.
        resume: continue the run in ``config.out`` from ``checkpoints/last.pt`` (its saved config is used;
            only ``epochs`` may grow, which stretches the cosine schedule over the new total).
        overwrite: start over in a directory that holds a finished or different run.
        log: where progress lines go (default: the module logger).

    Raises:
        ConfigError, DataError, ModelError, CheckpointError: bad settings, data, weights or checkpoints.
        RunDirBusyError: another process is writing to ``config.out`` (one owner per run directory).
    """
    out = config.get("out") if isinstance(config, dict) else config.out
    if not out:
        return _run_downstream(config, resume=resume, overwrite=overwrite, log=log)  # validation names the problem
    check_out_path(Path(out))
    with RunDirLock(out):
        return _run_downstream(config, resume=resume, overwrite=overwrite, log=log)


def _run_downstream(config: DownstreamConfig | dict[str, Any], *, resume: bool, overwrite: bool,
                    log: Callable[[str], None] | None) -> DownstreamResult:
    t0 = time.perf_counter()
    say = log or _log.info
    cfg = DownstreamConfig.from_dict(config) if isinstance(config, dict) else copy.deepcopy(config)
    run_dir = Path(cfg.out)
    check_out_path(run_dir)  # --out naming a file: one line, not FileExistsError from mkdir
    last_path = checkpoint_path(run_dir)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(last_path, task=cfg.task)
        saved = DownstreamConfig.from_dict(ckpt["config"])
        saved.epochs = max(saved.epochs, cfg.epochs)
        saved.out = cfg.out
        cfg = saved
    cfg.validate()
    if not (resume or overwrite) and ((run_dir / DONE_FILE).is_file() or last_path.is_file()):
        raise CheckpointError(
            f"{run_dir} already holds a run. Pass resume=True (--resume) to continue it, overwrite=True "
            "(--overwrite) to start over, or another output directory."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = [DONE_FILE] if resume else [DONE_FILE, METRICS_FILE, f"{CHECKPOINT_DIR}/last.pt",
                                         f"{CHECKPOINT_DIR}/best.pt", "folded.safetensors", "folded.json",
                                         "model.safetensors", "model.json", "model.onnx"]
    for name in stale:  # a new run never leaves another run's files beside its own
        (run_dir / name).unlink(missing_ok=True)
    atomic_write_bytes(run_dir / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    _seed_everything(cfg.seed)
    device = _device(cfg.device)

    train_ds, val_ds, class_names, num_classes = build_datasets(cfg)
    size = _input_size(cfg)
    if ckpt is not None:
        model = model_from_checkpoint(ckpt)
    else:
        model = _prepare_model(cfg, num_classes, size)
    layout = getattr(model, "refconv_backbone_layout", "scratch")
    backbone = ckpt.get("backbone") if ckpt is not None else getattr(model, "refconv_backbone", None)
    spec = get_spec(cfg.arch)
    meta = {"num_classes": num_classes, "classes": list(class_names), "image_size": list(size),
            "backbone_layout": layout, "aux_loss": bool(getattr(model, "aux_classifier", None) is not None),
            "backbone": backbone}
    model.to(device)
    trainable, _ = _count(model)
    say(f"{cfg.method} {spec.name} on {cfg.data} ({len(train_ds)} train / {len(val_ds)} val images, "
        f"{num_classes} classes, input {size[0]}x{size[1]}): {len(refconv_layers(model))} RefConv layers, "
        f"{trainable:,} trainable parameters" + (f"; {describe_backbone(backbone)}" if backbone else ""))

    lr = cfg.lr * (cfg.finetune_lr_mult if cfg.method == "finetune" else 1.0)
    train_loader = _loader(train_ds, cfg.task, cfg.batch_size, train=True, workers=cfg.workers, seed=cfg.seed)
    val_loader = _loader(val_ds, cfg.task, cfg.batch_size, train=False, workers=cfg.workers, seed=cfg.seed)
    steps_per_epoch = len(train_loader) if cfg.max_steps is None else min(len(train_loader), cfg.max_steps)
    optimizer = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(max(1, cfg.epochs * steps_per_epoch), int(cfg.warmup_epochs * steps_per_epoch))
    )
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    start_epoch = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, best, start_epoch = list(ckpt.get("history", [])), dict(ckpt.get("best") or {}), int(ckpt["epoch"])
        torch.set_rng_state(ckpt["rng"])

    key = _primary(cfg.task)
    last_eval: dict[str, Any] | None = None
    for epoch in range(start_epoch, cfg.epochs):
        t_ep = time.perf_counter()
        lr_start = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(model, cfg.task, train_loader, optimizer, scheduler, device,
                                aux_weight=cfg.aux_weight, max_steps=cfg.max_steps)
        last_eval = evaluate(model, cfg.task, val_loader, num_classes, device, max_images=cfg.eval_images)
        row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()},
               **{k: v for k, v in last_eval.items() if k != "iou_per_class"},
               "lr": lr_start, "seconds": time.perf_counter() - t_ep}
        history.append(row)
        improved = not best or (row.get(key) is not None and not math.isnan(row[key]) and row[key] > best.get(key, -1))
        if improved:
            best = {"epoch": epoch + 1, key: row[key]}
        path = save_checkpoint(last_path, model, cfg, meta, epoch=epoch + 1, optimizer=optimizer.state_dict(),
                               scheduler=scheduler.state_dict(), history=history, best=best,
                               rng=torch.get_rng_state())
        if improved:
            atomic_copy(path, checkpoint_path(run_dir, "best"))
        atomic_write_bytes(run_dir / METRICS_FILE,
                           "".join(json.dumps(_json_safe(r)) + "\n" for r in history).encode())
        say(f"epoch {epoch + 1}/{cfg.epochs}: loss {train['loss']:.4f} | {key} {row[key]:.4f} | {row['seconds']:.1f}s")
    if ckpt is None and cfg.epochs == 0:  # evaluate / fold / export the starting model
        save_checkpoint(last_path, model, cfg, meta, epoch=0, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), history=history, best=best, rng=torch.get_rng_state())
    final = last_eval or evaluate(model, cfg.task, val_loader, num_classes, device, max_images=cfg.eval_images)

    # ---- deployable outputs
    sample = _sample(val_ds, cfg.task)
    sample = [s.to(device) for s in sample] if cfg.task == "detection" else sample.to(device)
    sidecar = {"task": cfg.task, "arch": spec.name, "model": spec.name, **meta, "method": cfg.method,
               "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "format": "plain",
               "input": "RGB in [0, 1], any size (the model resizes)" if cfg.task == "detection"
               else "RGB normalised with mean/std, (N, 3, H, W)"}
    fold_report = folded_metrics = None
    if refconv_layers(model):
        plain, fold_report = fold_and_verify(model, cfg, meta, sample)
        folded_metrics = evaluate(plain, cfg.task, val_loader, num_classes, device, max_images=cfg.eval_images)
        weights_path = run_dir / "folded.safetensors"
        sidecar["fold"] = _json_safe(fold_report)
        say(f"folded {len(refconv_layers(model))} RefConv layers: raw outputs max abs err "
            f"{fold_report['max_abs_err']:.3g} ({fold_report['rel_err']:.2g} relative); folded {key} "
            f"{folded_metrics[key]:.4f} vs {final[key]:.4f}")
    else:
        plain = model.eval()
        weights_path = run_dir / "model.safetensors"
    save_weights(plain, weights_path, _json_safe(sidecar))
    onnx_info = export_onnx(plain, cfg.task, run_dir / "model.onnx", sample[:1]) if cfg.onnx else None
    result = DownstreamResult(
        run_dir=run_dir, task=cfg.task, arch=spec.name, method=cfg.method,
        final={"epoch": cfg.epochs, **final}, best=best, history=history, weights_path=weights_path,
        checkpoint_path=last_path, fold=fold_report, folded_metrics=folded_metrics, onnx=onnx_info,
        trainable_params=trainable, deploy_params=_count(plain)[1], wall_time_s=time.perf_counter() - t0,
        backbone=backbone,
    )
    atomic_write_bytes(run_dir / DONE_FILE, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    return result
