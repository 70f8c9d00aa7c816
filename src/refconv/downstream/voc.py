"""Pascal VOC on disk: detection (``Annotations/*.xml``) and semantic segmentation (``SegmentationClass/``).

Reads the real layout of a ``VOCdevkit/VOC20xx`` directory (or the synthetic copy of
:mod:`refconv.downstream.synthetic`)::

    root/JPEGImages/<id>.jpg
    root/Annotations/<id>.xml
    root/ImageSets/Main/<split>.txt            detection image ids
    root/ImageSets/Segmentation/<split>.txt    segmentation image ids
    root/SegmentationClass/<id>.png            palette (or single-channel) index PNG, 255 = void
    root/classes.txt                           optional: class names in label order (default: VOC's 20)

Every annotation is checked when the dataset is built, and every problem is reported with the file that holds
it, because a silently skipped or clipped box trains a different model than the one the user asked for:
malformed XML, unknown class names, boxes outside the image or with zero area (``clip_boxes=True`` clips
instead and drops what becomes empty), and a ``<size>`` that disagrees with the image. Masks are checked on
load: size equal to the image's, values in ``0..num_classes-1`` or 255.

Conventions: VOC boxes are 1-based inclusive pixel ranges; they become 0-based continuous ``xyxy`` boxes
``[xmin - 1, ymin - 1, xmax, ymax]`` (Detectron2's reading) so a box covers exactly its pixels. Detection
labels are ``1..C`` (0 is torchvision's background); segmentation class ``k`` is the ``k``-th name (0 =
background).
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = [
    "VOC_CLASSES",
    "VOCAnnotation",
    "VOCDetection",
    "VOCSegmentation",
    "load_index_mask",
    "load_rgb",
    "parse_voc_xml",
    "read_classes",
    "read_image_set",
]

_log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IGNORE_INDEX = 255
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_SHOW = 10  # problems listed in one error message


@dataclass
class VOCAnnotation:
    """One parsed ``Annotations/<id>.xml``.

    Attributes:
        boxes: ``float32 (n, 4)`` 0-based continuous ``xyxy``.
        labels: ``int64 (n,)`` in ``1..C``.
        difficult: ``bool (n,)``: VOC's "difficult" flag (ignored by the metric, not trained on).
        width, height: the ``<size>`` of the image, or ``None`` when the file has none.
        filename: the ``<filename>`` entry, or ``None``.
    """

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int | None
    height: int | None
    filename: str | None


def _check_root(root: Path, needed: Sequence[str]) -> None:
    if not root.is_dir():
        raise DataError(f"VOC root {root} does not exist. Pass the directory holding JPEGImages/ (e.g. VOCdevkit/VOC2012).")
    missing = [d for d in needed if not (root / d).is_dir()]
    if missing:
        hint = ""
        nested = sorted(p.name for p in root.glob("VOC20*") if p.is_dir())
        if (root / "VOCdevkit").is_dir() or nested:
            hint = " It looks like a VOCdevkit root: pass its VOC20xx subdirectory."
        raise DataError(f"{root} is not a Pascal VOC directory: missing {', '.join(d + '/' for d in missing)}.{hint}")


def read_classes(root: str | os.PathLike, classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The object classes in label order: ``classes`` if given, else ``root/classes.txt``, else VOC's 20.

    Raises:
        DataError: an empty or duplicated class list.
    """
    if classes is None:
        path = Path(root) / "classes.txt"
        if path.is_file():
            classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            where = str(path)
        else:
            classes = VOC_CLASSES
            where = "VOC's default classes"
    else:
        where = "classes"
    classes = tuple(str(c) for c in classes)
    if not classes:
        raise DataError(f"{where}: the class list is empty.")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise DataError(f"{where}: duplicated class names {dup}.")
    if "background" in classes or "__background__" in classes:
        raise DataError(f"{where}: list the object classes only; label 0 (background) is implicit.")
    return classes


def read_image_set(root: str | os.PathLike, task_dir: str, split: str) -> list[str]:
    """Image ids listed in ``root/ImageSets/<task_dir>/<split>.txt`` (VOC's per-class files are not needed).

    Raises:
        DataError: the file is missing (naming the splits that exist) or lists no image.
    """
    root = Path(root)
    path = root / "ImageSets" / task_dir / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / task_dir).glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{path} does not exist: no split {split!r} for {task_dir}. Splits there: {have or 'none'}.")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path} lists no image.")
    return ids


