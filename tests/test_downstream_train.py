"""Tiny end-to-end runs (train -> evaluate -> fold -> export) on generated VOC- and Cityscapes-format data,
the protocol's methods from one baseline, resume, checkpoints of another task, and the CLI."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _datagen import write_fashion_mnist
from safetensors.torch import load_file

from refconv.convert import RefConvWarning
from refconv.downstream import (
    build_datasets,
    build_model,
    downstream_config,
    load_checkpoint,
    model_from_checkpoint,
    run_downstream,
)
from refconv.cli.downstream import add_detect_parser, add_segment_parser, register
from refconv.downstream.metrics import DetectionMetric, SegmentationMetric
from refconv.engine import RunConfig
from refconv.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::refconv.convert.RefConvWarning")


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=30, n_test=10)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def _cfg(fmnist: Path, data_root: Path, out: Path, **kw) -> RunConfig:
    base = dict(task="detection", arch="ssdlite320_mobilenet_v3_large", data="synthetic",
                data_dir=str(data_root / kw.get("data", "synthetic") / kw.get("task", "detection")),
                fashion_mnist_dir=str(fmnist), synthetic_train=4, synthetic_val=2, synthetic_size=48,
                epochs=1, batch_size=2, lr=0.01, onnx=False, out=str(out))
    base.update(kw)
    return downstream_config(**base)


def _stock_keys(arch: str, num_classes: int) -> list[str]:
    return list(build_model(arch, num_classes).state_dict())


def _reevaluate(model: torch.nn.Module, cfg: RunConfig) -> dict:
    """Score ``model`` on the run's val split with a loop of this test's own (metrics from refconv.downstream.metrics,
    which test_downstream_metrics checks against hand-computed cases and pycocotools)."""
    _, val, _, num_classes = build_datasets(cfg)
    model.eval()
    metric = DetectionMetric() if cfg.task == "detection" else SegmentationMetric(num_classes)
    with torch.no_grad():
        for i in range(len(val)):
            image, target = val[i]
            if cfg.task == "detection":
                metric.update(model([image]), [target])
            else:
                logits = model(image[None])["out"]
                logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
                metric.update(logits[0].argmax(0), target)
    return {**metric.compute(), "images": len(val)}


def test_detection_end_to_end_refconv(fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(fmnist, data_root, tmp_path / "run", onnx=True)
    res = run_downstream(cfg)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "log.txt", "metrics.jsonl", "checkpoints",
                                                "folded.safetensors", "folded.json", "model.onnx", "done.json"}
    assert 0.0 <= res.final["map_50"] <= 1.0 and 0.0 <= res.final["map"] <= res.final["map_50"] + 1e-9
    # the folded detector: the stock model's keys, strict load, same outputs and the same metrics
    weights = load_file(run / "folded.safetensors")
    assert sorted(weights) == sorted(_stock_keys("ssdlite320_mobilenet_v3_large", 11))
    stock = build_model("ssdlite320_mobilenet_v3_large", 11, image_size=48)
    stock.load_state_dict(weights, strict=True)
    # scored from scratch, the strict-loaded file gets the run's recorded mAP
    again = _reevaluate(stock, cfg)
    assert again["images"] == res.final["images"] == 2
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert again[key] == pytest.approx(res.final[key], abs=1e-6, nan_ok=True), key
    # the folded detector finds the same boxes: as many per image, every one matched, same scores and coordinates
    det = res.fold["detections"]
    assert res.fold["rel_err"] < 1e-5 and det["unmatched"] == 0 and det["count_equal"] and det["detections"] > 0
    assert det["max_box_err"] < 1e-3 and det["max_score_err"] < 1e-5
    assert res.folded_metrics["map_50"] == pytest.approx(res.final["map_50"], abs=1e-6)
    assert res.onnx["unmatched"] == 0 and res.onnx["max_abs_err"] < 1e-3
    assert res.deploy_params < res.trainable_params  # training-time cost vs deployed cost
    done = json.loads((run / "done.json").read_text())
    assert done["method"] == "refconv" and done["weights_path"].endswith("folded.safetensors")
    side = json.loads((run / "folded.json").read_text())
    assert side["task"] == "detection" and side["classes"][1] == "tshirt" and side["image_size"] == [48, 48]
    # the checkpoint rebuilds the RefConv model
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt", task="detection")
    model = model_from_checkpoint(ckpt)
    x = [torch.rand(3, 48, 48)]
    with torch.no_grad():
        a, b = model(x)[0], stock.eval()(x)[0]
    assert torch.allclose(torch.sort(a["scores"]).values, torch.sort(b["scores"]).values, atol=1e-5)


@pytest.mark.parametrize("arch,data", [("lraspp_mobilenet_v3_large", "synthetic"),
                                       ("deeplabv3_mobilenet_v3_large", "synthetic-cityscapes")])
def test_segmentation_end_to_end_refconv(fmnist: Path, data_root: Path, tmp_path: Path, arch: str, data: str) -> None:
    cfg = _cfg(fmnist, data_root, tmp_path / "run", task="segmentation", arch=arch, data=data, synthetic_size=32,
               onnx=arch.startswith("lraspp"))
    res = run_downstream(cfg)
    n_cls = 11 if data == "synthetic" else 19
    assert 0.0 <= res.final["miou"] <= 1.0 and len(res.final["iou_per_class"]) == n_cls
    assert res.folded_metrics["miou"] == pytest.approx(res.final["miou"], abs=1e-6)
    assert res.fold["rel_err"] < 1e-5
    weights = load_file(tmp_path / "run" / "folded.safetensors")
    assert sorted(weights) == sorted(_stock_keys(arch, n_cls))
    stock = build_model(arch, n_cls)
    stock.load_state_dict(weights, strict=True)
    # scored from scratch, the strict-loaded file gets the run's recorded mIoU and per-class IoU
    again = _reevaluate(stock, cfg)
    assert again["miou"] == pytest.approx(res.final["miou"], abs=1e-6)
    assert again["iou_per_class"] == pytest.approx(res.final["iou_per_class"], abs=1e-6, nan_ok=True)
    assert again["pixel_acc"] == pytest.approx(res.final["pixel_acc"], abs=1e-6)
    present = [v for v in res.final["iou_per_class"] if v is not None and v == v]  # mean over classes that occur
    assert res.final["miou"] == pytest.approx(sum(present) / len(present), abs=1e-9)
    if res.onnx:
        assert res.onnx["max_abs_err"] < 1e-4
    if data == "synthetic-cityscapes":
        assert (data_root / data / "segmentation" / "gtFine" / "train").is_dir()
        assert res.final["images"] == 2


def test_protocol_methods_from_one_baseline(fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    kw = dict(task="segmentation", arch="lraspp_mobilenet_v3_large", synthetic_size=32)
    base = run_downstream(_cfg(fmnist, data_root, tmp_path / "base", method="baseline", **kw))
    assert base.weights_path.name == "model.safetensors" and base.fold is None
    start = str(tmp_path / "base" / "checkpoints" / "last.pt")
    # refconv with zero-initialised RT and no training reproduces the baseline exactly
    ref = run_downstream(_cfg(fmnist, data_root, tmp_path / "ref0", method="refconv", init="zeros", epochs=0,
                              weights=start, **kw))
    assert ref.final["miou"] == pytest.approx(base.final["miou"], abs=1e-6)
    assert ref.final["pixel_acc"] == pytest.approx(base.final["pixel_acc"], abs=1e-6)
    ft = run_downstream(_cfg(fmnist, data_root, tmp_path / "ft", method="finetune", weights=start, **kw))
    cont = run_downstream(_cfg(fmnist, data_root, tmp_path / "cont", method="continue", weights=start, **kw))
    assert ft.history[0]["lr"] == pytest.approx(0.1 * cont.history[0]["lr"])  # finetune: lr x 0.1
    # a RefConv checkpoint as the start of a plain method is folded first (with a warning)
    with pytest.warns(RefConvWarning, match="folded before continue"):
        run_downstream(_cfg(fmnist, data_root, tmp_path / "cont2", method="continue", epochs=0,
                            weights=str(tmp_path / "ref0" / "checkpoints" / "last.pt"), **kw))


def test_reruns_and_refusals_as_refconv_train(fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    """The engine's run-directory rules: the same finished config is returned cached, another is refused
    (naming --overwrite), and --resume continues only the run's own config."""
    kw = dict(task="segmentation", arch="lraspp_mobilenet_v3_large", synthetic_size=32)
    cfg = _cfg(fmnist, data_root, tmp_path / "run", **kw)
    first = run_downstream(cfg)
    again = run_downstream(cfg)
    assert again.cached and again.final == first.final
    cfg.epochs = 2
    with pytest.raises(CheckpointError, match="different config .*epochs: 1 -> 2.*--overwrite"):
        run_downstream(cfg)
    with pytest.raises(CheckpointError, match="cannot resume .*config differs"):
        run_downstream(cfg, resume=True)
    res = run_downstream(cfg, overwrite=True)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert res.history[1]["lr"] < res.history[0]["lr"]  # one cosine schedule over both epochs


