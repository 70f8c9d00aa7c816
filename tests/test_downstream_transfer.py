"""Detectors and segmenters on a registry classifier's trunk (issue 12): every trunk tensor transfers, bad
backbones / data are one-line errors, folded models give the same boxes and masks, and a tiny study runs."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from _datagen import write_fashion_mnist
from safetensors.torch import load_file, save_file

import refconv
from refconv.cli import main as cli_main
from refconv.downstream import downstream_config, build_datasets, build_model, run_downstream
from refconv.models.trunk import load_backbone
from refconv.downstream.export import compare_detections, compare_masks
from refconv.downstream.metrics import DetectionMetric
from refconv.models.detection import DOWNSTREAM_FORMAT, scope_patterns
from refconv.downstream.study import StudyConfig, TaskPlan, load_study_config, packaged_studies, run_study
from refconv.downstream.synthetic import SyntheticConfig, write_voc
from refconv.engine import RunInterrupted
from refconv.engine.checkpoint import load_checkpoint
from refconv.errors import CheckpointError, ConfigError, ModelError, UnknownPretrainedError
from refconv.models import pretrained

pytestmark = pytest.mark.filterwarnings("ignore::refconv.convert.RefConvWarning")

BACKBONE = "fmnist/mobilenetv3_small_100"
ARCHS = {"ssdlite_timm": 11, "deeplabv3_timm": 11, "lraspp_timm": 11}
HEAD = ("conv_head.", "classifier.")  # timm MobileNetV3's forward_head: not part of the trunk


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=30, n_test=10)


@pytest.fixture(scope="module")
def classifier_state() -> dict[str, torch.Tensor]:
    return load_file(str(pretrained.weights_path(BACKBONE)))


def _tiny(fmnist: Path, out: Path, **kw):
    base = dict(task="detection", arch="ssdlite_timm", data="synthetic", data_dir=str(out.parent / "data" / kw.get(
        "task", "detection")), fashion_mnist_dir=str(fmnist), synthetic_train=4, synthetic_val=2, synthetic_size=48,
        epochs=1, batch_size=2, lr=0.01, onnx=False, out=str(out), weights_backbone=BACKBONE)
    base.update(kw)
    return downstream_config(**base)  # the engine's RunConfig of a detection / segmentation run


# ----------------------------------------------------------------------------------------------- transfer
@pytest.mark.parametrize("arch", list(ARCHS))
def test_transfer_loads_every_trunk_tensor(arch: str, classifier_state: dict) -> None:
    model = build_model(arch, ARCHS[arch], weights_backbone=BACKBONE)
    info = model.refconv_backbone
    trunk_keys = [k for k in classifier_state if not k.startswith(HEAD)]
    assert len(trunk_keys) == 240  # MobileNetV3-Small: every tensor before conv_head
    assert info["loaded"] == info["trunk_tensors"] == len(trunk_keys)
    assert info["dropped"] == sorted(k for k in classifier_state if k.startswith(HEAD))
    assert info["name"] == BACKBONE and info["test_top1"] == pretrained.read_card(BACKBONE)["test_top1"]
    body = model.backbone.trunk.body.state_dict()
    assert sorted(body) == sorted(trunk_keys)
    assert all(torch.equal(body[k], classifier_state[k]) for k in trunk_keys)


@pytest.mark.parametrize("arch", ["ssdlite_timm", "deeplabv3_timm"])
def test_gray_input_reproduces_the_classifier(arch: str) -> None:
    """RGB in, the classifier's own normalised grayscale input to the trunk: its features equal the classifier's."""
    model = build_model(arch, 11, weights_backbone=BACKBONE).eval()
    clf = pretrained.load(BACKBONE).eval()
    gray = torch.rand(2, 1, 64, 64)
    rgb = gray.repeat(1, 3, 1, 1)
    if arch != "ssdlite_timm":  # segmenters take ImageNet-normalised RGB
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        rgb = (rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    card = pretrained.read_card(BACKBONE)
    with torch.no_grad():
        want = clf.forward_features((gray - card["mean"][0]) / card["std"][0])
        trunk = model.backbone.trunk
        got = trunk.body(trunk.input(rgb))[-1]
    if arch == "ssdlite_timm":  # output stride 32, as the classifier
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    else:  # dilated to output stride 16: same weights, other maps; the input adapter is what is checked here
        torch.testing.assert_close(trunk.input(rgb), (gray - card["mean"][0]) / card["std"][0], rtol=1e-5, atol=1e-5)


def test_backbone_of_another_architecture_or_channels(tmp_path: Path, classifier_state: dict) -> None:
    large = tmp_path / "large.safetensors"
    save_file(timm.create_model("mobilenetv3_large_100", in_chans=1, num_classes=10).state_dict(), str(large))
    with pytest.raises(ModelError) as err:
        build_model("ssdlite_timm", 11, weights_backbone=str(large))
    msg = str(err.value)
    assert "\n" not in msg and "does not fit the timm mobilenetv3_small_100 trunk" in msg
    assert re.search(r"conv_stem\.weight|blocks\.\d", msg) and "vs" in msg and "fmnist/mobilenetv3_small_100" in msg

    rgb = tmp_path / "rgb.safetensors"
    save_file(timm.create_model("mobilenetv3_small_100", in_chans=3, num_classes=10).state_dict(), str(rgb))
    with pytest.raises(ModelError, match=r"conv_stem\.weight' \(16, 3, 3, 3\) in the file vs \(16, 1, 3, 3\)"):
        build_model("deeplabv3_timm", 11, weights_backbone=str(rgb))

    # another class count: the head is never used, so the trunk still transfers whole; the head is reported
    other = dict(classifier_state)
    other["classifier.weight"], other["classifier.bias"] = torch.zeros(100, 1024), torch.zeros(100)
    path = tmp_path / "c100.safetensors"
    save_file(other, str(path))
    model = build_model("ssdlite_timm", 11, weights_backbone=str(path))
    assert model.refconv_backbone["loaded"] == 240 and "classifier.weight" in model.refconv_backbone["dropped"]

    missing = {k: v for k, v in classifier_state.items() if not k.startswith("blocks.5.")}
    path = tmp_path / "cut.safetensors"
    save_file(missing, str(path))
    with pytest.raises(ModelError, match=r"missing from the file: blocks\.5\.0\.conv\.weight"):
        build_model("lraspp_timm", 11, weights_backbone=str(path))


def test_backbone_names_that_do_not_fit(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a torchvision weights name .*fmnist/mobilenetv3_small_100"):
        build_model("ssdlite_timm", 11, weights_backbone="IMAGENET1K_V1")
    with pytest.raises(UnknownPretrainedError, match="fmnist/mobilenetv3_small_100"):
        build_model("ssdlite_timm", 11, weights_backbone="fmnist/resnet_nope")
    model = build_model("ssdlite_timm", 11)
    ckpt = tmp_path / "last.pt"
    torch.save({"format": DOWNSTREAM_FORMAT, "task": "detection", "arch": "ssdlite_timm",
                "state_dict": model.state_dict()}, ckpt)
    with pytest.raises(ModelError, match="is a detection checkpoint, not a classifier: pass it as --weights"):
        load_backbone(model, ckpt)


# ----------------------------------------------------------------------------------------------- fold
def _refocused(arch: str) -> torch.nn.Module:
    model = build_model(arch, 11, weights_backbone=BACKBONE, image_size=64 if arch == "ssdlite_timm" else None)
    refconv.convert(model, include=scope_patterns(arch, "backbone"))
    assert len(refconv.refconv_layers(model)) == 12  # the stem and the 11 depthwise convs of the trunk
    with torch.no_grad():  # move the model off its initial state: BN statistics and the RT weights
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _stock(arch: str, folded: torch.nn.Module) -> torch.nn.Module:
    stock = build_model(arch, 11, image_size=64 if arch == "ssdlite_timm" else None)
    stock.load_state_dict(folded.state_dict(), strict=True)
    return stock.eval()


def test_folded_detector_gives_the_same_boxes() -> None:
    model = _refocused("ssdlite_timm")
    stock = _stock("ssdlite_timm", refconv.reparameterize(copy.deepcopy(model)))
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with torch.no_grad():
        a, b = model(images), stock(images)
    cmp = compare_detections(a, b)
    assert cmp["detections"] > 0 and cmp["count_equal"] and cmp["unmatched"] == 0
    assert cmp["max_box_err"] < 1e-2 and cmp["max_score_err"] < 1e-4


@pytest.mark.parametrize("arch", ["deeplabv3_timm", "lraspp_timm"])
def test_folded_segmenter_gives_the_same_masks(arch: str) -> None:
    model = _refocused(arch)
    stock = _stock(arch, refconv.reparameterize(copy.deepcopy(model)))
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        a, b = model(x)["out"], stock(x)["out"]
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    masks = compare_masks(a, b)
    assert masks["pixels"] == 2 * 64 * 128 and masks["pixels_equal"] > 0.999 * masks["pixels"]
    same = a.argmax(1) == b.argmax(1)  # a pixel may only flip where its two best classes tie within the difference
    top2 = a.topk(2, dim=1).values
    assert bool(((top2[:, 0] - top2[:, 1]) <= 2 * float((a - b).abs().max()))[~same].all())


def test_compare_masks() -> None:
    a = torch.tensor([[[[2.0, 0.0, 0.0]], [[0.0, 1.0, 0.5]]]])  # (1, 2 classes, 1, 3): masks 0, 1, 1
    b = a.clone()
    assert compare_masks(a, b) == {"pixels": 3, "pixels_equal": 3}
    b[0, 0, 0, 2] = 0.6  # the last pixel becomes class 0
    assert compare_masks(a, b) == {"pixels": 3, "pixels_equal": 2}


# ----------------------------------------------------------------------------------------------- bad data
def test_images_with_no_boxes_train_and_evaluate(tmp_path: Path, fmnist: Path) -> None:
    root = write_voc(tmp_path / "voc", SyntheticConfig(num_train=4, num_val=2, height=48, width=48,
                                                       scale=(0.5, 1.0)), data_dir=fmnist)
    for image_id in ("train_000000", "val_000000"):  # keep the image, drop every object of its annotation
        xml = root / "Annotations" / f"{image_id}.xml"
        xml.write_text(re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S))
    cfg = _tiny(fmnist, tmp_path / "run", data="voc", data_dir=str(root), synthetic_train=4)
    train, val, _, _ = build_datasets(cfg)
    assert train[0][1]["boxes"].shape == (0, 4) and val[0][1]["labels"].numel() == 0
    res = run_downstream(cfg)  # one epoch over the empty image, evaluation counting it, fold and check
    assert res.final["images"] == 2 and 0.0 <= res.final["map_50"] <= 1.0
    assert res.fold["detections"]["unmatched"] == 0
    metric = DetectionMetric()  # an image with no box and no detection is no error either
    metric.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}],
                  [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert "map_50" in metric.compute()


def test_cli_names_the_backbone_and_refuses_a_non_voc_dir(tmp_path: Path, fmnist: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    cfg = _tiny(fmnist, tmp_path / "run")
    args = ["detect", "--arch", "ssdlite_timm", "--backbone-weights", BACKBONE, "--data-dir", cfg.data_dir,
            "--fashion-mnist-dir", str(fmnist), "--synthetic-train", "4", "--synthetic-val", "2",
            "--synthetic-size", "48", "--epochs", "1", "--batch-size", "2", "--no-onnx", "--method", "baseline",
            "--out", str(tmp_path / "run")]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    named = ("backbone fmnist/mobilenetv3_small_100, 91.80 % Fashion-MNIST test top-1 (240/240 trunk tensors "
             "loaded)")
    assert named in captured.out
    err = captured.err.splitlines()
    assert named in next(line for line in err if "1 process(es) on cpu" in line)  # the engine's start-of-run line
    assert any(re.match(r"\s*backbone\s.*" + re.escape(named[len("backbone "):]), line) for line in err)  # summary
    done = json.loads((tmp_path / "run" / "done.json").read_text())
    assert done["extra"]["backbone"]["name"] == BACKBONE  # done.json is the engine's RunResult
    (tmp_path / "notvoc" / "images").mkdir(parents=True)
    bad = ["detect", "--arch", "ssdlite_timm", "--data", "voc", "--data-dir", str(tmp_path / "notvoc"),
           "--out", str(tmp_path / "bad")]
    assert cli_main(bad) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a Pascal VOC directory: missing JPEGImages/, Annotations/, ImageSets/" in err
    seg = ["segment", "--arch", "deeplabv3_timm", "--data", "cityscapes", "--data-dir", str(tmp_path / "notvoc"),
           "--out", str(tmp_path / "bad2")]
    assert cli_main(seg) == 1
    assert "not a Cityscapes root" in capsys.readouterr().err


def test_resume_and_runs_from_a_checkpoint_keep_the_backbone(tmp_path: Path, fmnist: Path, faults) -> None:
    # the engine resumes interrupted runs only (a finished one is its result): Ctrl-C in epoch 2, then --resume
    cfg = _tiny(fmnist, tmp_path / "base", method="baseline", epochs=2, checkpoint_every_steps=1)
    faults.interrupt_after(3)
    with pytest.raises(RunInterrupted):
        run_downstream(cfg)
    faults.clear()
    first = load_checkpoint(tmp_path / "base" / "checkpoints" / "last.pt")["backbone"]
    assert first["name"] == BACKBONE
    resumed = run_downstream(cfg, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2] and resumed.extra["backbone"] == first
    ref = run_downstream(_tiny(fmnist, tmp_path / "ref", weights_backbone=None,
                               weights=str(tmp_path / "base" / "checkpoints" / "last.pt")))
    assert ref.extra["backbone"]["name"] == BACKBONE and ref.extra["backbone"]["loaded"] == 240  # via the checkpoint
    assert json.loads(Path(str(ref.weights_path).replace(".safetensors", ".json")).read_text())["backbone"]["name"] \
        == BACKBONE


# ----------------------------------------------------------------------------------------------- the study
def test_packaged_studies_validate() -> None:
    assert {"transfer", "transfer-tiny"} <= set(packaged_studies())
    for name in packaged_studies():
        cfg = load_study_config(name)
        assert len(cfg.seeds) >= (3 if name == "transfer" else 2) and cfg.tasks
    with pytest.raises(ConfigError, match="must not set"):
        StudyConfig(name="x", backbone=BACKBONE, seeds=[0], tasks=[TaskPlan(
            "detection", "ssdlite_timm", "synthetic", 1, 1, run={"epochs": 3})]).validate()
    with pytest.raises(ConfigError, match="unknown study keys"):
        StudyConfig.from_dict({"name": "x", "backbone": BACKBONE, "seeds": [0], "tasks": [], "sede": 1})


def _tiny_study(tmp_path: Path, fmnist: Path, *, tasks: tuple[str, ...], arms: list[str]) -> StudyConfig:
    cfg = load_study_config("transfer-tiny", work_dir=str(tmp_path / "work"), out=str(tmp_path / "out"))
    cfg.tasks = [p for p in cfg.tasks if p.task in tasks]
    cfg.arms = arms
    for plan in cfg.tasks:
        plan.run["fashion_mnist_dir"] = str(fmnist)
        plan.run["data_dir"] = str(tmp_path / "data" / plan.task)
    return cfg.validate()


def test_tiny_detection_study_end_to_end(tmp_path: Path, fmnist: Path) -> None:
    cfg = _tiny_study(tmp_path, fmnist, tasks=("detection",), arms=["refconv", "continue"])
    lines: list[str] = []
    res = run_study(cfg, log=lines.append, command="refconv downstream-study transfer-tiny")
    det = res["tasks"]["detection"]
    assert det["backbone"]["loaded"] == 240 and len(det["baseline"]["history"]) == 1
    assert set(det["tables"]) == {"map_50", "map"}
    diff = det["tables"]["map_50"]["refconv_vs"]["continue"]
    assert diff["n"] == len(cfg.seeds) == 2 and diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    assert set(det["tables"]["map"]["refconv_vs"]) == {"continue", "baseline"}
    assert all(r["fold"]["detections"]["unmatched"] == 0 for r in det["runs"]["refconv"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "refconv downstream-study transfer-tiny" in report and "Fold + equivalence" in report
    assert "91.80 % Fashion-MNIST test top-1" in report
    assert json.loads((tmp_path / "out" / "results.json").read_text())["wall_time_s"] > 0
    lines.clear()  # a rerun reuses every finished run
    run_study(cfg, log=lines.append)
    assert sum("reusing" in s for s in lines) == 1 + len(cfg.seeds) * len(cfg.arms)
    cfg.tasks[0].run["lr"] = 0.02  # another recipe in the same work_dir: refused before anything is touched
    with pytest.raises(CheckpointError, match=r"different configuration \(lr: 0\.01 -> 0\.02\).*--overwrite"):
        run_study(cfg, log=lines.append)
    done = tmp_path / "work" / "detection" / "baseline" / "done.json"
    assert json.loads(done.read_text())["config"]["lr"] == 0.01
    lines.clear()  # --overwrite recomputes every run with the new recipe
    run_study(cfg, log=lines.append, overwrite=True)
    assert json.loads(done.read_text())["config"]["lr"] == 0.02 and not any("reusing" in s for s in lines)
    shutil.rmtree(tmp_path / "work")


@pytest.mark.slow
def test_packaged_tiny_study_both_tasks(tmp_path: Path, fmnist: Path) -> None:
    cfg = _tiny_study(tmp_path, fmnist, tasks=("detection", "segmentation"), arms=["refconv", "continue", "finetune"])
    res = run_study(cfg, log=lambda s: None)
    seg = res["tasks"]["segmentation"]
    assert {"miou", "pixel_acc"} == set(seg["tables"]) and seg["backbone"]["loaded"] == 240
    assert all(r["fold"]["max_abs_err"] < 1e-3 for r in seg["runs"]["refconv"])
    masks = [r["fold"]["masks"] for r in seg["runs"]["refconv"]]
    assert masks and all(m["pixels_equal"] > 0.999 * m["pixels"] for m in masks)