def _int_field(parent: ET.Element, tag: str, path: Path) -> float:
    node = parent.find(tag)
    if node is None or node.text is None or not node.text.strip():
        raise DataError(f"{path}: <{tag}> is missing in <{parent.tag}>.")
    try:
        return float(node.text.strip())
    except ValueError:
        raise DataError(f"{path}: <{tag}> is not a number: {node.text.strip()!r}.") from None


def _first_pixel(v: float) -> float:
    return max(v - 1.0, 0.0) if v >= 0 else v


def _annotation_root(path: Path) -> ET.Element:
    """The ``<annotation>`` element of a VOC file, or a :class:`DataError` naming what is wrong with it."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed XML ({exc}).") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc}).") from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise DataError(f"{path}: not a VOC annotation (root element <{root.tag}>, expected <annotation>).")
    return root


def _image_size(root: ET.Element, path: Path) -> tuple[int | None, int | None]:
    """The file's ``<size>`` (``(None, None)`` without one)."""
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return None, None
    width, height = int(_int_field(size, "width", path)), int(_int_field(size, "height", path))
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: <size> {width}x{height} is empty.")
    return width, height


def _object_name(
    obj: ET.Element, k: int, path: Path, classes: Sequence[str], index: dict[str, int]
) -> tuple[str, str]:
    """``(class name, how messages name the object)``, refusing a name that is not in ``classes``."""
    name_node = obj.find("name")
    name = (name_node.text or "").strip() if name_node is not None else ""
    where = f"{path}: object {k} ({name or 'unnamed'})"
    if name not in index:
        shown = ", ".join(classes[:_SHOW]) + (" ..." if len(classes) > _SHOW else "")
        raise DataError(
            f"{where}: unknown class name {name!r}; known classes: {shown}. Fix the name, or pass the full class "
            "list (classes=..., --classes, or a classes.txt in the dataset root)."
        )
    return name, where


