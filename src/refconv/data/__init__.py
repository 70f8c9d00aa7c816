"""Datasets for refocusing experiments: Fashion-MNIST, CIFAR-10/100 and ImageNet-style image folders.

Everything goes through two calls::

    dataset, info = build_dataset("fashion-mnist", "train", image_size=64, in_chans=3, augment=True)
    loader = build_loader(dataset, batch_size=128, train=True, seed=0)

Files are found where they already are (a ``--data-dir``, ``$REFCONV_DATA_DIR``, Debian's dataset packages,
torchvision's layout) before anything is downloaded, and a missing or damaged file raises a
:class:`~refconv.errors.DataError` that names it and says how to get a good one.
"""

from __future__ import annotations

from .base import ENV_DATA_DIR, ArrayImageDataset, DatasetInfo, LabeledSubset, stratified_indices
from .factory import build_dataset, canonical_name, dataset_names
from .fashion_mnist import read_idx
from .loader import build_loader

__all__ = [
    "DatasetInfo",
    "dataset_names",
    "canonical_name",
    "build_dataset",
    "build_loader",
    "ArrayImageDataset",
    "LabeledSubset",
    "stratified_indices",
    "read_idx",
    "ENV_DATA_DIR",
]
