"""torchvision detectors and segmenters by name, with weights from the hub or a local file, and RefConv scopes.

Supported (torchvision builders, their own code and state_dict keys)::

    detection:     ssdlite320_mobilenet_v3_large, ssd300_vgg16
    segmentation:  deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, lraspp_mobilenet_v3_large, fcn_resnet50

Weights, never loaded silently:

- ``weights_backbone``: ImageNet weights of the backbone classifier. A torchvision enum name
  (``"IMAGENET1K_V1"``, ``"DEFAULT"``; downloaded by torchvision) or a local file of the *classification*
  model (``mobilenet_v3_large`` / ``resnet50`` / ``vgg16``): a ``.pth``/``.safetensors``, a timm/torchvision
  checkpoint, or a finished ``refconv train`` run directory (its folded weights; a run on 1-channel
  Fashion-MNIST has its stem adapted to RGB). A local file takes exactly the path torchvision takes for
  its own download (the builder's "pretrained backbone" branch, e.g. SSDlite's full MobileNetV3 tail), only
  the file differs. Its classifier is dropped (detectors and segmenters do not use it); every other key must
  match.
- ``weights``: weights of the whole detector/segmenter: an enum name (``"COCO_V1"``...) or a local file
  (a stock state_dict, or a ``refconv detect``/``segment`` checkpoint of the same task and architecture).
  When the class count differs, the class-dependent layers of the head (``ArchSpec.heads``) are
  re-initialised and reported; any other difference is an error.

Scopes: ``"backbone"`` converts the ImageNet-pretrained trunk only (RefConv refocuses a *pretrained* basis,
and the heads and SSD's extra layers start random); ``"all"`` converts every eligible convolution.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn

from ..convert import check_state_dict_format, state_dict_format
from ..errors import CheckpointError, ConfigError, ModelError

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
# The "format" of detect/segment checkpoints before they joined the engine (now "refconv-run" with a "task").
DOWNSTREAM_FORMAT = "refconv-downstream"
_SHOW = 5


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
            this project's pretrained registry (:mod:`refconv.downstream.backbones`) instead of torchvision.
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
            from .backbones import build_timm_model

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
        # heads on a registry classifier's trunk (fmnist/mobilenetv3_small_100); see downstream/backbones.py
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


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a weights file into ``(state_dict, info)``; ``info`` is a checkpoint's metadata (``format``,
    ``task``, ``arch``...) or a ``.safetensors`` sidecar's, ``{}`` for a bare state_dict.

    Raises:
        CheckpointError: missing, truncated or unreadable file (see :func:`refconv.models.read_state_dict`).
    """
    from ..engine.export import read_sidecar
    from ..models import read_state_dict, resolve_weights_path

    file = resolve_weights_path(path)
    info: dict[str, Any] = {}
    if file.suffix != ".safetensors":
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:
            obj = None  # read_state_dict below raises the detailed error
        if isinstance(obj, dict):
            keep = ("conversion", "config", "backbone")
            info = {k: v for k, v in obj.items() if not isinstance(v, (dict, Tensor)) or k in keep}
            if obj.get("format") == DOWNSTREAM_FORMAT and isinstance(obj.get("state_dict"), dict):
                return dict(obj["state_dict"]), info
    else:
        info = read_sidecar(file)
    return read_state_dict(file), info


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


def _classification_trunk_state(
    state: Mapping[str, Tensor], target: nn.Module, source: str
) -> dict[str, Tensor]:
    """Check a classification state_dict fits ``target`` except for its classifier; return what to load."""
    from ..models import adapt_input_weight

    heads = ("classifier.", "fc.")
    model_sd = target.state_dict()
    sd = {k: v for k, v in state.items() if not k.startswith(heads)}
    missing = [k for k in model_sd if not k.startswith(heads) and k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in model_sd]
    mismatched = []
    for k in list(sd):
        if k in model_sd and sd[k].shape != model_sd[k].shape:
            got, want = sd[k].shape, model_sd[k].shape
            if sd[k].ndim == 4 and got[0] == want[0] and got[2:] == want[2:] and got[1] != want[1]:
                sd[k] = adapt_input_weight(sd[k], int(want[1]))  # a 1-channel (Fashion-MNIST) stem -> RGB
            else:
                mismatched.append(f"'{k}' {tuple(got)} vs {tuple(want)}")
    if missing or unexpected or mismatched:
        parts = [
            f"{what}: {', '.join(keys[:_SHOW])}{' ...' if len(keys) > _SHOW else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise ModelError(
            f"{source} does not fit the {type(target).__name__} backbone ({'; '.join(parts)}). A backbone file must "
            "hold the ImageNet classifier's weights (e.g. torchvision's mobilenet_v3_large / resnet50 / vgg16)."
        )
    return sd


