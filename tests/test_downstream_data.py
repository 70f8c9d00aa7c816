"""VOC and Cityscapes readers: what they return, and every bad input refused with a clear DataError."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _datagen import write_fashion_mnist
from PIL import Image

from refconv.downstream import synthetic
from refconv.downstream.cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation
from refconv.downstream.synthetic import SyntheticConfig, write_cityscapes, write_voc
from refconv.downstream.voc import (
    VOC_CLASSES,
    VOCDetection,
    VOCSegmentation,
    parse_voc_xml,
    read_classes,
)
from refconv.errors import DataError

CFG = SyntheticConfig(num_train=4, num_val=2, height=48, width=48, objects=(1, 2), scale=(0.6, 1.2),
                      image_format="png")


@pytest.fixture(scope="module")
def voc_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fm = write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=20, n_test=10)
    return write_voc(tmp_path_factory.mktemp("voc"), CFG, data_dir=fm)


@pytest.fixture(scope="module")
def cs_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fm = write_fashion_mnist(tmp_path_factory.mktemp("fm2"), n_train=20, n_test=10)
    cfg = SyntheticConfig(num_train=3, num_val=2, height=32, width=64, objects=(1, 2), scale=(0.5, 1.0))
    return write_cityscapes(tmp_path_factory.mktemp("cs"), cfg, data_dir=fm)


@pytest.fixture()
def voc(tmp_path: Path, voc_template: Path) -> Path:
    return Path(shutil.copytree(voc_template, tmp_path / "VOC"))


@pytest.fixture()
def cs(tmp_path: Path, cs_template: Path) -> Path:
    return Path(shutil.copytree(cs_template, tmp_path / "cityscapes"))


XML = """<annotation><filename>{fn}</filename><size><width>48</width><height>48</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = "<object><name>{name}</name><difficult>{diff}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>" \
      "<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"


def _write_xml(path: Path, objects: list[tuple[str, tuple, int]], fn: str = "x.png") -> Path:
    path.write_text(XML.format(fn=fn, objects="".join(OBJ.format(name=n, b=b, diff=d) for n, b, d in objects)))
    return path


