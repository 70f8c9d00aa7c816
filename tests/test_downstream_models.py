"""Detector/segmenter factory, weights loading, scopes, and fold equivalence on every supported architecture."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import refconv
from refconv.models import detection as M
from refconv.downstream.export import (
    compare_detections,
    network_outputs,
    output_equivalence,
)
from refconv.errors import CheckpointError, ConfigError, ModelError

NUM_CLASSES = 5


def _randomise(model: nn.Module, task: str) -> None:
    """Random BN statistics (folding must not rely on identity BN) and, for detectors, a classification head
    with spread-out logits so that post-processed detections are not a sea of tied scores."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if task == "detection":
            for name, p in model.head.classification_head.named_parameters():
                p.mul_(20.0)


# (arch, input size, include patterns: None = the whole backbone scope). ResNet-50 and VGG16 convert a
# representative subset by default: folding their 512-channel dense layers costs minutes in float64 on a CPU
# (the full scopes run under -m slow).
CASES = [
    ("ssdlite320_mobilenet_v3_large", 64, None),
    ("deeplabv3_mobilenet_v3_large", 64, None),
    ("lraspp_mobilenet_v3_large", 64, None),
    ("deeplabv3_resnet50", 64, ["backbone.conv1", "backbone.layer1"]),
    ("fcn_resnet50", 64, ["backbone.conv1", "backbone.layer1.0"]),
    ("ssd300_vgg16", 268, ["backbone.features.0", "backbone.features.2", "backbone.features.5"]),
]
SLOW_CASES = [
    ("deeplabv3_resnet50", 64, None),
    ("fcn_resnet50", 64, None),
    ("ssd300_vgg16", 268, None),
]


def _fold_equivalence(arch: str, size: int, include: list[str] | None, scope: str = "backbone") -> None:
    spec = M.get_spec(arch)
    model = M.build_model(arch, NUM_CLASSES, image_size=size).eval()
    _randomise(model, spec.task)
    stock_keys = list(model.state_dict())
    refconv.convert(model, include=include or M.scope_patterns(arch, scope))  # init "default": Wt != Wb
    layers = refconv.refconv_layers(model)
    assert layers
    if include is None and scope == "backbone":
        assert all(any(n == p or n.startswith(p + ".") for p in spec.backbone) for n in layers)
    model.eval()
    n = 1 if size > 128 else 2  # SSD300's 268 px VGG pass costs a second a image on one core
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    images = list(x) if spec.task == "detection" else x
    folded = refconv.reparameterize(copy.deepcopy(model)).eval()
    assert list(folded.state_dict()) == stock_keys
    stock = M.build_model(arch, NUM_CLASSES, image_size=size).eval()
    stock.load_state_dict(folded.state_dict(), strict=True)
    rep = output_equivalence(model, stock, spec.task, images)
    assert rep["rel_err"] < 1e-5, rep
    if spec.task == "detection":
        det = rep["detections"]
        assert det["count_equal"] and det["unmatched"] == 0 and det["detections"] > 0, det
        assert det["max_score_err"] < 1e-5 and det["max_box_err"] < 1e-3, det
    else:
        assert set(network_outputs(stock, "segmentation", images)) == {"out", *(["aux"] if getattr(stock, "aux_classifier", None) else [])}


@pytest.mark.parametrize("arch,size,include", CASES, ids=[c[0] for c in CASES])
def test_fold_equivalence(arch: str, size: int, include: list[str] | None) -> None:
    _fold_equivalence(arch, size, include)


@pytest.mark.slow
@pytest.mark.parametrize("arch,size,include", SLOW_CASES, ids=[c[0] for c in SLOW_CASES])
def test_fold_equivalence_full_backbone(arch: str, size: int, include: list[str] | None) -> None:
    _fold_equivalence(arch, size, include)


def test_fold_equivalence_whole_model_scope() -> None:
    _fold_equivalence("ssdlite320_mobilenet_v3_large", 64, None, scope="all")


