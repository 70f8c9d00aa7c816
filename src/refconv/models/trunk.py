"""The trunks of detectors and segmenters: a classifier's weights loaded where a detector's builder put its layers.

:func:`load_backbone_file` fills a torchvision detector's trunk (SSDlite, DeepLabV3, ...) from an ImageNet
classifier's weights file; the rest of this module is the architectures whose backbone is one of this project's
pretrained classifiers.

Why: RefConv refocuses a *pretrained* basis, and offline there are no ImageNet weights for torchvision's
backbones; the registry (:mod:`refconv.models.pretrained`) does ship classifiers trained here on Fashion-MNIST,
the very items the synthetic VOC / Cityscapes collages are made of. These architectures put torchvision's own
heads on a timm ``features_only`` trunk of such a classifier::

    ssdlite_timm    SSD with SSDLiteHead on strides 16 and 32 of the trunk plus four SSDlite extra blocks
                    (as torchvision's SSDlite feature extractor does; widths halved for the small trunk)
    deeplabv3_timm  DeepLabV3 (DeepLabHead, ASPP) on the trunk's last features at output stride 16 (dilated)
    lraspp_timm     LR-ASPP on strides 8 (low) and 16 (high, dilated)

Input: the classifiers are 1-channel (grayscale Fashion-MNIST) and the collages RGB. A fixed, parameter-free
:class:`GrayInput` in front of the trunk turns the task's RGB input (SSD: ``[0, 1]``; segmentation: ImageNet
normalised) into the classifier's own input: the channel mean, normalised with the classifier's mean and std.
That is exactly what averaging the stem kernel over RGB would compute, but it keeps the classifier's tensors
untouched, so every one of them loads as it is and can be counted.

Loading (:func:`load_backbone`) is never silent: the classifier's state_dict minus its head (timm's
``forward_head``: ``conv_head`` and ``classifier`` for MobileNetV3) must fill the trunk exactly; every missing,
unexpected or differently shaped tensor is named in one :class:`~refconv.errors.ModelError`. The head is not
used, so a classifier with another class count is a valid backbone (its head is dropped and reported).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert import state_dict_format
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError, ModelError
from .checkpoint import load_checkpoint
from .weights import read_weights
from . import catalog
from .catalog import FMNIST_MEAN as _FMNIST_MEAN
from .catalog import FMNIST_STD as _FMNIST_STD

__all__ = ["SSD_EXTRA", "GrayInput", "TimmTrunk", "build_timm_model", "describe", "load_backbone",
           "load_backbone_file", "ssdlite_on", "trunk_reference"]



class GrayInput(nn.Module):
    """RGB normalised with ``(in_mean, in_std)`` -> its channel mean normalised with ``(out_mean, out_std)``.

    A fixed 1x1 affine map (non-persistent buffers: it is part of the architecture, not of its weights).
    """

    def __init__(self, in_mean: Sequence[float], in_std: Sequence[float], out_mean: float, out_std: float) -> None:
        super().__init__()
        m, s = torch.tensor(in_mean, dtype=torch.float32), torch.tensor(in_std, dtype=torch.float32)
        # gray = mean_c(x_c * s_c + m_c); y = (gray - out_mean) / out_std  ==  sum_c a_c x_c + b
        self.register_buffer("weight", (s / (len(s) * out_std)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("bias", ((m.mean() - out_mean) / out_std).view(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class TimmTrunk(nn.Module):
    """The input adapter and a timm ``features_only`` trunk; returns the selected feature maps."""

    def __init__(self, model_name: str, out_indices: Sequence[int], *, rgb_normalised: bool,
                 output_stride: int = 32) -> None:
        super().__init__()
        import timm

        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if rgb_normalised else ((0.0,) * 3, (1.0,) * 3)
        self.input = GrayInput(mean, std, _FMNIST_MEAN[0], _FMNIST_STD[0])
        self.body = timm.create_model(model_name, pretrained=False, features_only=True, in_chans=1,
                                      out_indices=tuple(out_indices), output_stride=output_stride)

    @property
    def channels(self) -> list[int]:
        return list(self.body.feature_info.channels())

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(self.input(x)))


class _SSDBackbone(nn.Module):
    """Trunk maps at strides 16 and 32, then SSDlite extra blocks (stride 2 each), as an ordered dict."""

    def __init__(self, trunk: TimmTrunk, extra_channels: Sequence[int]) -> None:
        super().__init__()
        from torchvision.models.detection.ssdlite import _extra_block, _normal_init

        self.trunk = trunk
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision SSDlite's norm layer
        chans = [trunk.channels[-1], *extra_channels]
        self.extra = nn.ModuleList(_extra_block(a, b, norm) for a, b in zip(chans[:-1], chans[1:]))
        _normal_init(self.extra)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.trunk(x)
        y = feats[-1]
        for block in self.extra:
            y = block(y)
            feats.append(y)
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


class _SegBackbone(nn.Module):
    """Trunk maps named as torchvision's segmentation models expect (``out``; LR-ASPP: ``low`` / ``high``)."""

    def __init__(self, trunk: TimmTrunk, names: Sequence[str]) -> None:
        super().__init__()
        self.trunk = trunk
        self.names = tuple(names)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.names, self.trunk(x)))


