"""``build_dataset``: one entry point from a dataset name to normalised tensors and their description."""

from __future__ import annotations

import dataclasses
import difflib
import os

from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from . import cifar, fashion_mnist, imagefolder
from .base import ArrayImageDataset, DatasetInfo, make_subset, normalize_split
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SmallImageSpec,
    channel_stats,
    imagefolder_transform,
    small_image_transform,
)

__all__ = ["DATASETS", "ALIASES", "dataset_names", "canonical_name", "build_dataset"]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
# Accepted spellings -> canonical name. "imagenet" is an image folder whose default root is
# $REFCONV_DATA_DIR/imagenet.
ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "imagefolder": "imagefolder",
    "image-folder": "imagefolder",
    "imagenet": "imagefolder",
}
DEFAULT_IMAGEFOLDER_SIZE = 224


def dataset_names() -> list[str]:
    """Canonical dataset names accepted by :func:`build_dataset` (``"imagenet"`` is also accepted)."""
    return list(DATASETS)


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def canonical_name(name: str) -> str:
    """Resolve an alias (``"imagenet"``, ``"FashionMNIST"``, ``"cifar_10"``...) to a canonical name.

    Raises:
        ConfigError: unknown name, with the closest known names.
    """
    key = _key(name)
    if key in ALIASES:
        return ALIASES[key]
    close = difflib.get_close_matches(key, list(ALIASES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in dict.fromkeys(ALIASES[c] for c in close))}?" if close else ""
    raise ConfigError(f"unknown dataset {name!r}.{hint} Known: {', '.join(DATASETS)} (and 'imagenet').")


def _check_options(image_size: int | None, in_chans: int | None) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8):
        raise ConfigError(f"image_size must be an int >= 8, got {image_size!r}.")
    if in_chans is not None and in_chans not in (1, 3):
        raise ConfigError(f"in_chans must be 1 or 3, got {in_chans!r}.")


def _info(canonical: str, split: str, classes: tuple[str, ...], size: int, chans: int, mean: tuple[float, ...],
          std: tuple[float, ...], native: tuple[int | None, int], source: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a split as built (``num_items`` is set once the subset is taken)."""
    return DatasetInfo(name=canonical, num_classes=len(classes), in_chans=chans, image_size=size,
                       class_names=tuple(classes), mean=tuple(mean), std=tuple(std), native_size=native[0],
                       native_chans=native[1], split=split, source=source)


def _imagefolder_split(name: str, split: str, data_dir: str | os.PathLike | None, image_size: int | None,
                       in_chans: int | None, augment: bool, download: bool) -> tuple[Dataset, DatasetInfo]:
    if download:
        raise DataError(
            f"dataset '{name}' cannot be downloaded: pass --data-dir DIR holding train/ and val/ class folders."
        )
    size = image_size or DEFAULT_IMAGEFOLDER_SIZE
    chans = in_chans or 3
    mean, std = channel_stats(IMAGENET_MEAN, IMAGENET_STD, chans)
    transform = imagefolder_transform(image_size=size, out_chans=chans, mean=mean, std=std, train=augment)
    root_name = "imagenet" if _key(name) == "imagenet" else "imagefolder"
    dataset, source = imagefolder.load_imagefolder(root_name, split, data_dir, transform)
    return dataset, _info("imagefolder", split, tuple(dataset.classes), size, chans, mean, std, (None, 3), source)


def _small_image_split(canonical: str, split: str, data_dir: str | os.PathLike | None, image_size: int | None,
                       in_chans: int | None, augment: bool, download: bool) -> tuple[Dataset, DatasetInfo]:
    """A split of Fashion-MNIST or CIFAR: ``uint8`` arrays in memory, transformed per item."""
    if canonical == "fashion-mnist":
        images, targets, source = fashion_mnist.load_fashion_mnist(split, data_dir, download=download)
        classes = fashion_mnist.CLASSES
        base_mean, base_std = fashion_mnist.MEAN, fashion_mnist.STD
    else:
        images, targets, classes, source = cifar.load_cifar(canonical, split, data_dir, download=download)
        base_mean, base_std = cifar.SPECS[canonical].mean, cifar.SPECS[canonical].std
    native_size, native_chans = int(images.shape[-1]), int(images.shape[1])
    size = image_size or native_size
    chans = in_chans or native_chans
    mean, std = channel_stats(base_mean, base_std, chans)
    pipeline = SmallImageSpec(native_size=native_size, image_size=size, src_chans=native_chans, out_chans=chans,
                              mean=tuple(mean), std=tuple(std), train=augment)
    dataset = ArrayImageDataset(images, targets, classes, small_image_transform(pipeline), source=source,
                                spec=pipeline)
    return dataset, _info(canonical, split, classes, size, chans, mean, std, (native_size, native_chans), source)


def build_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    augment: bool = False,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, DatasetInfo]:
    """Build one split of a dataset, ready for a classifier: items are ``(float CxHxW normalised, int label)``.

    Args:
        name: one of :func:`dataset_names` or an alias (``"imagenet"``).
        split: ``"train"`` or ``"test"`` (``"val"`` is an alias of ``"test"``).
        data_dir: where the data is; each reader documents what else it searches.
        image_size: output size; None keeps the native size (28 Fashion-MNIST, 32 CIFAR) and means 224 for
            image folders. A larger size lets ImageNet-pretrained models see roughly the scale they learnt.
        in_chans: 1 or 3; None keeps the dataset's own. Grayscale is replicated to 3 channels for RGB
            models; RGB is reduced to luma for 1-channel models.
        augment: training augmentation (small images: random crop with padding + flip; image folders:
            RandomResizedCrop + flip). Off: the deterministic eval pipeline.
        download: fetch with torchvision when the files are found nowhere (not for image folders).
        subset: keep this many items, class-stratified and chosen by ``seed``: quick runs see every class.
        seed: seeds the subset choice only (augmentation draws from torch's RNG, see
            :func:`~refconv.data.build_loader`).

    Returns:
        ``(dataset, info)``; ``info`` describes the items as built (channels, size, normalisation).

    Raises:
        ConfigError: unknown name or split, bad ``image_size``/``in_chans``/``subset``.
        DataError: data missing (with the ways to get it), truncated or malformed (naming the file).
    """
    canonical = canonical_name(name)
    split = normalize_split(split)
    _check_options(image_size, in_chans)
    if canonical == "imagefolder":
        dataset, info = _imagefolder_split(name, split, data_dir, image_size, in_chans, augment, download)
    else:
        dataset, info = _small_image_split(canonical, split, data_dir, image_size, in_chans, augment, download)
    dataset = make_subset(dataset, subset, seed)
    return dataset, dataclasses.replace(info, num_items=len(dataset))  # type: ignore[arg-type]
