"""A synthetic multi-object dataset from Fashion-MNIST, written in Pascal VOC and Cityscapes formats.

Why: detection and segmentation need data with boxes and masks, and the real datasets (VOC: 2 GB,
Cityscapes: 11 GB behind a login) cannot be fetched on a laptop or in CI. Fashion-MNIST is small, often
already installed (Debian's ``dataset-fashion-mnist``) and gives ten visually distinct object classes. Items
are pasted at random positions and scales on a coloured, noisy canvas; the union of an item's bright pixels
is its mask, the tight box around its *visible* mask is its box. The result is written in the real on-disk
layouts, so exactly the code that reads VOC and Cityscapes reads it: nothing downstream knows it is synthetic.

**This data is synthetic.** Numbers measured on it show that a pipeline runs and learns; they say nothing
about Pascal VOC or Cityscapes accuracy.

Files (VOC)::

    root/JPEGImages/<id>.jpg            (or .png)
    root/Annotations/<id>.xml           VOC XML, 1-based inclusive pixel boxes
    root/SegmentationClass/<id>.png     palette PNG, 0 = background, 1..10 = classes, 255 = void
    root/SegmentationObject/<id>.png    palette PNG, instance index 1..n, 255 = void
    root/ImageSets/Main/{train,val,trainval}.txt
    root/ImageSets/Segmentation/{train,val,trainval}.txt
    root/classes.txt                    the class names in label order (a refconv extension; VOC's 20 otherwise)
    root/SYNTHETIC.txt, root/synthetic.json   provenance and the exact generator settings

Files (Cityscapes)::

    root/leftImg8bit/{train,val}/fmnist/fmnist_<seq>_000019_leftImg8bit.png
    root/gtFine/{train,val}/fmnist/fmnist_<seq>_000019_gtFine_labelIds.png

For Cityscapes the background is ``road`` and Fashion-MNIST class ``c`` takes the Cityscapes class with train
id ``c + 1`` (sidewalk, building, ..., sky): class *names* are Cityscapes', objects are clothes.
"""

from __future__ import annotations

import hashlib
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError

__all__ = [
    "CITYSCAPES_LABEL_IDS",
    "CLASSES",
    "Scene",
    "SyntheticConfig",
    "default_root",
    "generate_scene",
    "load_items",
    "voc_palette",
    "write_cityscapes",
    "write_voc",
]

# The 10 Fashion-MNIST classes, as VOC-style object names (no spaces or slashes), in label order.
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")

# Cityscapes label ids written for the synthetic Cityscapes copy: background -> road (7), class c -> the
# label whose train id is c + 1 (sidewalk 8, building 11, wall 12, fence 13, pole 17, traffic light 19,
# traffic sign 20, vegetation 21, terrain 22, sky 23); void -> unlabeled (0).
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23)
_CITYSCAPES_VOID = 0
_CITY = "fmnist"