# ------------------------------------------------------------------------------------------- building
_TRUNK = "mobilenetv3_small_100"
SSD_EXTRA = (256, 128, 128, 64)  # torchvision SSDlite's (512, 256, 256, 128), halved for the 576-channel trunk


def ssdlite_on(backbone: nn.Module, n_maps: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """torchvision's SSDlite (320 px, its anchors, SSDLiteHead) on ``backbone``'s ``n_maps`` feature maps;
    ``kwargs`` (image_mean, image_std, detections_per_img...) go to ``SSD``."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead

    anchors = DefaultBoxGenerator([[2, 3] for _ in range(n_maps)], min_ratio=0.2, max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(backbone, (320, 320))
    head = SSDLiteHead(out_channels, anchors.num_anchors_per_location(), num_classes,
                       partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
    settings = {"score_thresh": 0.001, "nms_thresh": 0.55, "topk_candidates": 300, **kwargs}
    return SSD(backbone, anchors, (320, 320), num_classes, head=head, **settings)


def build_timm_model(arch: str, num_classes: int, trunk: str = _TRUNK) -> nn.Module:
    """A randomly initialised ``ssdlite_timm`` / ``deeplabv3_timm`` / ``lraspp_timm`` with ``num_classes`` outputs.

    The trunk is ``model.backbone.trunk.body`` (the scope ``"backbone"`` converts it and nothing else).
    """
    if arch == "ssdlite_timm":
        backbone = _SSDBackbone(TimmTrunk(trunk, (3, 4), rgb_normalised=False), SSD_EXTRA)
        # image_mean 0 / std 1: GrayInput normalises; the rest are torchvision SSDlite's defaults
        return ssdlite_on(backbone, 2 + len(SSD_EXTRA), num_classes, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                          detections_per_img=100)
    if arch == "deeplabv3_timm":
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

        t = TimmTrunk(trunk, (4,), rgb_normalised=True, output_stride=16)
        return DeepLabV3(_SegBackbone(t, ("out",)), DeepLabHead(t.channels[-1], num_classes), None)
    if arch == "lraspp_timm":
        from torchvision.models.segmentation.lraspp import LRASPP

        t = TimmTrunk(trunk, (2, 4), rgb_normalised=True, output_stride=16)
        return LRASPP(_SegBackbone(t, ("low", "high")), t.channels[0], t.channels[1], num_classes)
    raise ModelError(f"no timm-backbone architecture {arch!r}; known: ssdlite_timm, deeplabv3_timm, lraspp_timm.")


@lru_cache(maxsize=None)
def trunk_reference(trunk: str = _TRUNK) -> tuple[frozenset[str], frozenset[str]]:
    """``(trunk_keys, head_keys)`` of the stock classifier ``trunk``: what a backbone file must fill, and the
    head tensors (timm's ``forward_head``) it may hold and that are dropped. Cached: two model builds."""
    import timm

    full = set(timm.create_model(trunk, pretrained=False, in_chans=1, num_classes=10).state_dict())
    body = set(timm.create_model(trunk, pretrained=False, in_chans=1, features_only=True).state_dict())
    return frozenset(body), frozenset(full - body)


@torch.no_grad()
def load_backbone(model: nn.Module, source: str | os.PathLike, trunk: str = _TRUNK) -> dict[str, Any]:
    """Load a classifier (registry name, weights file or run directory) into ``model``'s trunk; count the tensors.

    Returns:
        ``{"source", "name", "test_top1", "loaded", "trunk_tensors", "dropped"}``: ``name`` / ``test_top1`` come
        from the registry card when ``source`` is a registry name (else the file's sidecar, when it has them).

    The classifier's state_dict minus its head goes through :func:`~refconv.models.load_checkpoint` into the trunk.

    Raises:
        ModelError: tensors missing, unexpected or of other shapes (all named: another architecture, another
            input channel count), or a detector / segmenter checkpoint instead of a classifier.
        CheckpointError: an unreadable file, RefConv (unfolded) weights; PretrainedError: see the registry.
    """

    src = str(source)
    state, info = read_weights(src)
    if info.get("task") in ("detection", "segmentation") or info.get("format") == "refconv-downstream":
        raise ModelError(f"{src} is a {info.get('task')} checkpoint, not a classifier: pass it as --weights.")
    if state_dict_format(state) == "refconv":
        raise CheckpointError(f"{src} holds RefConv (unfolded) weights: fold them first (`refconv fold`) and pass the "
                              "folded .safetensors.")
    body: nn.Module = model.backbone.trunk.body
    _, head = trunk_reference(trunk)
    try:
        load_checkpoint(body, {k: v for k, v in state.items() if k not in head}, source=src, heads=(),
                        what=f"the timm {trunk} trunk (1 input channel) of this model",
                        hint=f"Pass a {trunk} classifier trained on 1-channel images, e.g. fmnist/{trunk} "
                             "(`refconv pretrained`).")
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    want = body.state_dict()
    loaded = sum(1 for k in want if k in state)
    card: dict[str, Any] = {}
    if catalog.is_pretrained_name(src):
        card = catalog.read_card(src) or {}
    elif info.get("test_top1") is not None or info.get("name"):
        card = info
    return {"source": src, "name": card.get("name"), "test_top1": card.get("test_top1"), "loaded": loaded,
            "trunk_tensors": len(want), "dropped": sorted(k for k in state if k in head)}


_CLASSIFIER_HEADS = ("classifier.", "fc.")  # what a torchvision classifier has beyond the trunk a detector uses


def _in_scope(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in patterns)


@torch.no_grad()
def load_backbone_file(model: nn.Module, classifier: str, scope: Sequence[str], path: str) -> None:
    """Load an ImageNet classifier's weights file into the pretrained trunk of a torchvision detector / segmenter:
    ``model``'s tensors under the ``scope`` patterns, which its builder took from torchvision's ``classifier``.

    The file is first loaded into a stock torchvision classifier of the backbone's kind by
    :func:`~refconv.models.load_checkpoint` (format check, a 1-channel stem adapted to RGB; its classifier is not
    used), then the trunk's tensors are copied, in module order, into the detector / segmenter, whose builder
    took them from that classifier in that order. Every tensor is matched by shape on the way.

    Raises:
        ModelError: a file that does not fit the backbone classifier.
    """
    import torchvision.models as tvm

    state, _ = read_weights(path)
    reference = tvm.get_model(classifier, weights=None)
    own = reference.state_dict()
    trunk = [k for k in own if not k.startswith(_CLASSIFIER_HEADS)]
    sd = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_HEADS)}
    sd.update({k: v for k, v in own.items() if k.startswith(_CLASSIFIER_HEADS)})  # the head is not used
    try:
        load_checkpoint(reference, sd, source=path, adapt_in_chans=True)
    except CheckpointError as exc:
        raise ModelError(
            f"{path} does not fit the {type(reference).__name__} backbone ({exc}). A backbone file must hold the "
            "ImageNet classifier's weights (e.g. torchvision's mobilenet_v3_large / resnet50 / vgg16)."
        ) from None
    target = model.state_dict()
    slots = [k for k in target if _in_scope(k, tuple(scope))]
    pairs = list(zip(trunk, slots))
    if len(trunk) != len(slots) or any(own[a].shape != target[b].shape for a, b in pairs):
        raise ModelError(f"the {type(model).__name__} trunk ({len(slots)} tensors) does not line up with the "
                         f"{type(reference).__name__} classifier's ({len(trunk)}): please report this as a bug.")
    for a, b in pairs:
        target[b].copy_(own[a])  # state_dict tensors share their storage with the model's


def describe(backbone: dict[str, Any]) -> str:
    """One phrase for a run's summary: where a registry backbone came from and how good its classifier was."""
    name = backbone.get("name") or backbone.get("source")
    acc = backbone.get("test_top1")
    acc_s = f", {acc:.2f} % Fashion-MNIST test top-1" if isinstance(acc, (int, float)) else ""
    return (f"backbone {name}{acc_s} ({backbone.get('loaded')}/{backbone.get('trunk_tensors')} trunk tensors "
            "loaded)")
