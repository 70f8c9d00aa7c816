"""Joint image/target transforms and collate functions for detection and segmentation.

Detection models resize and normalise inside (torchvision's ``GeneralizedRCNNTransform``) and map boxes back
to the input image, so detection only needs a flip that moves boxes with the pixels. Segmentation models do
not: images are resized to one training size (so they batch) and normalised with ImageNet statistics (what
torchvision's pretrained backbones expect); masks are resized with nearest neighbour for training and kept at
full resolution for evaluation, where logits are upsampled to the mask (the benchmark's protocol).
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectionTrainTransform",
    "SegmentationTransform",
    "detection_collate",
    "normalize",
    "segmentation_collate",
]


def normalize(image: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of a ``(..., 3, H, W)`` tensor in ``[0, 1]``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean) / std


class DetectionTrainTransform:
    """Random horizontal flip of the image and its boxes (``xyxy`` pixels), with probability ``flip``."""

    def __init__(self, flip: float = 0.5) -> None:
        self.flip = flip

    def __call__(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if self.flip > 0 and random.random() < self.flip:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target = {**target, "boxes": boxes}
        return image, target


class SegmentationTransform:
    """Resize to ``size`` (``(h, w)``), optional random flip, ImageNet normalisation.

    Args:
        size: the network's input size.
        train: resize the mask too (nearest) and flip at random; otherwise the mask keeps its full size.
        flip: flip probability when training.
    """

    def __init__(self, size: tuple[int, int], *, train: bool, flip: float = 0.5) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.train = train
        self.flip = flip

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
            if self.train:
                mask = F.interpolate(mask[None, None].float(), size=self.size, mode="nearest")[0, 0].long()
        if self.train and self.flip > 0 and random.random() < self.flip:
            image, mask = image.flip(-1), mask.flip(-1)
        return normalize(image), mask


def detection_collate(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Lists of images and targets (detection models take images of different sizes)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def segmentation_collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | list[Tensor]]:
    """Stacked images; masks stacked when they share a size (training), else a list (full-size evaluation)."""
    images, masks = zip(*batch)
    if all(m.shape == masks[0].shape for m in masks):
        return torch.stack(images), torch.stack(masks)
    return torch.stack(images), list(masks)