VOID = 255
_ITEM = 28  # Fashion-MNIST item size


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the generator; the same settings and items always give the same files, byte for byte.

    Attributes:
        num_train: images in the ``train`` split (items drawn from Fashion-MNIST's train set).
        num_val: images in the ``val`` split (items from Fashion-MNIST's test set: unseen instances).
        height, width: canvas size in pixels.
        objects: inclusive range of objects per image (fewer when placements keep overlapping).
        scale: range of the item's size as a multiple of 28 px.
        max_overlap: largest IoU allowed between two objects' boxes, so occlusion stays partial.
        boundary: width in pixels of the 255 "void" band drawn around objects in the masks, as VOC
            does (0: none).
        threshold: an item pixel belongs to the object when its intensity exceeds this fraction of 255.
        image_format: ``"jpg"`` (VOC's own) or ``"png"`` (lossless).
        seed: seed of everything random.
    """

    num_train: int = 64
    num_val: int = 16
    height: int = 96
    width: int = 96
    objects: tuple[int, int] = (1, 3)
    scale: tuple[float, float] = (0.8, 1.6)
    max_overlap: float = 0.3
    boundary: int = 0
    threshold: float = 0.25
    image_format: str = "jpg"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_val < 1:
            raise ConfigError(f"num_train and num_val must be >= 1, got {self.num_train} and {self.num_val}.")
        lo, hi = self.objects
        if not 1 <= lo <= hi:
            raise ConfigError(f"objects must be a range (lo, hi) with 1 <= lo <= hi, got {self.objects}.")
        s_lo, s_hi = self.scale
        if not 0 < s_lo <= s_hi:
            raise ConfigError(f"scale must be a range (lo, hi) with 0 < lo <= hi, got {self.scale}.")
        biggest = round(_ITEM * s_hi)
        if biggest > min(self.height, self.width):
            raise ConfigError(
                f"the largest item ({biggest} px = 28 * scale {s_hi}) does not fit the {self.height}x{self.width} "
                "canvas: lower scale or enlarge the canvas."
            )
        if round(_ITEM * s_lo) < 8:
            raise ConfigError(f"scale {s_lo} makes items smaller than 8 px; use scale >= 0.3.")
        if self.image_format not in ("jpg", "png"):
            raise ConfigError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}.")
        if not 0 <= self.max_overlap <= 1 or not 0 < self.threshold < 1 or self.boundary < 0:
            raise ConfigError("max_overlap must be in [0, 1], threshold in (0, 1) and boundary >= 0.")


@dataclass
class Scene:
    """One generated image with its annotations (arrays, before any file format).

    Attributes:
        image: ``uint8 (H, W, 3)``.
        classes: ``uint8 (H, W)`` semantic map: 0 background, ``1 + c`` for class ``c``, 255 void.
        instances: ``uint8 (H, W)`` instance map: 0 background, ``i + 1`` for object ``i``, 255 void.
        boxes: per object ``(x0, y0, x1, y1)``: first and last pixel column/row of its visible mask (0-based).
        labels: per object, its class ``c`` in ``0..9``.
    """

    image: np.ndarray
    classes: np.ndarray
    instances: np.ndarray
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def load_items(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST items of ``split`` ("train" or "test") as ``(uint8 (N, 28, 28), int64 (N,))``.

    Found where :mod:`refconv.data.fashion_mnist` looks (``data_dir``, ``$REFCONV_DATA_DIR``, Debian's package);
    never downloaded, so generation needs no network.

    Raises:
        DataError: the files are found nowhere (the message lists where it looked and how to get them).
    """
    from ..data.fashion_mnist import load_fashion_mnist

    images, labels, _ = load_fashion_mnist(split, data_dir, download=False)
    return images[:, 0].numpy(), labels.numpy()


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A dim vertical gradient between two random colours plus noise: textured, never confusable with items."""
    top, bottom = rng.uniform(10, 90, 3), rng.uniform(10, 90, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    img = top * (1 - t) + bottom * t
    img = np.broadcast_to(img, (h, w, 3)) + rng.normal(0, 6, (h, w, 3))
    return img


def _void_band(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a change of label (what VOC marks 255 around every object)."""
    if width <= 0:
        return np.zeros(labels.shape, dtype=bool)
    k = 2 * width + 1
    padded = np.pad(labels, width, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k))
    return windows.max(axis=(-1, -2)) != windows.min(axis=(-1, -2))


def generate_scene(
    rng: np.random.Generator, items: np.ndarray, item_labels: np.ndarray, cfg: SyntheticConfig
) -> Scene:
    """Paste ``cfg.objects`` random items on a canvas and derive masks and boxes from what stays visible.

    Placements whose box overlaps an earlier one by more than ``cfg.max_overlap`` IoU are redrawn (up to 20
    tries, then the object is left out). An object whose visible part ends up smaller than 16 px or only
    one pixel wide is not annotated and its pixels are marked void, so no visible, unlabelled object remains.
    """
    h, w = cfg.height, cfg.width
    canvas = _background(rng, h, w)
    inst = np.zeros((h, w), dtype=np.int32)
    placed: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    n_obj = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    for _ in range(n_obj):
        idx = int(rng.integers(len(items)))
        size = round(_ITEM * float(rng.uniform(*cfg.scale)))
        box = None
        for _try in range(20):
            x0, y0 = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
            cand = (x0, y0, x0 + size, y0 + size)
            if all(_iou(cand, p) <= cfg.max_overlap for p in placed):
                box = cand
                break
        if box is None:
            continue
        item = Image.fromarray(items[idx]).resize((size, size), Image.BILINEAR)
        alpha = np.asarray(item, dtype=np.float64) / 255.0
        colour = rng.uniform(110, 255, 3)
        x0, y0, x1, y1 = box
        region = canvas[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        inst[y0:y1, x0:x1][alpha > cfg.threshold] = len(placed) + 1
        placed.append(box)
        labels.append(int(item_labels[idx]))

    classes = np.zeros((h, w), dtype=np.uint8)
    instances = np.zeros((h, w), dtype=np.uint8)
    boxes: list[tuple[int, int, int, int]] = []
    kept: list[int] = []
    for i, label in enumerate(labels):
        ys, xs = np.nonzero(inst == i + 1)
        ok = len(xs) >= 16 and xs.max() > xs.min() and ys.max() > ys.min()
        if not ok:
            classes[inst == i + 1] = VOID
            instances[inst == i + 1] = VOID
            continue
        kept.append(label)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
        classes[inst == i + 1] = label + 1
        instances[inst == i + 1] = len(kept)
    band = _void_band(np.where(classes == VOID, 0, classes).astype(np.int32), cfg.boundary)
    classes[band] = VOID
    instances[band] = VOID
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image=image, classes=classes, instances=instances, boxes=boxes, labels=kept)


def voc_palette() -> list[int]:
    """The 256-colour palette of VOC's PNG masks (flattened RGB), index 255 = (224, 224, 192)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _save_png_palette(path: Path, arr: np.ndarray) -> None:
    h, w = arr.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
    img.putpalette(voc_palette())
    img.save(path, optimize=False)


def _save_image(path: Path, arr: np.ndarray, fmt: str) -> None:
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    if fmt == "jpg":
        img.save(path, quality=95, subsampling=0)
    else:
        img.save(path)


def _voc_xml(image_id: str, filename: str, scene: Scene, classes: Sequence[str]) -> bytes:
    h, w = scene.image.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "SYNTHETIC_FMNIST"
    ET.SubElement(root, "filename").text = filename
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "refconv synthetic Fashion-MNIST scenes"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(w)
    ET.SubElement(size, "height").text = str(h)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for (x0, y0, x1, y1), label in zip(scene.boxes, scene.labels):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based and inclusive: the first and last pixel of the object.
        ET.SubElement(bb, "xmin").text = str(x0 + 1)
        ET.SubElement(bb, "ymin").text = str(y0 + 1)
        ET.SubElement(bb, "xmax").text = str(x1 + 1)
        ET.SubElement(bb, "ymax").text = str(y1 + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def _scenes(cfg: SyntheticConfig, data_dir: str | os.PathLike | None):
    """Yield ``(split, index, scene)``: train scenes from Fashion-MNIST train items, val from its test items."""
    for split, n, src, salt in (("train", cfg.num_train, "train", 0), ("val", cfg.num_val, "test", 1)):
        items, item_labels = load_items(src, data_dir)
        if len(items) == 0:
            raise DataError(f"Fashion-MNIST's {src} split holds no images.")
        rng = np.random.default_rng([cfg.seed, salt])
        for i in range(n):
            yield split, i, generate_scene(rng, items, item_labels, cfg)


def _provenance(cfg: SyntheticConfig, fmt: str) -> tuple[str, str]:
    readme = (
        f"SYNTHETIC DATA in {fmt} format, written by refconv.downstream.synthetic.\n"
        "Fashion-MNIST items pasted at random positions and scales on a noisy canvas. Not Pascal VOC, not "
        "Cityscapes: results on it only show that a pipeline runs and learns.\n"
    )
    return readme, json.dumps({"format": fmt, "generator": "refconv.downstream.synthetic", **asdict(cfg)}, indent=2)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_voc(
    root: str | os.PathLike, cfg: SyntheticConfig | None = None, *, data_dir: str | os.PathLike | None = None
) -> Path:
    """Generate the dataset into ``root`` in Pascal VOC layout (see the module docstring) and return ``root``.

    Args:
        root: directory to fill (created); files already there with the same names are overwritten.
        cfg: generator settings (defaults: 64 train + 16 val images of 96x96).
        data_dir: where Fashion-MNIST's IDX files are, if not in the usual places.

    Raises:
        DataError: Fashion-MNIST is not found.
    """
    cfg = cfg or SyntheticConfig()
    root = Path(root)
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject", "ImageSets/Main",
                "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for split, i, scene in _scenes(cfg, data_dir):
        image_id = f"{split}_{i:06d}"
        filename = f"{image_id}.{cfg.image_format}"
        _save_image(root / "JPEGImages" / filename, scene.image, cfg.image_format)
        (root / "Annotations" / f"{image_id}.xml").write_bytes(_voc_xml(image_id, filename, scene, CLASSES))
        _save_png_palette(root / "SegmentationClass" / f"{image_id}.png", scene.classes)
        _save_png_palette(root / "SegmentationObject" / f"{image_id}.png", scene.instances)
        ids[split].append(image_id)
    for sets in ("Main", "Segmentation"):
        for split in ("train", "val"):
            _write_text(root / "ImageSets" / sets / f"{split}.txt", "".join(f"{i}\n" for i in ids[split]))
        _write_text(root / "ImageSets" / sets / "trainval.txt", "".join(f"{i}\n" for i in ids["train"] + ids["val"]))
    _write_text(root / "classes.txt", "".join(f"{c}\n" for c in CLASSES))
    readme, meta = _provenance(cfg, "voc")
    _write_text(root / "SYNTHETIC.txt", readme)
    _write_text(root / "synthetic.json", meta + "\n")
    return root


def write_cityscapes(
    root: str | os.PathLike, cfg: SyntheticConfig | None = None, *, data_dir: str | os.PathLike | None = None
) -> Path:
    """Generate the dataset into ``root`` in Cityscapes layout (``leftImg8bit/``, ``gtFine/``); return ``root``.

    Images are PNG (as Cityscapes'); ``*_gtFine_labelIds.png`` hold Cityscapes label ids (see
    :data:`CITYSCAPES_LABEL_IDS`); void pixels get id 0 ("unlabeled", ignored in training and evaluation).
    The default canvas is VOC's; pass e.g. ``height=64, width=128`` for Cityscapes' 1:2 aspect.

    Raises:
        DataError: Fashion-MNIST is not found.
    """
    cfg = cfg or SyntheticConfig()
    root = Path(root)
    lut = np.full(256, _CITYSCAPES_VOID, dtype=np.uint8)
    lut[: len(CITYSCAPES_LABEL_IDS)] = CITYSCAPES_LABEL_IDS
    for split, i, scene in _scenes(cfg, data_dir):
        stem = f"{_CITY}_{i:06d}_000019"
        img_dir = root / "leftImg8bit" / split / _CITY
        gt_dir = root / "gtFine" / split / _CITY
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(img_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(lut[scene.classes]).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    readme, meta = _provenance(cfg, "cityscapes")
    _write_text(root / "SYNTHETIC.txt", readme)
    _write_text(root / "synthetic.json", meta + "\n")
    return root


def default_root(fmt: str, cfg: SyntheticConfig) -> Path:
    """A cache directory for the generated data, keyed by format and settings (regenerated when they change).

    ``$REFCONV_DATA_DIR/synthetic-<fmt>-<hash>`` if that variable is set, else under ``~/.cache/refconv/data``.
    """
    from ..data.base import default_download_root

    digest = hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return default_download_root(f"synthetic-{fmt}-{digest}")
