"""Per-dataset normalisation statistics, in one torch-free place: the data pipeline normalises with them and the
model registry records them on every pretrained entry (which must not import torch to list the registry)."""

from __future__ import annotations

__all__ = ["FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