def test_checkpoint_of_another_task(fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    seg = _cfg(fmnist, data_root, tmp_path / "seg", task="segmentation", arch="lraspp_mobilenet_v3_large",
               synthetic_size=32, epochs=0)
    run_downstream(seg)
    ckpt = tmp_path / "seg" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="is a segmentation checkpoint.*not a detection one"):
        load_checkpoint(ckpt, task="detection")
    with pytest.raises(CheckpointError, match="segmentation checkpoint"):
        run_downstream(_cfg(fmnist, data_root, tmp_path / "det", weights=str(ckpt)))
    with pytest.raises(CheckpointError, match="config differs .*task: 'segmentation' -> 'detection'"):
        shutil.copytree(tmp_path / "seg", tmp_path / "det2")  # resume a detection run from a segmentation run
        run_downstream(_cfg(fmnist, data_root, tmp_path / "det2"), resume=True)
    torch.save({"format": "refconv-run", "arch": "tv/mobilenet_v3_small", "state_dict": {}}, tmp_path / "cls.pt")
    with pytest.raises(CheckpointError, match="image-classification run checkpoint"):
        load_checkpoint(tmp_path / "cls.pt")


def test_bad_configs(fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="segmentation dataset"):
        run_downstream(_cfg(fmnist, data_root, tmp_path / "a", data="cityscapes", data_dir="x"))
    with pytest.raises(ConfigError, match="needs --data-dir"):
        run_downstream(_cfg(fmnist, data_root, tmp_path / "b", data="voc", data_dir=None))
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        run_downstream(_cfg(fmnist, data_root, tmp_path / "c", task="segmentation", arch="lraspp", batch_size=1))
    with pytest.raises(ConfigError, match="unknown config keys.*'lr_rate'"):
        downstream_config(task="detection", lr_rate=1)
    with pytest.raises(ConfigError, match="label_smoothing=0.1 is a classification setting"):
        downstream_config("detection", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="unknown task option 'scop'; did you mean 'scope'"):
        RunConfig(task="detection", model="ssdlite", data="synthetic", task_options={"scop": "all"}).validate()