def test_scope_patterns_select_the_trunk() -> None:
    assert M.scope_patterns("ssdlite", "backbone") == ["backbone.features"]
    assert M.scope_patterns("deeplabv3_resnet50", "all") is None
    with pytest.raises(ConfigError, match="scope"):
        M.scope_patterns("ssdlite", "head")
    model = M.build_model("ssd300_vgg16", NUM_CLASSES)
    plans = refconv.plan_conversion(model, include=M.scope_patterns("ssd300_vgg16", "backbone"))
    names = [p.name for p in plans]
    assert "backbone.extra.0.5" in names and "backbone.extra.0.7.1" not in names  # conv5_3 yes, fc6 no
    assert len(names) == 13  # VGG16's 13 convolutions


def test_names_aliases_and_tasks() -> None:
    # the torchvision builders first (the CLI's default is the first), then the heads on a registry trunk
    assert M.list_archs("detection") == ["ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "ssdlite_timm"]
    assert len(M.list_archs("segmentation")) == 4 + 2
    assert M.get_spec("lraspp").name == "lraspp_mobilenet_v3_large"
    with pytest.raises(ModelError, match="unknown architecture 'yolo'"):
        M.get_spec("yolo")
    with pytest.raises(ModelError, match="is a segmentation model"):
        M.get_spec("fcn_resnet50", "detection")
    with pytest.raises(ConfigError, match="num_classes"):
        M.build_model("ssdlite", 1)


def test_image_size_checks() -> None:
    with pytest.raises(ConfigError, match="at least 268"):
        M.build_model("ssd300_vgg16", NUM_CLASSES, image_size=128)
    model = M.build_model("ssdlite", NUM_CLASSES, image_size=48)
    assert model.transform.fixed_size == (48, 48)
    out = model.eval()([torch.rand(3, 100, 80)])[0]
    assert out["boxes"].shape[1] == 4 and (out["boxes"][:, 2] <= 80.01).all()  # mapped back to the input image


# --------------------------------------------------------------------------- weights
def test_full_weights_file_and_new_head(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = M.build_model("lraspp", 11)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    same = M.build_model("lraspp", 11, weights=tmp_path / "w.pth")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), same.state_dict().values()))
    caplog.set_level("INFO")
    other = M.build_model("lraspp", NUM_CLASSES, weights=str(tmp_path / "w.pth"))
    sd = other.state_dict()
    assert torch.equal(sd["backbone.0.0.weight"], src.state_dict()["backbone.0.0.weight"])
    assert sd["classifier.low_classifier.weight"].shape[0] == NUM_CLASSES
    assert "re-initialised" in caplog.text


