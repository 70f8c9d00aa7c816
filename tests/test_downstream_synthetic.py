"""The synthetic Fashion-MNIST multi-object dataset: determinism, VOC/Cityscapes layouts, boxes vs masks."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from _datagen import write_fashion_mnist
from PIL import Image

from refconv.downstream import synthetic
from refconv.downstream.synthetic import SyntheticConfig, write_cityscapes, write_voc
from refconv.errors import ConfigError, DataError

CFG = SyntheticConfig(num_train=6, num_val=3, height=64, width=64, objects=(2, 3), boundary=1, image_format="png")


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=40, n_test=20)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_voc_layout_and_determinism(tmp_path: Path, fmnist: Path) -> None:
    a = write_voc(tmp_path / "a", CFG, data_dir=fmnist)
    b = write_voc(tmp_path / "b", CFG, data_dir=fmnist)
    assert _digest(a) == _digest(b)  # same settings -> same bytes
    c = write_voc(tmp_path / "c", SyntheticConfig(**{**CFG.__dict__, "seed": 1}), data_dir=fmnist)
    assert _digest(a) != _digest(c)
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        assert len(list((a / sub).iterdir())) == CFG.num_train + CFG.num_val
    train = (a / "ImageSets/Main/train.txt").read_text().split()
    val = (a / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 6 and len(val) == 3 and not set(train) & set(val)
    assert (a / "classes.txt").read_text().split() == list(synthetic.CLASSES)
    assert "SYNTHETIC" in (a / "SYNTHETIC.txt").read_text()


@pytest.mark.parametrize("boundary", [0, 1])
def test_boxes_are_tight_around_visible_masks(tmp_path: Path, fmnist: Path, boundary: int) -> None:
    root = write_voc(tmp_path, SyntheticConfig(**{**CFG.__dict__, "boundary": boundary}), data_dir=fmnist)
    for xml in sorted((root / "Annotations").glob("*.xml")):
        ann = ET.parse(xml).getroot()
        inst = Image.open(root / "SegmentationObject" / f"{xml.stem}.png")
        cls = Image.open(root / "SegmentationClass" / f"{xml.stem}.png")
        assert inst.mode == "P" and cls.mode == "P"
        inst_a, cls_a = np.asarray(inst), np.asarray(cls)
        w, h = int(ann.find("size/width").text), int(ann.find("size/height").text)
        assert (w, h) == inst.size == Image.open(root / "JPEGImages" / ann.find("filename").text).size
        objs = ann.findall("object")
        assert objs, "every image has at least one object"
        for k, obj in enumerate(objs, start=1):
            ys, xs = np.nonzero(inst_a == k)
            bb = [int(obj.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
            if boundary == 0:  # 1-based inclusive, tight
                assert bb == [xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1]
            else:  # the void band eats the mask's rim: what remains lies inside the box
                assert bb[0] <= xs.min() + 1 and bb[1] <= ys.min() + 1 and xs.max() + 1 <= bb[2] and ys.max() + 1 <= bb[3]
            label = synthetic.CLASSES.index(obj.find("name").text) + 1
            assert set(np.unique(cls_a[inst_a == k])) == {label}
        assert set(np.unique(cls_a)) <= set(range(11)) | {255}
        if boundary:
            assert (cls_a == 255).any()  # VOC's void band


def test_cityscapes_layout(tmp_path: Path, fmnist: Path) -> None:
    cfg = SyntheticConfig(num_train=3, num_val=2, height=32, width=64, objects=(1, 2), scale=(0.5, 1.0))
    root = write_cityscapes(tmp_path, cfg, data_dir=fmnist)
    imgs = sorted((root / "leftImg8bit/train/fmnist").glob("*_leftImg8bit.png"))
    assert len(imgs) == 3
    for img in imgs:
        gt = root / "gtFine/train/fmnist" / img.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        arr = np.asarray(Image.open(gt))
        assert Image.open(img).size == (64, 32) and arr.shape == (32, 64)
        assert set(np.unique(arr)) <= set(synthetic.CITYSCAPES_LABEL_IDS) | {0}
        assert 7 in arr  # background is road
    assert len(list((root / "leftImg8bit/val/fmnist").iterdir())) == 2


def test_real_fashion_mnist(tmp_path: Path, real_fashion_mnist: Path) -> None:
    root = write_voc(tmp_path, SyntheticConfig(num_train=2, num_val=1, height=64, width=64),
                     data_dir=real_fashion_mnist)
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 3


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        SyntheticConfig(height=32, width=32, scale=(1.0, 2.0))
    with pytest.raises(ConfigError, match="objects"):
        SyntheticConfig(objects=(3, 1))
    with pytest.raises(ConfigError, match="image_format"):
        SyntheticConfig(image_format="bmp")


def test_missing_fashion_mnist_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import refconv.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.delenv("REFCONV_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="Fashion-MNIST"):
        write_voc(tmp_path / "out", CFG, data_dir=tmp_path / "empty")