def _object_box(obj: ET.Element, where: str, path: Path, width: int | None, height: int | None,
                clip_boxes: bool) -> tuple[float, float, float, float] | None:
    """The object's 0-based ``xyxy`` box: checked, or clipped (``None``: empty after clipping, dropped)."""
    bb = obj.find("bndbox")
    if bb is None:
        raise DataError(f"{where}: no <bndbox>.")
    xmin, ymin, xmax, ymax = (_int_field(bb, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
    # 1-based inclusive -> 0-based continuous; a 0 written by 0-based tools is read as the first pixel.
    x0, y0, x1, y1 = _first_pixel(xmin), _first_pixel(ymin), xmax, ymax
    box = f"box xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}"
    if clip_boxes:
        if width is None or height is None:
            raise DataError(f"{path}: clip_boxes needs the image size, but the file has no <size>.")
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        if x1 - x0 < 1 or y1 - y0 < 1:
            _log.warning("%s: box (%g, %g, %g, %g) is empty after clipping; dropped.", where, xmin, ymin, xmax, ymax)
            return None
    elif xmax <= xmin or ymax <= ymin:
        raise DataError(
            f"{where}: {box} has zero area (needs xmax > xmin and ymax > ymin). Fix or remove the object."
        )
    elif x0 < 0 or y0 < 0 or (width is not None and x1 > width) or (height is not None and y1 > height):
        raise DataError(
            f"{where}: {box} lies outside the "
            f"{width}x{height} image (VOC boxes are 1-based: 1 <= xmin, xmax <= width). Fix it, or pass "
            "clip_boxes=True (--clip-boxes) to clip boxes to the image."
        )
    return x0, y0, x1, y1


def parse_voc_xml(
    path: str | os.PathLike, classes: Sequence[str], *, clip_boxes: bool = False
) -> VOCAnnotation:
    """Parse and validate one VOC annotation file.

    Args:
        path: the ``.xml`` file.
        classes: object class names in label order (label = index + 1).
        clip_boxes: clip boxes to the image instead of rejecting them; boxes that become empty are dropped
            with a warning. Needs the file's ``<size>``.

    Raises:
        DataError: malformed XML, missing fields, unknown class name, a box outside the image or with
            zero area (``xmax <= xmin`` or ``ymax <= ymin``). The message names the file and the object.
    """
    path = Path(path)
    root = _annotation_root(path)
    width, height = _image_size(root, path)
    index = {c: i for i, c in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        name, where = _object_name(obj, k, path, classes, index)
        box = _object_box(obj, where, path, width, height, clip_boxes)
        if box is None:
            continue
        diff_node = obj.find("difficult")
        boxes.append(box)
        labels.append(index[name] + 1)
        difficult.append(diff_node is not None and (diff_node.text or "0").strip() not in ("0", ""))
    fn = root.find("filename")
    return VOCAnnotation(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        width=width,
        height=height,
        filename=(fn.text or "").strip() or None if fn is not None else None,
    )


def _find_image(root: Path, image_id: str, filename: str | None = None) -> Path | None:
    if filename:
        p = root / "JPEGImages" / filename
        if p.is_file():
            return p
    for ext in _IMAGE_EXTS:
        p = root / "JPEGImages" / f"{image_id}{ext}"
        if p.is_file():
            return p
    return None


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB, turning unreadable files into a :class:`DataError` naming them."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({exc}).") from None


def load_index_mask(path: Path, num_classes: int, *, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an index PNG (palette ``P`` or single-channel ``L``) and check its size and values.

    Args:
        path: the mask file.
        num_classes: valid values are ``0..num_classes-1`` and 255 (void).
        image_size: ``(width, height)`` the mask must have (its image's).

    Raises:
        DataError: unreadable, a colour (RGB) mask, a size that differs from the image's, or values that
            are no class.
    """
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            if mode not in ("P", "L", "I", "I;16"):
                raise DataError(
                    f"{path}: a {mode} mask; masks must be index images (palette 'P' or single-channel 'L') whose "
                    "pixel values are class indices. A colour-rendered mask has to be converted back to indices."
                )
            arr = np.asarray(im)
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable mask ({exc}).") from None
    if image_size is not None and tuple(size) != tuple(image_size):
        raise DataError(
            f"{path}: mask is {size[0]}x{size[1]} but its image is {image_size[0]}x{image_size[1]}; a mask must have "
            "its image's size."
        )
    values = np.unique(arr)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == IGNORE_INDEX)]
    if bad:
        raise DataError(
            f"{path}: mask values {bad[:_SHOW]} are not classes (valid: 0..{num_classes - 1}, and 255 for void)."
        )
    return arr.astype(np.int64)


def image_to_tensor(img: Image.Image) -> Tensor:
    """``uint8`` PIL RGB -> ``float32 (3, H, W)`` in ``[0, 1]``."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _raise_all(problems: list[str], what: str) -> None:
    if problems:
        listing = "\n  ".join(problems[:_SHOW])
        more = f"\n  ... and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
        raise DataError(f"{len(problems)} problem(s) in {what}:\n  {listing}{more}")


Transform = Callable[[Tensor, Any], tuple[Tensor, Any]]


class _VOCSplit(Dataset):
    """What both VOC datasets do: check the layout, read the class names and the split's image ids, then index
    the split (:meth:`_index`), reporting every problem found at once."""

    _layout_dir = ""  # the task's directory next to JPEGImages/
    _image_set = ""  # the task's directory under ImageSets/

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        classes: Sequence[str] | None = None,
        transforms: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        _check_root(self.root, ("JPEGImages", self._layout_dir, "ImageSets"))
        self.classes = read_classes(self.root, classes)
        self.split = split
        self.transforms = transforms
        self.ids = read_image_set(self.root, self._image_set, split)
        _raise_all(self._index(), f"{self.root} (split {split!r})")

    def _index(self) -> list[str]:
        """Find each id's files; return the problems."""
        raise NotImplementedError

    def _missing_image(self, image_id: str) -> str:
        return f"{self.root / 'JPEGImages' / image_id}.jpg: missing image for id {image_id!r}"

    @property
    def num_classes(self) -> int:
        """Classes including background: what torchvision's detection builders count, the segmentation head's
        width."""
        return len(self.classes) + 1

    def __len__(self) -> int:
        return len(self.images)


class VOCDetection(_VOCSplit):
    """Pascal VOC object detection: ``(image float (3, H, W) in [0, 1], target)``.

    ``target`` holds ``boxes`` (``float32 (n, 4)`` xyxy, pixels), ``labels`` (``int64``, ``1..C``),
    ``difficult`` (``bool``) and ``image_id`` (str), as torchvision's detection models and
    :class:`~refconv.downstream.metrics.DetectionMetric` expect.

    Args:
        root: the ``VOC20xx`` directory.
        split: a file name of ``ImageSets/Main`` without ``.txt`` (``train``, ``val``, ``trainval``, ``test``).
        classes: object class names (default: ``root/classes.txt`` or VOC's 20).
        transforms: ``(image, target) -> (image, target)`` applied after loading.
        clip_boxes: clip out-of-image boxes instead of raising.

    Raises:
        DataError: at construction, listing every bad annotation found (see the module docstring).
    """

    _layout_dir, _image_set = "Annotations", "Main"

    def __init__(self, root: str | os.PathLike, split: str = "train", *, classes: Sequence[str] | None = None,
                 transforms: Transform | None = None, clip_boxes: bool = False) -> None:
        self.clip_boxes = clip_boxes
        super().__init__(root, split, classes=classes, transforms=transforms)

    def _index(self) -> list[str]:
        self.annotations: list[VOCAnnotation] = []
        self.images: list[Path] = []
        problems: list[str] = []
        for image_id in self.ids:
            xml = self.root / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                problems.append(f"{xml}: missing annotation for image id {image_id!r}")
                continue
            try:
                ann = parse_voc_xml(xml, self.classes, clip_boxes=self.clip_boxes)
            except DataError as exc:
                problems.append(str(exc))
                continue
            img = _find_image(self.root, image_id, ann.filename)
            if img is None:
                problems.append(self._missing_image(image_id))
                continue
            self.annotations.append(ann)
            self.images.append(img)
        return problems

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        ann = self.annotations[index]
        path = self.images[index]
        img = load_rgb(path)
        if ann.width is not None and (img.width, img.height) != (ann.width, ann.height):
            raise DataError(
                f"{path}: image is {img.width}x{img.height} but its annotation's <size> says {ann.width}x{ann.height}."
            )
        if len(ann.boxes) and (ann.boxes[:, 2].max() > img.width or ann.boxes[:, 3].max() > img.height):
            raise DataError(f"{path}: an annotated box lies outside the {img.width}x{img.height} image.")
        target = {
            "boxes": torch.from_numpy(ann.boxes.copy()),
            "labels": torch.from_numpy(ann.labels.copy()),
            "difficult": torch.from_numpy(ann.difficult.copy()),
            "image_id": path.stem,
        }
        image = image_to_tensor(img)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class VOCSegmentation(_VOCSplit):
    """Pascal VOC semantic segmentation: ``(image float (3, H, W) in [0, 1], mask int64 (H, W))``.

    Mask values: 0 background, ``k`` the ``k``-th class, 255 void (ignored). Masks are checked on load
    against their image's size and the class count.

    Args:
        root: the ``VOC20xx`` directory.
        split: a file name of ``ImageSets/Segmentation`` without ``.txt``.
        classes: object class names (default: ``root/classes.txt`` or VOC's 20).
        transforms: ``(image, mask) -> (image, mask)``.

    Raises:
        DataError: at construction, listing missing images or masks.
    """

    _layout_dir, _image_set = "SegmentationClass", "Segmentation"

    def _index(self) -> list[str]:
        self.images: list[Path] = []
        self.masks: list[Path] = []
        problems = []
        for image_id in self.ids:
            img = _find_image(self.root, image_id)
            mask = self.root / "SegmentationClass" / f"{image_id}.png"
            if img is None:
                problems.append(self._missing_image(image_id))
            elif not mask.is_file():
                problems.append(f"{mask}: missing mask for image id {image_id!r}")
            else:
                self.images.append(img)
                self.masks.append(mask)
        return problems

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the ``num_classes`` mask values, background first."""
        return ("background", *self.classes)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img = load_rgb(self.images[index])
        mask = load_index_mask(self.masks[index], self.num_classes, image_size=(img.width, img.height))
        image, target = image_to_tensor(img), torch.from_numpy(mask)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
