"""End to end on data written in the real on-disk formats: train -> eval -> fold for every method.

For each format (Fashion-MNIST IDX, CIFAR-10 pickles, ImageFolder PNGs) a baseline is trained once, then
refconv / continue / finetune start from it with the same budget. Checked: every run finishes with the
documented run directory; the folded weights load ``strict=True`` into a freshly built stock model and
score *exactly* (same correct count) what the RefConv model scored; ``refconv eval`` reproduces the run's
metrics from the run directory, the checkpoint and the weights file.
"""

from __future__ import annotations

import json

import pytest
import torch
from _artifacts import reevaluate
from _datagen import write_cifar, write_fashion_mnist, write_image_folder
from safetensors.torch import load_file

import refconv
from refconv.cli import main
from refconv.engine import RunConfig, run
from refconv.engine.artifacts import load_model
from refconv.models import create_model

MODEL = "timm/test_resnet"  # 0.4M params, BatchNorm, 3x3 convs: learns in a few steps on CPU


def _data(kind, root):
    if kind == "fashion-mnist":
        return "fashion-mnist", write_fashion_mnist(root, n_train=128, n_test=48), None
    if kind == "cifar10":
        return "cifar10", write_cifar(root, "cifar10", n_train=128, n_test=40), None
    return "imagefolder", write_image_folder(root, per_class={"train": 40, "val": 12}), 32


@pytest.fixture(scope="module", params=["fashion-mnist", "cifar10", "imagefolder"])
def baseline(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    data, data_dir, size = _data(request.param, root / "data")
    common = dict(model=MODEL, data=data, data_dir=str(data_dir), image_size=size, batch_size=32, lr=0.1,
                  warmup_epochs=0, progress="none")
    torch.manual_seed(0)
    result = run(RunConfig(epochs=2, out=str(root / "baseline"), **common))
    return root, common, result


def test_baseline_run_directory(baseline):
    root, common, res = baseline
    d = res.run_dir
    for name in ("config.yaml", "metrics.jsonl", "log.txt", "done.json", "checkpoints/last.pt", "checkpoints/best.pt",
                 "model.safetensors", "model.json"):
        assert (d / name).is_file(), name
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "test_loss", "test_top1", "test_top5", "lr", "images_per_s", "epoch_time_s"):
        assert all(key in r for r in rows), key
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns
    assert res.final["top1"] == rows[-1]["test_top1"]
    # the deployable file, loaded strict into a fresh stock model and scored on the test split from scratch,
    # gets exactly the correct count the run recorded (and every test image is counted once)
    again = reevaluate(d, "model.safetensors")
    assert again["images"] == {"fashion-mnist": 48, "cifar10": 40, "imagefolder": 3 * 12}[common["data"]]
    assert again["correct1"] == res.final["correct1"]
    assert again["top1"] == pytest.approx(res.final["top1"], abs=1e-9)
    assert again["loss"] == pytest.approx(res.final["loss"], rel=1e-5)
    assert res.trainable_params == res.total_params == res.deploy_params
    sidecar = json.loads((d / "model.json").read_text())
    assert sidecar["model"] == MODEL and sidecar["num_classes"] in (3, 10) and sidecar["format"] == "plain"