def test_cli_detect_and_segment(fmnist: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="refconv")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "detect", "--fashion-mnist-dir", str(fmnist), "--data-dir", str(data_root / "synthetic" / "detection"),
        "--synthetic-train", "4", "--synthetic-val", "2", "--synthetic-size", "48", "--epochs", "1",
        "--batch-size", "2", "--no-onnx", "--method", "baseline", "--out", str(tmp_path / "cli"), "--json",
    ])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "detection" and out["method"] == "baseline" and "map_50" in out["final"]
    sub = argparse.ArgumentParser().add_subparsers()
    seg = add_segment_parser(sub)
    a = seg.parse_args(["--arch", "fcn_resnet50", "--scope", "all", "--include", "backbone.layer1", "--classes",
                        "a,b"])
    assert a.include == ["backbone.layer1"] and a.scope == "all"
    from refconv.cli.downstream import config_from_args

    cfg = config_from_args(a, "segmentation")
    assert cfg.task_options["classes"] == ["a", "b"] and cfg.task == "segmentation"
    assert cfg.task_options["aux_weight"] == 0.5 and cfg.method == "refconv" and cfg.lr == 0.01
    det = add_detect_parser(sub)
    assert det.parse_args(["--resume", "--out", "r"]).resume == "" and det.parse_args(["--resume", "r"]).resume == "r"
    with pytest.raises(SystemExit):  # no auxiliary head in a detector: no flag
        det.parse_args(["--aux-weight", "1"])
    with pytest.raises(ConfigError, match="method must be one of"):
        config_from_args(det.parse_args(["--method", "magic"]), "detection")
