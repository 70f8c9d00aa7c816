"""Detectors and segmenters of the one model API (``get_model("ssdlite", num_classes=21)``): torchvision's, and
torchvision heads on a timm trunk (:mod:`refconv.models.trunk`), with weights from the hub or a local file,
and RefConv scopes. Each architecture is registered in :mod:`refconv.models._registry` with its :class:`ArchSpec`.

Supported (torchvision builders, their own code and state_dict keys)::

    detection:     ssdlite320_mobilenet_v3_large, ssd300_vgg16
    segmentation:  deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, lraspp_mobilenet_v3_large, fcn_resnet50

Weights, never loaded silently:

- ``weights_backbone``: ImageNet weights of the backbone classifier. A torchvision enum name
  (``"IMAGENET1K_V1"``, ``"DEFAULT"``; downloaded by torchvision) or a local file of the *classification*
  model (``mobilenet_v3_large`` / ``resnet50`` / ``vgg16``): a ``.pth``/``.safetensors``, a timm/torchvision
  checkpoint, or a finished ``refconv train`` run directory (its folded weights; a run on 1-channel
  Fashion-MNIST has its stem adapted to RGB). A local file builds the variant torchvision builds for its own
  download (SSDlite's full MobileNetV3 tail) and fills its trunk (:func:`refconv.models.trunk.load_backbone_file`); the classifier
  is dropped, every other key must match.
- ``weights``: weights of the whole detector/segmenter: an enum name (``"COCO_V1"``...) or a local file
  (a stock state_dict, or a ``refconv detect``/``segment`` checkpoint of the same task and architecture).
  When the class count differs, the class-dependent layers of the head (``ArchSpec.heads``) are
  re-initialised and reported; any other difference is an error.

Scopes: ``"backbone"`` converts the ImageNet-pretrained trunk only (RefConv refocuses a *pretrained* basis,
and the heads and SSD's extra layers start random); ``"all"`` converts every eligible convolution.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..convert import state_dict_format
from ..errors import CheckpointError, ConfigError, ModelError
from ._registry import register_model
from .checkpoint import load_checkpoint, rebuild_converted
from .trunk import load_backbone_file, ssdlite_on
from .weights import DOWNSTREAM_FORMAT, read_weights

__all__ = [
    "ARCHS",
    "DOWNSTREAM_FORMAT",
    "SCOPES",
    "TASKS",
    "ArchSpec",
    "build_model",
    "check_image_size",
    "check_min_size",
    "get_spec",
    "list_archs",
    "load_model_weights",
    "read_weights",
    "scope_patterns",
    "set_image_size",
]

_log = logging.getLogger(__name__)

TASKS = ("detection", "segmentation")
SCOPES = ("backbone", "all")


@dataclass(frozen=True)
class ArchSpec:
    """What refconv needs to know about one torchvision architecture.

    Attributes:
        name: the torchvision builder's name.
        task: ``"detection"`` or ``"segmentation"``.
        backbone: include patterns of the ImageNet-pretrained trunk (``scope="backbone"``).
        heads: modules whose tensors depend on the class count (re-initialised for another one).
        default_size: input size torchvision's weights were trained at.
        min_size: smallest square input the network accepts (SSD300's extra layers need 268 px).
        backbone_ctor: ``(module, attribute)`` of the classification constructor the builder calls; a local
            backbone file is loaded by wrapping it.
        backbone_weights: the torchvision enum member of the backbone's ImageNet weights (its builder branch
            is taken for local files too).
        aux: the builder has an ``aux_loss`` auxiliary head.
        timm_trunk: the heads sit on this timm classifier's ``features_only`` trunk, whose weights come from
            this project's pretrained registry (:mod:`refconv.models.trunk`) instead of torchvision.
    """

    name: str
    task: str
    backbone: tuple[str, ...]
    heads: tuple[str, ...]
    default_size: int
    min_size: int
    backbone_ctor: tuple[str, str] = ("", "")
    backbone_weights: str = ""
    aux: bool = False
    timm_trunk: str | None = None

    def builder(self) -> Callable[..., nn.Module]:
        if self.timm_trunk is not None:
            from .trunk import build_timm_model

            return lambda num_classes, **_: build_timm_model(self.name, num_classes, self.timm_trunk)
        import torchvision.models.detection as det
        import torchvision.models.segmentation as seg

        return getattr(det if self.task == "detection" else seg, self.name)


ARCHS: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        ArchSpec(
            "ssdlite320_mobilenet_v3_large", "detection", ("backbone.features",), ("head.classification_head",),
            320, 32, ("torchvision.models.detection.ssdlite", "mobilenet_v3_large"), "IMAGENET1K_V1",
        ),
        ArchSpec(
            "ssd300_vgg16", "detection",
            # conv1_1..conv4_3 and conv5_1..conv5_3 (VGG's own layers; fc6/fc7 and the extras start random)
            ("backbone.features", "backbone.extra.0.1", "backbone.extra.0.3", "backbone.extra.0.5"),
            ("head.classification_head",), 300, 268, ("torchvision.models.detection.ssd", "vgg16"),
            "IMAGENET1K_FEATURES",
        ),
        ArchSpec(
            "deeplabv3_mobilenet_v3_large", "segmentation", ("backbone",), ("classifier.4", "aux_classifier.4"),
            520, 32, ("torchvision.models.segmentation.deeplabv3", "mobilenet_v3_large"), "IMAGENET1K_V1", aux=True,
        ),
        ArchSpec(
            "deeplabv3_resnet50", "segmentation", ("backbone",), ("classifier.4", "aux_classifier.4"),
            520, 32, ("torchvision.models.segmentation.deeplabv3", "resnet50"), "IMAGENET1K_V1", aux=True,
        ),
        ArchSpec(
            "lraspp_mobilenet_v3_large", "segmentation", ("backbone",),
            ("classifier.low_classifier", "classifier.high_classifier"),
            520, 32, ("torchvision.models.segmentation.lraspp", "mobilenet_v3_large"), "IMAGENET1K_V1",
        ),
        ArchSpec(
            "fcn_resnet50", "segmentation", ("backbone",), ("classifier.4", "aux_classifier.4"),
            520, 32, ("torchvision.models.segmentation.fcn", "resnet50"), "IMAGENET1K_V1", aux=True,
        ),
        # heads on a registry classifier's trunk (fmnist/mobilenetv3_small_100); see refconv/models/trunk.py
        ArchSpec("ssdlite_timm", "detection", ("backbone.trunk.body",), ("head.classification_head",), 320, 32,
                 timm_trunk="mobilenetv3_small_100"),
        ArchSpec("deeplabv3_timm", "segmentation", ("backbone.trunk.body",), ("classifier.4",), 520, 32,
                 timm_trunk="mobilenetv3_small_100"),
        ArchSpec("lraspp_timm", "segmentation", ("backbone.trunk.body",),
                 ("classifier.low_classifier", "classifier.high_classifier"), 520, 32,
                 timm_trunk="mobilenetv3_small_100"),
    )
}
_ALIASES = {
    "ssdlite": "ssdlite320_mobilenet_v3_large",
    "ssd300": "ssd300_vgg16",
    "deeplabv3": "deeplabv3_mobilenet_v3_large",
    "lraspp": "lraspp_mobilenet_v3_large",
    "fcn": "fcn_resnet50",
}


def list_archs(task: str | None = None) -> list[str]:
    """Supported architecture names, of one task or all."""
    return [n for n, s in ARCHS.items() if task is None or s.task == task]


def get_spec(arch: str, task: str | None = None) -> ArchSpec:
    """The :class:`ArchSpec` of ``arch`` (or a short alias: ssdlite, ssd300, deeplabv3, lraspp, fcn).

    Raises:
        ModelError: unknown name, or an architecture of the other task.
    """
    name = _ALIASES.get(arch, arch)
    name = name.removeprefix("tv/")
    spec = ARCHS.get(name)
    if spec is None:
        raise ModelError(
            f"unknown architecture {arch!r}. Supported: {', '.join(list_archs(task))}"
            + (f" (aliases: {', '.join(k for k, v in _ALIASES.items() if ARCHS[v].task == task)})." if task else ".")
        )
    if task is not None and spec.task != task:
        raise ModelError(
            f"{spec.name} is a {spec.task} model, not a {task} one. {task.capitalize()} architectures: "
            f"{', '.join(list_archs(task))}."
        )
    return spec


def scope_patterns(arch: str, scope: str) -> list[str] | None:
    """Include patterns for :func:`refconv.convert`: the pretrained trunk (``"backbone"``) or ``None`` (``"all"``).

    Raises:
        ConfigError: an unknown scope.
    """
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}.")
    return list(get_spec(arch).backbone) if scope == "backbone" else None


# --------------------------------------------------------------------------- weights files
def _is_path_like(value: str) -> bool:
    return os.sep in value or "/" in value or Path(value).suffix != "" or Path(value).exists()


def _describe(info: Mapping[str, Any]) -> str | None:
    """A name for a checkpoint of another kind than the model asks for, or None when it may fit."""
    fmt = info.get("format")
    if fmt == DOWNSTREAM_FORMAT or info.get("task") in TASKS:
        return f"a {info.get('task')} checkpoint of {info.get('arch')}"
    if fmt == "refconv-run" or (info.get("model") and "task" not in info):
        return f"an image-classification checkpoint ({info.get('arch') or info.get('model') or 'unknown model'})"
    return None


def _enum_member(spec: ArchSpec, name: str, *, backbone: bool) -> Any:
    from torchvision.models import get_model_weights

    if backbone:
        enum = get_model_weights(spec.backbone_ctor[1])
    else:
        enum = get_model_weights(spec.name)
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        what = "backbone" if backbone else "model"
        raise ModelError(
            f"{name!r} is neither a file nor a torchvision {what} weights name for {spec.name}; names: {choices}."
        ) from None


def load_model_weights(
    model: nn.Module, spec: ArchSpec, state: Mapping[str, Tensor], *, source: str, new_head: bool = True
) -> list[str]:
    """Load a full-model state_dict: :func:`~refconv.models.load_checkpoint` with the class-dependent layers of
    ``spec.heads`` as the head (re-initialised when the class count differs and ``new_head``).

    Returns:
        The keys left at their fresh initialisation.

    Raises:
        CheckpointError: shape mismatches outside the head, missing or unexpected keys, a RefConv checkpoint
            for a plain model or the reverse, weights of another model.
    """
    return load_checkpoint(model, state, source=source, strict=True, new_head=new_head, heads=spec.heads,
                           hint="An ImageNet classifier's weights go to weights_backbone (--weights-backbone), not "
                                "weights.")


# --------------------------------------------------------------------------- sizes
def set_image_size(model: nn.Module, size: tuple[int, int]) -> None:
    """Make a detector resize every input to ``size`` ``(h, w)`` (its ``GeneralizedRCNNTransform``).

    SSD's transform has a fixed size (320 or 300); small inputs make tiny-data runs fast. Segmenters take any
    size and need nothing.
    """
    transform = getattr(model, "transform", None)
    if transform is None:
        return
    h, w = int(size[0]), int(size[1])
    transform.min_size = (min(h, w),)
    transform.max_size = max(h, w)
    transform.fixed_size = (w, h)  # torchvision's fixed_size is (width, height)


def check_min_size(spec: ArchSpec, size: tuple[int, int]) -> None:
    """Raise a :class:`~refconv.errors.ConfigError` when ``size`` is below the architecture's minimum (no model
    needed, so a config is refused before any data is generated or read)."""
    if min(size) < spec.min_size:
        raise ConfigError(
            f"image size {size[0]}x{size[1]} is too small for {spec.name} (at least {spec.min_size} px; its default "
            f"is {spec.default_size})."
        )


@torch.no_grad()
def check_image_size(model: nn.Module, spec: ArchSpec, size: tuple[int, int]) -> None:
    """Raise a :class:`~refconv.errors.ConfigError` when the network cannot run at ``size`` (a dry run)."""
    check_min_size(spec, size)
    was = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, *size, device=next(model.parameters()).device)
        model(list(x)) if spec.task == "detection" else model(x)
    except RuntimeError as exc:
        raise ConfigError(
            f"{spec.name} cannot run at {size[0]}x{size[1]} ({str(exc).splitlines()[0]}). Use a larger --image-size "
            f"(default {spec.default_size})."
        ) from None
    finally:
        model.train(was)


# --------------------------------------------------------------------------- building
def _build_on_trunk(
    spec: ArchSpec, num_classes: int, weights_backbone: str | os.PathLike | None
) -> tuple[nn.Module, str, dict[str, Any] | None]:
    """A timm-trunk architecture, with a registry classifier (or a classifier file) loaded into its trunk."""
    from .trunk import build_timm_model, load_backbone

    model = build_timm_model(spec.name, num_classes, spec.timm_trunk)
    if weights_backbone is None:
        return model, "scratch", None
    wb = str(weights_backbone)
    if not _is_path_like(wb):
        raise ModelError(
            f"{spec.name} takes its backbone from this project's pretrained registry or a classifier file, not a "
            f"torchvision weights name ({wb!r}): e.g. --weights-backbone fmnist/{spec.timm_trunk} "
            "(`refconv pretrained`)."
        )
    info = load_backbone(model, wb, spec.timm_trunk)
    _log.info("%s: loaded %d/%d trunk tensors from %s", spec.name, info["loaded"], info["trunk_tensors"], wb)
    return model, "pretrained", info


def _ssdlite_full_tail(num_classes: int, trainable_backbone_layers: int = 6, **kwargs: Any) -> nn.Module:
    """SSDlite320-MobileNetV3-Large as torchvision builds it for ImageNet backbone weights (the full MobileNetV3
    tail, the backbone's default init), without fetching them: what a local backbone file loads into."""
    from torchvision.models.detection.ssdlite import _mobilenet_extractor
    from torchvision.models.mobilenetv3 import mobilenet_v3_large

    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = _mobilenet_extractor(mobilenet_v3_large(norm_layer=norm, reduced_tail=False),
                                    trainable_backbone_layers, norm)
    defaults = {"detections_per_img": 300, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    return ssdlite_on(backbone, 6, num_classes, **{**defaults, **kwargs})


def _stock(spec: ArchSpec, kwargs: dict[str, Any], *, backbone: Any, pretrained_layout: bool) -> nn.Module:
    """torchvision's model: with its backbone weights enum ``backbone`` (downloaded by torchvision), else the
    variant its builder makes for backbone weights (``pretrained_layout``) or from scratch, random."""
    if backbone is None and pretrained_layout and spec.name == "ssdlite320_mobilenet_v3_large":
        return _ssdlite_full_tail(**kwargs)  # the only builder whose layout depends on the backbone weights
    return spec.builder()(weights=None, weights_backbone=backbone, **kwargs)


def _build_torchvision(spec: ArchSpec, kwargs: dict[str, Any], weights_backbone: str | os.PathLike | None,
                       pretrained_layout: bool | None) -> tuple[nn.Module, str]:
    """A torchvision detector / segmenter with its backbone weights: an enum name, a classifier file, or none."""
    if weights_backbone is None:
        model = _stock(spec, kwargs, backbone=None, pretrained_layout=bool(pretrained_layout))
        return model, "pretrained" if pretrained_layout else "scratch"
    wb = str(weights_backbone)
    if not _is_path_like(wb):
        return _stock(spec, kwargs, backbone=_enum_member(spec, wb, backbone=True), pretrained_layout=True), "pretrained"
    bstate, info = read_weights(wb)
    other = _describe(info)
    if other and "classification" not in other:
        raise CheckpointError(f"{wb} is {other}, not ImageNet backbone weights; pass it as --weights (weights=...).")
    if state_dict_format(bstate) == "refconv":
        raise CheckpointError(
            f"{wb} is a RefConv (unfolded) classification checkpoint: fold it first (`refconv fold`) and pass the "
            "folded .safetensors (or the finished run directory)."
        )
    model = _stock(spec, kwargs, backbone=None, pretrained_layout=True)
    load_backbone_file(model, spec.backbone_ctor[1], spec.backbone, wb)
    return model, "pretrained"


def _full_weights(spec: ArchSpec, weights: str, aux_loss: bool | None,
                  pretrained_layout: bool | None) -> tuple[dict[str, Tensor], dict[str, Any], str, bool | None, bool | None]:
    """``(state, info, source, aux_loss, pretrained_layout)`` of whole-model weights: a file or an enum name."""
    info: dict[str, Any] = {}
    if _is_path_like(weights):
        state, info = read_weights(weights)
        other = _describe(info)
        if other and (info.get("task") != spec.task or info.get("arch") not in (None, spec.name)):
            raise CheckpointError(
                f"{weights} is {other}, not {spec.task} weights of {spec.name}. "
                + ("Pass an ImageNet classifier as --weights-backbone." if "classification" in other else
                   f"Use {info.get('arch')} with `refconv {'detect' if info.get('task') == 'detection' else 'segment'}`.")
            )
        if info.get("backbone_layout") is not None and pretrained_layout is None:
            pretrained_layout = bool(info["backbone_layout"] == "pretrained")
        source = weights
    else:
        member = _enum_member(spec, weights, backbone=False)
        state = dict(member.get_state_dict(progress=True, check_hash=True))
        source = f"torchvision {spec.name} {member.name}"
    if aux_loss is None and spec.aux:
        aux_loss = any(k.startswith("aux_classifier.") for k in state)
    return state, info, source, aux_loss, pretrained_layout


def _load_full(model: nn.Module, spec: ArchSpec, state: dict[str, Tensor], info: dict[str, Any], source: str,
               from_file: bool) -> None:
    if state_dict_format(state) == "refconv":
        conversion = (info.get("conversion") or {}).get("layers") if from_file else None
        if not conversion:
            raise CheckpointError(
                f"{source} holds RefConv (unfolded) weights without the conversion record needed to rebuild "
                "the RefConv model; pass the refconv detect/segment checkpoint itself, or folded weights."
            )
        rebuild_converted(model, conversion)
    load_model_weights(model, spec, state, source=source)


def build_model(
    arch: str,
    num_classes: int,
    *,
    task: str | None = None,
    weights: str | os.PathLike | None = None,
    weights_backbone: str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    aux_loss: bool | None = None,
    pretrained_layout: bool | None = None,
) -> nn.Module:
    """Build a torchvision detector/segmenter with ``num_classes`` outputs (background included).

    Args:
        arch: a name of :data:`ARCHS` or an alias.
        num_classes: classes including background (VOC: 21; Cityscapes: 19, no background).
        task: when given, ``arch`` must be of this task.
        weights: whole-model weights (enum name or file; see the module docstring).
        weights_backbone: ImageNet backbone weights (enum name or file). Ignored when ``weights`` is given.
        image_size: input size (int: square); sets a detector's resize and dry-runs the network.
        aux_loss: build the auxiliary head (DeepLabV3/FCN). ``None``: when ``weights`` has one.
        pretrained_layout: build torchvision's "pretrained backbone" variant without loading anything (used to
            rebuild a checkpoint of a run that started from backbone weights). ``None``: follow
            ``weights_backbone``.

    Raises:
        ModelError: unknown architecture or weights name, a backbone file that does not fit.
        CheckpointError: a weights file that does not fit, or of another task.
        ConfigError: an image size the network cannot run at.
    """
    spec = get_spec(arch, task)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}.")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if spec.task == "detection":
        kwargs["trainable_backbone_layers"] = 6 if spec.name.startswith("ssdlite") else 5  # train everything
    full = None
    if weights is not None:
        full = _full_weights(spec, str(weights), aux_loss, pretrained_layout)
        aux_loss, pretrained_layout, weights_backbone = full[3], full[4], None
    if spec.aux:
        kwargs["aux_loss"] = bool(aux_loss)
    elif aux_loss:
        raise ConfigError(f"{spec.name} has no auxiliary head; aux_loss must be off.")
    backbone_info: dict[str, Any] | None = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trainable_backbone_layers.*")
        if spec.timm_trunk is not None:
            model, layout, backbone_info = _build_on_trunk(spec, num_classes, weights_backbone)
        else:
            model, layout = _build_torchvision(spec, kwargs, weights_backbone, pretrained_layout)
    model.refconv_backbone_layout = layout  # recorded in checkpoints, to rebuild the same variant
    if full is not None:
        state, info, source = full[:3]
        if isinstance(info.get("backbone"), dict):
            backbone_info = info["backbone"]  # a run started from a registry backbone: keep naming it
        _load_full(model, spec, state, info, source, from_file=source == str(weights))
    model.refconv_backbone = backbone_info  # where the backbone came from, for summaries and checkpoints
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        set_image_size(model, size)
        check_image_size(model, spec, size)
    return model


for _spec in ARCHS.values():  # one registry for every model (refconv.models.get_model)
    register_model(_spec.name, task=_spec.task, spec=_spec,
                   aliases=tuple(a for a, n in _ALIASES.items() if n == _spec.name))(partial(build_model, _spec.name))
