"""Cityscapes semantic segmentation on disk (``leftImg8bit/`` + ``gtFine/``), 19 evaluation classes.

Layout (as distributed, ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label ids (0..33) are mapped to the 19 train ids of the official benchmark (``cityscapesscripts``'
``labels.py``); every other id becomes 255 and is ignored. ``*_gtFine_labelTrainIds.png`` files written by
``cityscapesscripts``' ``createTrainIdLabelImgs`` are used instead when present (values 0..18 and 255).
Checked on load: a label file exists for every image, has the image's size, and holds only known ids.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .voc import IGNORE_INDEX, image_to_tensor, load_rgb

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_LABELS", "LABEL_TO_TRAIN", "CityscapesSegmentation"]

# (name, label id, train id) of cityscapesscripts/helpers/labels.py; train id 255 = ignored.
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    name for name, _, train in sorted(CITYSCAPES_LABELS, key=lambda t: t[2]) if train != 255
)
_UNKNOWN = 254  # marker in the lookup table for ids that are no Cityscapes label
LABEL_TO_TRAIN = np.full(256, _UNKNOWN, dtype=np.uint8)
for _name, _id, _train in CITYSCAPES_LABELS:
    LABEL_TO_TRAIN[_id] = _train
_IMG_SUFFIX = "_leftImg8bit.png"


class CityscapesSegmentation(Dataset):
    """Cityscapes fine annotations: ``(image float (3, H, W) in [0, 1], mask int64 (H, W))``, train ids.

    Args:
        root: directory holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test`` (test labels are all "unlabeled" in the public release).
        transforms: ``(image, mask) -> (image, mask)``.

    Raises:
        DataError: missing directories, no image in the split, or images without their label file (all
            listed).
    """

    classes = CITYSCAPES_CLASSES
    num_classes = len(CITYSCAPES_CLASSES)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        transforms: Callable[[Tensor, Any], tuple[Tensor, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        img_dir, gt_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for d in (img_dir, gt_dir):
            if not d.is_dir():
                have = sorted(p.name for p in d.parent.iterdir() if p.is_dir()) if d.parent.is_dir() else []
                raise DataError(
                    f"{d} does not exist: {self.root} is not a Cityscapes root with a {split!r} split "
                    f"(splits there: {have or 'none'}). It must hold leftImg8bit/ and gtFine/."
                )
        self.images = sorted(img_dir.glob(f"*/*{_IMG_SUFFIX}"))
        if not self.images:
            raise DataError(f"{img_dir} holds no <city>/*{_IMG_SUFFIX} image.")
        self.labels: list[tuple[Path, bool]] = []
        problems = []
        for img in self.images:
            stem = img.name[: -len(_IMG_SUFFIX)]
            train_ids = gt_dir / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.labels.append((train_ids, True))
            elif label_ids.is_file():
                self.labels.append((label_ids, False))
            else:
                problems.append(f"{label_ids}: missing label file for {img.name}")
        if problems:
            listing = "\n  ".join(problems[:10])
            raise DataError(f"{len(problems)} image(s) of {img_dir} have no gtFine label:\n  {listing}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the 19 train ids."""
        return CITYSCAPES_CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def _load_mask(self, index: int, size: tuple[int, int]) -> np.ndarray:
        path, is_train_ids = self.labels[index]
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise DataError(f"{path}: a {im.mode} label image; gtFine label files are single-channel ids.")
                msize = im.size
                arr = np.asarray(im).astype(np.int64)
        except (OSError, SyntaxError) as exc:
            raise DataError(f"{path}: unreadable label file ({exc}).") from None
        if msize != size:
            raise DataError(
                f"{path}: label is {msize[0]}x{msize[1]} but its image is {size[0]}x{size[1]}; they must match."
            )
        if is_train_ids:
            bad = [int(v) for v in np.unique(arr) if not (0 <= v < self.num_classes or v == IGNORE_INDEX)]
            if bad:
                raise DataError(f"{path}: train ids {bad[:10]} are not Cityscapes classes (0..18 and 255).")
            return arr
        if arr.min() < 0 or arr.max() > 255 or (LABEL_TO_TRAIN[arr] == _UNKNOWN).any():
            bad = sorted({int(v) for v in np.unique(arr) if not 0 <= v < 256 or LABEL_TO_TRAIN[v] == _UNKNOWN})
            raise DataError(f"{path}: label ids {bad[:10]} are not Cityscapes labels (0..33).")
        return LABEL_TO_TRAIN[arr].astype(np.int64)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img = load_rgb(self.images[index])
        mask = self._load_mask(index, (img.width, img.height))
        image, target = image_to_tensor(img), torch.from_numpy(mask)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