@pytest.mark.parametrize("method", ["refconv", "continue", "finetune"])
def test_methods_from_the_same_checkpoint(baseline, method, capsys):
    root, common, base = baseline
    out = root / method
    res = run(RunConfig(method=method, weights=str(base.run_dir), epochs=1, out=str(out), **common))
    assert res.extra["start_weights"].endswith("model.safetensors")
    assert len(res.history) == 1
    lr = res.config["lr"] * (0.1 if method == "finetune" else 1.0)
    assert RunConfig(**res.config).recipe_lr() == pytest.approx(lr)

    # refconv eval from the run dir (deployable weights) reproduces the run's final metrics
    assert main(["eval", "--weights", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["correct1"] == res.final["correct1"]
    assert record["format"] == "plain"

    if method != "refconv":
        assert res.folded_path is None and res.trainable_params == res.deploy_params
        return
    # RefConv: basis frozen, RT trained, params grow while training, deployable cost is the stock model's
    assert res.total_params > res.deploy_params and res.total_params > res.trainable_params
    assert res.folded_path == out / "folded.safetensors"
    assert res.fold_max_abs_err < 1e-4
    assert res.folded_metrics["correct1"] == res.final["correct1"]  # exactly the same accuracy
    # the folded file loads strict into a freshly built stock model and, scored from scratch, gets exactly
    # the correct count the RefConv model got in the run
    again = reevaluate(out, "folded.safetensors")
    assert again["correct1"] == res.final["correct1"] == res.folded_metrics["correct1"]
    # ...and the RefConv checkpoint evaluates to the same correct count as the folded weights
    assert main(["eval", "--weights", str(out), "--checkpoint", "last", "--json"]) == 0
    ck = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ck["format"] == "refconv" and ck["correct1"] == res.final["correct1"]
    # refconv fold rebuilds the RefConv model from the checkpoint and folds it again, to the same weights
    assert main(["fold", str(out), "--out", str(root / "refold.safetensors"), "--json"]) == 0
    fold = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fold["max_abs_err"] < 1e-4 and fold["deploy_params"] == res.deploy_params
    a, b = load_file(str(res.folded_path)), load_file(str(root / "refold.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_refconv_model_rebuilds_from_its_checkpoint(baseline, tmp_path):
    root, common, base = baseline
    res = run(RunConfig(method="refconv", weights=str(base.run_dir), epochs=1, out=str(tmp_path / "r"),
                        max_group_size=4, init="zeros", **common))
    loaded = load_model(res.run_dir, which="last")
    assert loaded.format == "refconv"
    groups = {n: m.refocus_groups for n, m in refconv.refconv_layers(loaded.model).items()}
    ckpt = torch.load(res.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert groups == {n: c["groups"] for n, c in ckpt["conversion"]["layers"].items()}
    assert ckpt["conversion"]["kwargs"]["max_group_size"] == 4


def test_torchvision_model_end_to_end(tmp_path):
    """A torchvision architecture (1-channel stem swapped in by refconv.models) through the whole cycle."""
    data_dir = write_fashion_mnist(tmp_path / "data", n_train=64, n_test=16)
    common = dict(model="tv/mobilenet_v3_small", data_dir=str(data_dir), batch_size=32, lr=0.05, warmup_epochs=0,
                  epochs=1, progress="none")
    base = run(RunConfig(out=str(tmp_path / "base"), **common))
    res = run(RunConfig(method="refconv", weights=str(base.run_dir), out=str(tmp_path / "ref"), max_group_size=64,
                        **common))
    assert res.folded_metrics["correct1"] == res.final["correct1"] and res.fold_max_abs_err < 1e-4
    stock = create_model("tv/mobilenet_v3_small", num_classes=10, in_chans=1)
    stock.load_state_dict(load_file(str(res.folded_path)), strict=True)
    assert sum(p.numel() for p in stock.parameters()) == res.deploy_params
    assert reevaluate(res.run_dir, "folded.safetensors")["correct1"] == res.final["correct1"]


def test_eval_every_and_snapshots(tmp_path):
    """``eval_every_epochs`` skips the test pass between evaluations (the last epoch is always evaluated, and
    is the run's ``final``); ``snapshot_epochs`` keeps that epoch's full checkpoint beside ``last.pt``."""
    data_dir = write_fashion_mnist(tmp_path / "data", n_train=64, n_test=24)
    cfg = RunConfig(model=MODEL, data="fashion-mnist", data_dir=str(data_dir), batch_size=32, lr=0.1, epochs=3,
                    warmup_epochs=0, progress="none", eval_every_epochs=2, snapshot_epochs=[1],
                    out=str(tmp_path / "run"))
    res = run(cfg)
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert ["test_top1" in r for r in rows] == [False, True, True]
    assert res.final["correct1"] == rows[-1]["test_correct"]
    snap = torch.load(res.run_dir / "checkpoints" / "epoch-1.pt", map_location="cpu", weights_only=False)
    last = torch.load(res.run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert snap["epoch"] == 1 and last["epoch"] == 3
    assert not all(torch.equal(snap["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])
    assert reevaluate(res.run_dir, "model.safetensors")["correct1"] == res.final["correct1"]
