"""Pieces shared by every dataset reader: the info record, in-memory datasets, seeded subsets, data roots.

The readers keep decoded images as ``uint8`` tensors (a whole Fashion-MNIST or CIFAR split is tens of MB) and
convert one item at a time, so a dataset costs its raw size in memory and worker processes share it on fork.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError

__all__ = [
    "DatasetInfo",
    "ArrayImageDataset",
    "LabeledSubset",
    "ENV_DATA_DIR",
    "SPLITS",
    "normalize_split",
    "default_download_root",
    "env_data_dir",
    "stratified_indices",
    "make_subset",
    "dataset_targets",
]

ENV_DATA_DIR = "REFCONV_DATA_DIR"
SPLITS = ("train", "test")
_SPLIT_ALIASES = {"train": "train", "test": "test", "val": "test", "valid": "test", "validation": "test"}


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an engine need to know about the tensors a dataset yields.

    ``in_chans``, ``image_size``, ``mean`` and ``std`` describe the items as built (after the requested
    resize and channel conversion), so ``torch.randn(1, info.in_chans, info.image_size, info.image_size)``
    is always a valid input; ``native_size`` / ``native_chans`` keep what is on disk (``native_size`` is None
    for image folders, whose images vary). ``mean``/``std`` have one entry per channel of the items.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: int | None = None
    native_chans: int | None = None
    split: str = ""
    num_items: int = 0
    source: str = ""


class ArrayImageDataset(Dataset):
    """Images held as one ``uint8`` tensor ``(N, C, H, W)``, transformed per item.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        targets: integer labels ``(N,)``.
        classes: class names, index = label.
        transform: applied to each ``(C, H, W)`` uint8 image; returns the float tensor the model sees.
        source: where the data came from (file or directory), for messages and reports.
        spec: the same pipeline as data (:class:`~refconv.data.transforms.SmallImageSpec`), when it has one:
            it lets the engine keep the split resident and augment whole batches (:mod:`refconv.data.resident`).
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        classes: Sequence[str],
        transform: Callable[[Tensor], Tensor] | None = None,
        source: str = "",
        spec: object | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ValueError(f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}")
        self.images = images
        self.targets = targets.to(torch.int64)
        self.classes = list(classes)
        self.transform = transform
        self.source = source
        self.spec = spec

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"{type(self).__name__}(items={n}, image=({c}, {h}, {w}), classes={len(self.classes)}, source={self.source!r})"


class LabeledSubset(Subset):
    """A :class:`~torch.utils.data.Subset` that keeps ``targets`` and ``classes`` of its parent.

    Class histograms and stratified splits need the labels without decoding every image.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | Tensor) -> None:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        super().__init__(dataset, idx.tolist())
        self.targets = dataset_targets(dataset)[idx]
        self.classes = list(getattr(dataset, "classes", []))


def dataset_targets(dataset: Dataset) -> Tensor:
    """The labels of a dataset as an int64 tensor, read from ``.targets`` (no image is decoded)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ConfigError(f"{type(dataset).__name__} has no .targets: a stratified subset needs the labels up front.")
    return torch.as_tensor(targets, dtype=torch.int64)


def normalize_split(split: str) -> str:
    """Map ``"val"`` (and spellings of it) to ``"test"``; reject anything that is not a split."""
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ConfigError(f"split must be 'train' or 'test' ('val' is an alias of 'test'), got {split!r}.")
    return _SPLIT_ALIASES[key]


def env_data_dir() -> Path | None:
    """``$REFCONV_DATA_DIR`` if set: a shared root holding one folder per dataset."""
    value = os.environ.get(ENV_DATA_DIR, "").strip()
    return Path(value).expanduser() if value else None


def default_download_root(name: str) -> Path:
    """Where ``download=True`` puts a dataset when no ``data_dir`` is given.

    ``$REFCONV_DATA_DIR/<name>`` if that variable is set, else ``$XDG_CACHE_HOME/refconv/data/<name>`` (default
    ``~/.cache/refconv/data/<name>``), so a second run finds the download without any option.
    """
    env = env_data_dir()
    if env is not None:
        return env / name
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "refconv" / "data" / name


def stratified_indices(targets: Tensor, n: int, seed: int = 0) -> Tensor:
    """Pick ``n`` indices with every class as equally represented as the data allows, reproducibly.

    Classes are visited round-robin (in a seeded order) and each class gives its items in a seeded random
    order, so the per-class counts differ by at most one until a class runs out. The same
    ``(targets, n, seed)`` always gives the same indices, whatever the global RNG state. Returned sorted, so
    reading the subset walks the storage in order.
    """
    targets = torch.as_tensor(targets, dtype=torch.int64)
    total = int(targets.numel())
    if n >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(int(seed))
    classes = torch.unique(targets)
    # A random permutation per item; ranking it within each class gives each class's random order.
    noise = torch.randperm(total, generator=g)
    order = torch.argsort(targets * total + noise)  # grouped by class, randomly ordered inside each class
    sorted_targets = targets[order]
    starts = torch.searchsorted(sorted_targets, classes)
    class_index = torch.searchsorted(classes, sorted_targets)
    rank = torch.arange(total) - starts[class_index]
    class_pos = torch.randperm(len(classes), generator=g)[class_index]  # seeded round-robin order of classes
    key = rank * len(classes) + class_pos
    chosen = order[torch.argsort(key)[:n]]
    return torch.sort(chosen).values


def make_subset(dataset: Dataset, subset: int | None, seed: int) -> Dataset:
    """Wrap ``dataset`` in a class-stratified :class:`LabeledSubset` of ``subset`` items (None: unchanged)."""
    if subset is None:
        return dataset
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
        raise ConfigError(f"subset must be a positive number of items, got {subset!r}.")
    if subset >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return LabeledSubset(dataset, stratified_indices(dataset_targets(dataset), subset, seed))