# --------------------------------------------------------------------------- good data
def test_voc_detection_items(voc: Path) -> None:
    ds = VOCDetection(voc, "train")
    assert len(ds) == 4 and ds.classes == synthetic.CLASSES and ds.num_classes == 11
    image, target = ds[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].shape[1] == 4 and target["boxes"].dtype == torch.float32
    assert target["labels"].min() >= 1 and target["labels"].max() <= 10
    assert not target["difficult"].any()
    # 1-based inclusive xml -> 0-based continuous: the box covers exactly its pixels
    inst = np.asarray(Image.open(voc / "SegmentationObject" / f"{target['image_id']}.png"))
    ys, xs = np.nonzero(inst == 1)
    assert target["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_voc_segmentation_items(voc: Path) -> None:
    ds = VOCSegmentation(voc, "val")
    assert len(ds) == 2 and ds.num_classes == 11 and ds.class_names[0] == "background"
    image, mask = ds[0]
    assert mask.shape == image.shape[1:] and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= set(range(11)) | {255}


def test_classes_default_and_parse(tmp_path: Path) -> None:
    assert read_classes(tmp_path) == VOC_CLASSES
    ann = parse_voc_xml(_write_xml(tmp_path / "a.xml", [("dog", (1, 1, 48, 48), 0), ("cat", (10, 12, 20, 30), 1)]),
                        VOC_CLASSES)
    assert ann.boxes.tolist() == [[0, 0, 48, 48], [9, 11, 20, 30]]
    assert ann.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert ann.difficult.tolist() == [False, True] and (ann.width, ann.height) == (48, 48)


def test_cityscapes_items_and_label_mapping(cs: Path) -> None:
    ds = CityscapesSegmentation(cs, "train")
    assert len(ds) == 3 and ds.num_classes == 19 and len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[-1] == "bicycle"
    image, mask = ds[0]
    assert image.shape == (3, 32, 64) and mask.shape == (32, 64)
    raw = np.asarray(Image.open(ds.labels[0][0]))
    # road (7) -> 0, sidewalk (8) -> 1, building (11) -> 2, unlabeled (0) -> 255
    for label_id, train_id in ((7, 0), (8, 1), (11, 2), (0, 255)):
        assert (mask.numpy()[raw == label_id] == train_id).all()


def test_cityscapes_prefers_train_id_files(cs: Path) -> None:
    gt = sorted((cs / "gtFine/train/fmnist").glob("*_labelIds.png"))[0]
    trainids = gt.with_name(gt.name.replace("_labelIds", "_labelTrainIds"))
    Image.fromarray(np.full((32, 64), 5, dtype=np.uint8)).save(trainids)
    ds = CityscapesSegmentation(cs, "train")
    idx = [p for p, _ in ds.labels].index(trainids)
    assert (ds[idx][1] == 5).all()


# --------------------------------------------------------------------------- bad VOC input
def test_malformed_xml(voc: Path) -> None:
    xml = sorted((voc / "Annotations").glob("train_*.xml"))[1]
    xml.write_text("<annotation><object><name>bag</name>")  # truncated
    with pytest.raises(DataError, match=r"malformed XML") as exc:
        VOCDetection(voc, "train")
    assert xml.name in str(exc.value)


def test_not_an_annotation_and_missing_fields(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("<html/>")
    with pytest.raises(DataError, match="not a VOC annotation"):
        parse_voc_xml(tmp_path / "a.xml", VOC_CLASSES)
    (tmp_path / "b.xml").write_text("<annotation><object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object>"
                                    "</annotation>")
    with pytest.raises(DataError, match="<ymin> is missing"):
        parse_voc_xml(tmp_path / "b.xml", VOC_CLASSES)
    (tmp_path / "c.xml").write_text(XML.format(fn="x", objects=OBJ.format(name="dog", b=("a", 1, 2, 3), diff=0)))
    with pytest.raises(DataError, match="not a number"):
        parse_voc_xml(tmp_path / "c.xml", VOC_CLASSES)


def test_unknown_class_name(voc: Path) -> None:
    xml = sorted((voc / "Annotations").glob("train_*.xml"))[0]
    xml.write_text(xml.read_text().replace("<name>", "<name>unicorn_", 1))
    with pytest.raises(DataError, match=r"unknown class name 'unicorn_.*classes.txt"):
        VOCDetection(voc, "train")
    # the fix the message names: a class list that has it
    names = list(synthetic.CLASSES) + [n for n in [_first_name(xml)] if n not in synthetic.CLASSES]
    assert VOCDetection(voc, "train", classes=names).num_classes == len(names) + 1


def _first_name(xml: Path) -> str:
    import xml.etree.ElementTree as ET

    return ET.parse(xml).getroot().find("object/name").text


@pytest.mark.parametrize(
    "box, match",
    [
        ((10, 10, 49, 20), "outside"),  # xmax > width
        ((10, 10, 20, 60), "outside"),  # ymax > height
        ((-3, 10, 20, 20), "outside"),  # negative
        ((10, 10, 10, 20), "zero area"),  # xmax == xmin
        ((10, 20, 30, 15), "zero area"),  # ymax < ymin
    ],
)
def test_bad_boxes(tmp_path: Path, box: tuple, match: str) -> None:
    path = _write_xml(tmp_path / "a.xml", [("dog", box, 0)])
    with pytest.raises(DataError, match=match) as exc:
        parse_voc_xml(path, VOC_CLASSES)
    assert "a.xml: object 0 (dog)" in str(exc.value)


def test_clip_boxes_option(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_xml(tmp_path / "a.xml", [("dog", (10, 10, 60, 20), 0), ("cat", (50, 10, 70, 20), 0)])
    ann = parse_voc_xml(path, VOC_CLASSES, clip_boxes=True)
    assert ann.boxes.tolist() == [[9, 9, 48, 20]]  # the dog clipped, the cat (entirely outside) dropped
    assert "dropped" in caplog.text


def test_every_problem_is_listed(voc: Path) -> None:
    xmls = sorted((voc / "Annotations").glob("train_*.xml"))
    xmls[0].write_text("<annotation")
    xmls[2].unlink()
    with pytest.raises(DataError, match=r"2 problem\(s\)") as exc:
        VOCDetection(voc, "train")
    assert xmls[0].name in str(exc.value) and xmls[2].name in str(exc.value)


def test_size_tag_disagrees_with_image(voc: Path) -> None:
    xml = sorted((voc / "Annotations").glob("train_*.xml"))[0]
    xml.write_text(xml.read_text().replace("<width>48</width>", "<width>60</width>"))
    ds = VOCDetection(voc, "train")
    with pytest.raises(DataError, match=r"image is 48x48 but its annotation's <size> says 60x48"):
        ds[0]


def test_missing_pieces(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no split 'trainx'"):
        VOCDetection(voc, "trainx")
    (voc / "JPEGImages" / "train_000001.png").unlink()
    with pytest.raises(DataError, match="missing image"):
        VOCDetection(voc, "train")
    with pytest.raises(DataError, match="does not exist"):
        VOCDetection(tmp_path / "nope")
    (tmp_path / "devkit" / "VOCdevkit").mkdir(parents=True)
    with pytest.raises(DataError, match="VOCdevkit root"):
        VOCDetection(tmp_path / "devkit")


# --------------------------------------------------------------------------- bad masks
def _shrink_mask(mask: Path) -> None:
    Image.open(mask).resize((40, 48), Image.NEAREST).save(mask)


def _mask_with_class_42(mask: Path) -> None:
    arr = np.asarray(Image.open(mask)).copy()
    arr[0, 0] = 42
    im = Image.frombytes("P", (48, 48), arr.tobytes())
    im.putpalette(synthetic.voc_palette())
    im.save(mask)


@pytest.mark.parametrize(
    ("index", "spoil", "match"),
    [
        (0, _shrink_mask, r"mask is 40x48 but its image is 48x48"),
        (1, _mask_with_class_42, r"mask values \[42\] are not classes"),
    ],
    ids=["mask_size_differs_from_image", "mask_with_unknown_class_index"],
)
def test_bad_mask_is_refused_on_load(voc: Path, index: int, spoil, match: str) -> None:
    spoil(voc / "SegmentationClass" / f"val_{index:06d}.png")
    ds = VOCSegmentation(voc, "val")
    with pytest.raises(DataError, match=match):
        ds[index]


def test_rgb_mask_and_missing_mask(voc: Path) -> None:
    mask = voc / "SegmentationClass" / "val_000000.png"
    Image.open(mask).convert("RGB").save(mask)
    with pytest.raises(DataError, match="index images"):
        VOCSegmentation(voc, "val")[0]
    mask.unlink()
    with pytest.raises(DataError, match="missing mask"):
        VOCSegmentation(voc, "val")


def test_cityscapes_bad_inputs(cs: Path, tmp_path: Path) -> None:
    gts = sorted((cs / "gtFine/train/fmnist").glob("*_labelIds.png"))
    Image.fromarray(np.full((32, 60), 7, dtype=np.uint8)).save(gts[0])  # wrong size
    Image.fromarray(np.full((32, 64), 99, dtype=np.uint8)).save(gts[1])  # no such label id
    ds = CityscapesSegmentation(cs, "train")
    with pytest.raises(DataError, match=r"label is 60x32 but its image is 64x32"):
        ds[0]
    with pytest.raises(DataError, match=r"label ids \[99\] are not Cityscapes labels"):
        ds[1]
    gts[2].unlink()
    with pytest.raises(DataError, match="have no gtFine label"):
        CityscapesSegmentation(cs, "train")
    with pytest.raises(DataError, match="splits there"):
        CityscapesSegmentation(cs, "test")
    with pytest.raises(DataError, match="not a Cityscapes root"):
        CityscapesSegmentation(tmp_path / "empty", "train")