def test_aux_head_follows_the_weights(tmp_path: Path) -> None:
    src = M.build_model("deeplabv3_mobilenet_v3_large", NUM_CLASSES, aux_loss=True)
    torch.save(src.state_dict(), tmp_path / "aux.pth")
    model = M.build_model("deeplabv3_mobilenet_v3_large", NUM_CLASSES, weights=tmp_path / "aux.pth")
    assert model.aux_classifier is not None
    want, got = src.state_dict(), model.state_dict()
    assert got.keys() == want.keys() and any(k.startswith("aux_classifier.") for k in got)
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, different  # the auxiliary head too: loaded, not re-initialised
    plain = M.build_model("deeplabv3_mobilenet_v3_large", NUM_CLASSES)
    assert plain.aux_classifier is None  # without weights holding one, no auxiliary head
    with pytest.raises(ConfigError, match="no auxiliary head"):
        M.build_model("lraspp", NUM_CLASSES, aux_loss=True)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    sd = M.build_model("lraspp", NUM_CLASSES).state_dict()
    sd["backbone.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="shape mismatch.*backbone.0.0.weight"):
        M.build_model("lraspp", NUM_CLASSES, weights=tmp_path / "bad.pth")
    sd = M.build_model("lraspp", NUM_CLASSES).state_dict()
    del sd["backbone.1.block.0.0.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing from the file: backbone.1.block.0.0.weight"):
        M.build_model("lraspp", NUM_CLASSES, weights=tmp_path / "missing.pth")
    with pytest.raises(ModelError, match="neither a file nor a torchvision model weights name"):
        M.build_model("lraspp", NUM_CLASSES, weights="COCO_V9")
    with pytest.raises(CheckpointError, match="does not exist"):
        M.build_model("lraspp", NUM_CLASSES, weights=tmp_path / "nope.pth")


def test_classifier_weights_given_as_whole_model(tmp_path: Path) -> None:
    from torchvision.models import mobilenet_v3_large

    torch.save(mobilenet_v3_large(num_classes=10).state_dict(), tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="weights_backbone"):
        M.build_model("ssdlite", NUM_CLASSES, weights=tmp_path / "cls.pth")
    torch.save({"format": "refconv-run", "arch": "tv/mobilenet_v3_large", "state_dict": torch.load(tmp_path / "cls.pth")},
               tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match="image-classification checkpoint"):
        M.build_model("ssdlite", NUM_CLASSES, weights=tmp_path / "run.pt")


def test_local_backbone_file(tmp_path: Path) -> None:
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(3)
    cls = mobilenet_v3_large(num_classes=10)  # e.g. a Fashion-MNIST classifier: its classifier is dropped
    torch.save(cls.state_dict(), tmp_path / "mnv3.pth")
    seg = M.build_model("deeplabv3_mobilenet_v3_large", NUM_CLASSES, weights_backbone=tmp_path / "mnv3.pth")
    assert torch.equal(seg.backbone["0"][0].weight, cls.features[0][0].weight)
    assert torch.equal(seg.backbone["16"][0].weight, cls.features[16][0].weight)
    det = M.build_model("ssdlite", NUM_CLASSES, weights_backbone=tmp_path / "mnv3.pth")
    assert det.refconv_backbone_layout == "pretrained"
    assert torch.equal(det.backbone.features[0][0][0].weight, cls.features[0][0].weight)
    # a 1-channel (grayscale) classifier's stem is adapted to RGB
    gray = mobilenet_v3_large(num_classes=10)
    gray.features[0][0] = nn.Conv2d(1, 16, 3, 2, 1, bias=False)
    torch.save(gray.state_dict(), tmp_path / "gray.pth")
    seg = M.build_model("lraspp", NUM_CLASSES, weights_backbone=tmp_path / "gray.pth")
    # (each RGB channel gets a third of the gray kernel: a gray image replicated to RGB responds as before)
    assert torch.allclose(seg.backbone["0"][0].weight, gray.features[0][0].weight.expand(-1, 3, -1, -1) / 3)


def test_backbone_file_that_does_not_fit(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match="does not fit the ResNet backbone"):
        M.build_model("fcn_resnet50", NUM_CLASSES, weights_backbone=tmp_path / "r18.pth")
    seg_ckpt = tmp_path / "seg.pt"
    torch.save({"format": M.DOWNSTREAM_FORMAT, "task": "segmentation", "arch": "lraspp_mobilenet_v3_large",
                "state_dict": M.build_model("lraspp", NUM_CLASSES).state_dict()}, seg_ckpt)
    with pytest.raises(CheckpointError, match="not ImageNet backbone weights"):
        M.build_model("lraspp", NUM_CLASSES, weights_backbone=seg_ckpt)
    with pytest.raises(CheckpointError, match="segmentation checkpoint.*not detection"):
        M.build_model("ssdlite", NUM_CLASSES, weights=seg_ckpt)


def test_compare_detections_is_blind_to_tie_order() -> None:
    a = [{"boxes": torch.tensor([[0.0, 0, 1, 1], [2, 2, 3, 3]]), "scores": torch.tensor([0.5, 0.5]),
          "labels": torch.tensor([1, 1])}]
    b = [{k: v.flip(0) for k, v in a[0].items()}]
    assert compare_detections(a, b)["unmatched"] == 0
    c = [{**a[0], "boxes": torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6]])}]
    assert compare_detections(a, c)["unmatched"] == 1