@contextlib.contextmanager
def _local_backbone(spec: ArchSpec, state: Mapping[str, Tensor] | None, source: str) -> Iterator[None]:
    """While active, the builder's classification constructor builds without downloading and loads ``state``
    (``None``: keeps the random init, to rebuild a pretrained-branch model whose weights come next)."""
    module_name, attr = spec.backbone_ctor
    module = importlib.import_module(module_name)
    real = getattr(module, attr, None)
    if real is None:
        raise ModelError(
            f"this torchvision ({module_name} has no {attr}) cannot take a local backbone file for {spec.name}; "
            "pass a torchvision weights name instead, or full-model weights."
        )

    def ctor(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> nn.Module:
        model = real(weights=None, progress=progress, **kwargs)
        if state is not None:
            model.load_state_dict(_classification_trunk_state(state, model, source), strict=False)
        return model

    with mock.patch.object(module, attr, ctor):
        yield


def _head_key(key: str, heads: tuple[str, ...]) -> bool:
    return any(key.startswith(h + ".") for h in heads)


@torch.no_grad()
def load_model_weights(
    model: nn.Module, spec: ArchSpec, state: Mapping[str, Tensor], *, source: str, new_head: bool = True
) -> list[str]:
    """Load a full-model state_dict, re-initialising the class-dependent head tensors when the class count
    differs (``new_head``); nothing is loaded when anything else does not fit.

    Returns:
        The keys left at their fresh initialisation.

    Raises:
        CheckpointError: shape mismatches outside the head, missing or unexpected keys, a RefConv checkpoint
            for a plain model or the reverse, weights of another task.
    """
    check_state_dict_format(model, state, source=source)
    model_sd = model.state_dict()
    if not any(k in model_sd for k in state):
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"{source}: none of its keys (e.g. {sample}) belong to {spec.name}: it holds another model. An ImageNet "
            "classifier's weights go to weights_backbone (--weights-backbone), not weights."
        )
    sd = dict(state)
    fresh: list[str] = []
    mismatched = [k for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape]
    head_mismatch = [k for k in mismatched if _head_key(k, spec.heads)]
    other = [k for k in mismatched if k not in head_mismatch]
    if other:
        detail = ", ".join(f"'{k}' {tuple(sd[k].shape)} vs {tuple(model_sd[k].shape)}" for k in other[:_SHOW])
        raise CheckpointError(f"{source} does not fit {spec.name}: shape mismatch {detail}.")
    if head_mismatch:
        if not new_head:
            raise CheckpointError(
                f"{source}: its head is for another number of classes ({', '.join(head_mismatch[:_SHOW])})."
            )
        for k in head_mismatch:
            del sd[k]
        fresh = head_mismatch
        _log.info("%s: class-dependent head tensors re-initialised: %s", source, ", ".join(fresh))
    missing = [k for k in model_sd if k not in sd and k not in fresh and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in model_sd]
    if missing or unexpected:
        parts = [
            f"{what}: {', '.join(keys[:_SHOW])}{' ...' if len(keys) > _SHOW else ''}"
            for what, keys in (("missing from the file", missing), ("not in the model", unexpected))
            if keys
        ]
        raise CheckpointError(f"{source} does not match {spec.name}'s keys ({'; '.join(parts)}).")
    model.load_state_dict(sd, strict=False)
    return fresh


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
    from .backbones import build_timm_model, load_backbone

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
    builder = spec.builder()
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if spec.task == "detection":
        kwargs["trainable_backbone_layers"] = 6 if spec.name.startswith("ssdlite") else 5  # train everything

    full_state: dict[str, Tensor] | None = None
    info: dict[str, Any] = {}
    source = ""
    if weights is not None:
        weights = str(weights)
        if _is_path_like(weights):
            full_state, info = read_weights(weights)
            source = weights
            other = _describe(info)
            if other and (info.get("task") != spec.task or info.get("arch") not in (None, spec.name)):
                raise CheckpointError(
                    f"{weights} is {other}, not {spec.task} weights of {spec.name}. "
                    + ("Pass an ImageNet classifier as --weights-backbone." if "classification" in other else
                       f"Use {info.get('arch')} with `refconv {'detect' if info.get('task') == 'detection' else 'segment'}`.")
                )
            if info.get("backbone_layout") is not None and pretrained_layout is None:
                pretrained_layout = bool(info["backbone_layout"] == "pretrained")
        else:
            member = _enum_member(spec, weights, backbone=False)
            full_state = dict(member.get_state_dict(progress=True, check_hash=True))
            source = f"torchvision {spec.name} {member.name}"
        if aux_loss is None and spec.aux:
            aux_loss = any(k.startswith("aux_classifier.") for k in full_state)
        weights_backbone = None
    if spec.aux:
        kwargs["aux_loss"] = bool(aux_loss)
    elif aux_loss:
        raise ConfigError(f"{spec.name} has no auxiliary head; aux_loss must be off.")

    backbone_info: dict[str, Any] | None = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trainable_backbone_layers.*")
        if spec.timm_trunk is not None:
            model, layout, backbone_info = _build_on_trunk(spec, num_classes, weights_backbone)
        elif weights_backbone is not None:
            wb = str(weights_backbone)
            if _is_path_like(wb):
                bstate, info = read_weights(wb)
                other = _describe(info)
                if other and "classification" not in other:
                    raise CheckpointError(
                        f"{wb} is {other}, not ImageNet backbone weights; pass it as --weights (weights=...)."
                    )
                if state_dict_format(bstate) == "refconv":
                    raise CheckpointError(
                        f"{wb} is a RefConv (unfolded) classification checkpoint: fold it first (`refconv fold`) and "
                        "pass the folded .safetensors (or the finished run directory)."
                    )
                member = _enum_member(spec, spec.backbone_weights, backbone=True)
                with _local_backbone(spec, bstate, wb):
                    model = builder(weights=None, weights_backbone=member, **kwargs)
            else:
                member = _enum_member(spec, wb, backbone=True)
                model = builder(weights=None, weights_backbone=member, **kwargs)
            layout = "pretrained"
        elif pretrained_layout:
            member = _enum_member(spec, spec.backbone_weights, backbone=True)
            with _local_backbone(spec, None, ""):
                model = builder(weights=None, weights_backbone=member, **kwargs)
            layout = "pretrained"
        else:
            model = builder(weights=None, weights_backbone=None, **kwargs)
            layout = "scratch"
    model.refconv_backbone_layout = layout  # recorded in checkpoints, to rebuild the same variant
    if full_state is not None and isinstance(info.get("backbone"), dict):
        backbone_info = info["backbone"]  # a run started from a registry backbone: keep naming it
    model.refconv_backbone = backbone_info  # where the backbone came from, for summaries and checkpoints
    if full_state is not None:
        if state_dict_format(full_state) == "refconv":
            conversion = (info.get("conversion") or {}).get("layers") if source == str(weights) else None
            if not conversion:
                raise CheckpointError(
                    f"{source} holds RefConv (unfolded) weights without the conversion record needed to rebuild "
                    "the RefConv model; pass the refconv detect/segment checkpoint itself, or folded weights."
                )
            from ..engine.modeling import rebuild_converted

            rebuild_converted(model, conversion)
        load_model_weights(model, spec, full_state, source=source)
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        set_image_size(model, size)
        check_image_size(model, spec, size)
    return model
