"""refconv.models: names over two zoos, input/head surgery, and strict loading of every weights format."""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import pytest
import torch
from _datagen import truncate, write_run_dir
from safetensors.torch import save_file
from torch import nn

from refconv.errors import CheckpointError, ModelError
from refconv.models import (
    adapt_input_weight,
    create_model,
    is_refconv_state_dict,
    list_models,
    load_weights,
    read_state_dict,
    resolve_model_name,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path, no_network):
    """No network and empty hub caches: a test can neither download nor find weights fetched earlier."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    try:
        import huggingface_hub.constants as hf

        monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    except ImportError:
        pass


class TinyNet(nn.Module):
    """A stem conv, a BatchNorm and a Linear head: every kind of key a real checkpoint has, in milliseconds."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.stem(x))).mean((2, 3)))


def _randomized(model: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


# ---------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name, expected",
    [
        ("timm/resnet10t", ("timm", "resnet10t")),
        ("timm:mobilenetv3_small_050", ("timm", "mobilenetv3_small_050")),
        ("tv/resnet18", ("tv", "resnet18")),
        ("tv:mobilenet_v3_small", ("tv", "mobilenet_v3_small")),
        ("torchvision/resnet18", ("tv", "resnet18")),
        ("torchvision:ResNet18", ("tv", "resnet18")),
        ("resnet18", ("timm", "resnet18")),  # bare: timm first
        ("mobilenet_v3_small", ("tv", "mobilenet_v3_small")),  # bare, torchvision only
        ("timm/resnet18.a1_in1k", ("timm", "resnet18.a1_in1k")),  # pretrained tag
    ],
)
def test_resolve_model_name(name, expected):
    assert resolve_model_name(name) == expected


@pytest.mark.parametrize(
    "name, suggestions",
    [
        ("resnet181", ["timm/resnet18", "tv/resnet18"]),
        ("tv/resnet10t", ["timm/resnet10t"]),
        ("timm/mobilenet_v3_smal", ["tv/mobilenet_v3_small"]),
        ("mobilenetv3_small_05", ["timm/mobilenetv3_small_050"]),
    ],
)
def test_unknown_name_suggests_close_matches_from_both_zoos(name, suggestions):
    with pytest.raises(ModelError, match="unknown model") as err:
        create_model(name)
    for s in suggestions:
        assert s in str(err.value)


def test_list_models():
    tv, timm_names, both = list_models("tv"), list_models("timm"), list_models()
    assert "tv/resnet18" in tv and "tv/mobilenet_v3_small" in tv and not any(n.startswith("timm/") for n in tv)
    assert "timm/resnet10t" in timm_names and list_models("torchvision") == tv
    own = list_models("refconv")  # the catalogue's pretrained entries and the registered detectors / segmenters
    assert "fmnist/mobilenetv3_small_100" in own and "ssdlite320_mobilenet_v3_large" in own
    assert both == sorted(tv + timm_names + own)
    assert list_models(task="segmentation") == sorted(n for n in own if "deeplab" in n or "lraspp" in n or "fcn" in n)
    assert "tv/resnet18" in list_models(task="classification") and not list_models("tv", task="detection")
    with pytest.raises(ModelError, match="zoo"):
        list_models("keras")
    with pytest.raises(ModelError, match="task"):
        list_models(task="pose")


# ---------------------------------------------------------------------------------------------- building
@pytest.mark.parametrize(
    "name", ["timm/mobilenetv3_small_050", "timm/resnet10t", "tv/mobilenet_v3_small", "tv/resnet18"]
)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_create_model_num_classes_and_in_chans(name, in_chans):
    model = create_model(name, num_classes=7, in_chans=in_chans).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 7)


def test_default_model_has_1000_classes():
    model = create_model("timm/resnet10t").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_torchvision_stem_keeps_class_and_args():
    ref = create_model("tv/mobilenet_v3_small")
    model = create_model("tv/mobilenet_v3_small", in_chans=1)
    old, new = ref.features[0][0], model.features[0][0]
    assert type(new) is type(old) and new.in_channels == 1 and new.weight.shape[1] == 1
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(new, attr) == getattr(old, attr), attr
    assert (new.bias is None) == (old.bias is None)


def test_timm_kwargs_pass_through_and_bad_kwargs():
    model = create_model("timm/resnet10t", num_classes=3, drop_rate=0.25)
    assert model.drop_rate == 0.25
    with pytest.raises(ModelError, match="cannot build"):
        create_model("tv/resnet18", not_an_argument=1)
    with pytest.raises(ModelError, match="in_chans"):
        create_model("tv/resnet18", in_chans=0)
    with pytest.raises(ModelError, match="not both"):
        create_model("tv/resnet18", pretrained=True, weights="x.pth")


@pytest.mark.parametrize("name", ["timm/resnet10t", "tv/mobilenet_v3_small"])
def test_pretrained_offline_says_pass_weights(name):
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        create_model(name, pretrained=True, num_classes=10)
    assert "--weights FILE" in str(err.value) and "network" in str(err.value)
    assert time.monotonic() - start < 20  # no minute of hub retries


def test_timm_model_without_pretrained_weights():
    import timm

    with_weights = {n.split(".")[0] for n in timm.list_models(pretrained=True)}
    name = next(n for n in timm.list_models() if n not in with_weights)
    with pytest.raises(ModelError, match="no pretrained weights"):
        create_model(f"timm/{name}", pretrained=True)


def test_local_weights_adapt_head_and_stem(tmp_path):
    source = _randomized(create_model("tv/resnet18"))
    torch.save(source.state_dict(), tmp_path / "resnet18_in1k.pth")
    model = create_model("tv/resnet18", num_classes=10, in_chans=1, weights=tmp_path / "resnet18_in1k.pth")
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert model.fc.weight.shape == (10, 512)
    same = create_model("tv/resnet18", weights=tmp_path / "resnet18_in1k.pth")
    _assert_same(same, source)


def test_grayscale_model_matches_rgb_model_on_replicated_input(tmp_path):
    rgb = _randomized(create_model("tv/mobilenet_v3_small", num_classes=5), seed=2).eval()
    save_file(rgb.state_dict(), str(tmp_path / "w.safetensors"))
    gray = create_model("tv/mobilenet_v3_small", num_classes=5, in_chans=1, weights=tmp_path / "w.safetensors").eval()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_timm_local_weights_and_classifier_mismatch(tmp_path):
    source = _randomized(create_model("timm/mobilenetv3_small_050", num_classes=10))
    save_file(source.state_dict(), str(tmp_path / "ft.safetensors"))
    _assert_same(
        create_model("timm/mobilenetv3_small_050", num_classes=10, weights=tmp_path / "ft.safetensors"), source
    )
    with pytest.raises(CheckpointError) as err:
        create_model("timm/mobilenetv3_small_050", weights=tmp_path / "ft.safetensors")
    msg = str(err.value)
    assert "--num-classes 10" in msg and "strict=False" in msg and "classifier.weight" in msg and "(10, 1024)" in msg
    gray = create_model("timm/mobilenetv3_small_050", num_classes=4, in_chans=1, weights=tmp_path / "ft.safetensors")
    torch.testing.assert_close(gray.conv_stem.weight, source.conv_stem.weight.sum(1, keepdim=True))


def test_missing_weights_file_fails_before_building(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("tv/resnet18", weights=tmp_path / "nope.pth")


def test_adapt_input_weight():
    w = torch.randn(4, 3, 3, 3)
    assert torch.equal(adapt_input_weight(w, 3), w)
    torch.testing.assert_close(adapt_input_weight(w, 1), w.sum(1, keepdim=True))
    w6 = adapt_input_weight(w, 6)
    assert w6.shape == (4, 6, 3, 3)
    torch.testing.assert_close(w6.sum(1), w.sum(1))  # same response to a constant image


# ---------------------------------------------------------------------------------------------- load_weights
def _ckpt(key):
    return lambda sd: {
        key: sd,
        "epoch": 3,
        "args": argparse.Namespace(lr=0.1),
        "metric": np.float64(71.5),
        "rng": np.random.RandomState(0).get_state(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
    }


WRITERS = {
    "safetensors": ("w.safetensors", lambda p, sd: save_file(sd, str(p))),
    "pth_raw": ("w.pth", lambda p, sd: torch.save(sd, p)),
    "pt_state_dict": ("w.pt", lambda p, sd: torch.save(_ckpt("state_dict")(sd), p)),
    "pt_model": ("w.pt", lambda p, sd: torch.save(_ckpt("model")(sd), p)),
    "pt_ema_only": ("w.pt", lambda p, sd: torch.save({"state_dict_ema": sd}, p)),
    "pt_model_ema_only": ("w.pt", lambda p, sd: torch.save({"model_ema": sd}, p)),
    "bin": ("pytorch_model.bin", lambda p, sd: torch.save(sd, p)),
    "odd_extension": ("w.weights", lambda p, sd: torch.save(sd, p)),
    "legacy_torch_save": ("w.pth", lambda p, sd: torch.save(sd, p, _use_new_zipfile_serialization=False)),
    "ddp_prefix": ("w.pth", lambda p, sd: torch.save({"module." + k: v for k, v in sd.items()}, p)),
    "compile_prefix": ("w.pth", lambda p, sd: torch.save({"_orig_mod." + k: v for k, v in sd.items()}, p)),
    "ddp_compile": (
        "w.pth",
        lambda p, sd: torch.save({"model": {"module._orig_mod." + k: v for k, v in sd.items()}}, p),
    ),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_load_weights_formats(tmp_path, fmt):
    source = _randomized(TinyNet())
    fname, write = WRITERS[fmt]
    write(tmp_path / fname, source.state_dict())
    model = TinyNet()
    load_weights(model, tmp_path / fname)
    _assert_same(model, source)


def test_use_ema_prefers_ema_weights(tmp_path):
    plain, ema = _randomized(TinyNet(), 1), _randomized(TinyNet(), 2)
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict()}, tmp_path / "c.pth")
    a, b = TinyNet(), TinyNet()
    load_weights(a, tmp_path / "c.pth")
    load_weights(b, tmp_path / "c.pth", use_ema=True)
    _assert_same(a, plain)
    _assert_same(b, ema)


@pytest.mark.parametrize("layouts, used", [(("folded", "best", "last"), "folded"), (("model", "best", "last"), "model")])
def test_run_directory_means_its_deployable_weights(tmp_path, layouts, used):
    """A finished run means its model/folded.safetensors, never a training checkpoint beside it."""
    nets = {layout: _randomized(TinyNet(), seed) for seed, layout in enumerate(layouts, start=1)}
    for layout, net in nets.items():
        write_run_dir(tmp_path / "run", net.state_dict(), layout=layout, extra={"config": {"lr": 0.1}})
    model = TinyNet()
    load_weights(model, tmp_path / "run")
    _assert_same(model, nets[used])


def test_unfinished_run_directory_means_no_weights(tmp_path):
    net = _randomized(TinyNet(), 1)
    write_run_dir(tmp_path / "run", net.state_dict(), layout="best")
    write_run_dir(tmp_path / "run", net.state_dict(), layout="last")
    with pytest.raises(CheckpointError, match=r"unfinished.*refconv train --resume .*checkpoints/last\.pt"):
        load_weights(TinyNet(), tmp_path / "run")
    model = TinyNet()
    load_weights(model, tmp_path / "run" / "checkpoints" / "best.pt")  # a checkpoint, asked for by path
    _assert_same(model, net)


def test_run_directory_real_model(tmp_path):
    source = _randomized(create_model("tv/mobilenet_v3_small", num_classes=10))
    write_run_dir(tmp_path / "run", source.state_dict(), layout="model")
    _assert_same(create_model("tv/mobilenet_v3_small", num_classes=10, weights=tmp_path / "run"), source)


def test_not_a_run_directory(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="not a refconv run .no done.json"):
        load_weights(TinyNet(), tmp_path / "run")


def test_classifier_mismatch(tmp_path, caplog):
    source = _randomized(TinyNet(num_classes=10))
    torch.save(source.state_dict(), tmp_path / "ten.pth")
    model = TinyNet(num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(model, tmp_path / "ten.pth")
    msg = str(err.value)
    assert "classifier mismatch" in msg and "--num-classes 10" in msg and "strict=False" in msg
    assert "'fc.weight' (10, 8)" in msg and str(tmp_path / "ten.pth") in msg
    for k, v in model.state_dict().items():  # nothing loaded on failure
        assert torch.equal(v, before[k]), k
    with caplog.at_level(logging.WARNING, logger="refconv"):
        load_weights(model, tmp_path / "ten.pth", strict=False)
    assert "fc.weight" in caplog.text
    torch.testing.assert_close(model.stem.weight, source.stem.weight)
    assert torch.equal(model.fc.weight, before["fc.weight"])


def test_missing_and_unexpected_keys(tmp_path):
    sd = _randomized(TinyNet()).state_dict()
    missing = {k: v for k, v in sd.items() if not k.startswith("bn.")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing from the file: bn\.weight, bn\.bias, bn\.running_mean"):
        load_weights(TinyNet(), tmp_path / "missing.pth")
    torch.save({**sd, "extra.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"not in the model: extra\.weight"):
        load_weights(TinyNet(), tmp_path / "extra.pth")
    model = TinyNet()
    with pytest.warns(UserWarning, match="extra.weight"):
        load_weights(model, tmp_path / "extra.pth", strict=False)
    torch.testing.assert_close(model.stem.weight, sd["stem.weight"])


def test_old_checkpoint_without_num_batches_tracked_loads(tmp_path):
    sd = _randomized(TinyNet()).state_dict()
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    model = TinyNet()
    load_weights(model, tmp_path / "old.pth")  # strict: the counter alone may be missing
    loaded = model.state_dict()
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            assert loaded[k] == 0, k  # the fresh model's counter, kept
        else:
            assert torch.equal(loaded[k], v), k


def test_shape_mismatch_outside_the_head(tmp_path):
    sd = _randomized(TinyNet()).state_dict()
    sd["bn.weight"] = torch.ones(9)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*'bn.weight' \(9,\)"):
        load_weights(TinyNet(), tmp_path / "w.pth", strict=False)  # never tolerated
    torch.save(_randomized(TinyNet(in_chans=1)).state_dict(), tmp_path / "gray.pth")
    with pytest.raises(CheckpointError, match=r"'stem.weight' takes 1 channels.*--in-chans 1"):
        load_weights(TinyNet(), tmp_path / "gray.pth")
    wide = TinyNet()
    wide.fc = nn.Linear(16, 10)  # same classes, other features: structural, not a classifier mismatch
    torch.save(TinyNet().state_dict(), tmp_path / "clean.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*'fc.weight' \(10, 8\).*another architecture"):
        load_weights(wide, tmp_path / "clean.pth", strict=False)


def test_no_matching_keys(tmp_path):
    torch.save({"encoder.layer.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="none of its 1 keys match"):
        load_weights(TinyNet(), tmp_path / "other.pth", strict=False)


def _refconv_state(sd: dict) -> dict:
    out = {k: v for k, v in sd.items() if k != "stem.weight"}
    out["stem.conv.weight"] = sd["stem.weight"]
    out["stem.refocus_weight"] = torch.zeros(24, 1, 3, 3)
    return out


def test_refconv_checkpoint_into_plain_model(tmp_path):
    sd = _refconv_state(TinyNet().state_dict())
    assert is_refconv_state_dict(sd) and not is_refconv_state_dict(TinyNet().state_dict())
    save_file(sd, str(tmp_path / "unfolded.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"RefConv \(unfolded\) checkpoint.*refconv fold.*convert the model first"
    ):
        load_weights(TinyNet(), tmp_path / "unfolded.safetensors")
    write_run_dir(tmp_path / "run", sd, layout="last")
    with pytest.raises(CheckpointError, match="RefConv"):
        create_model("tv/resnet18", weights=tmp_path / "run" / "checkpoints" / "last.pt")


class _RefConvLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.stem.refocus_weight = nn.Parameter(torch.zeros(24, 1, 3, 3))


def test_plain_checkpoint_into_refconv_model(tmp_path):
    torch.save(TinyNet().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="folded \\(plain\\) checkpoint, but the model holds RefConv layers"):
        load_weights(_RefConvLike(), tmp_path / "plain.pth")
    model = _RefConvLike()
    saved = _randomized(_RefConvLike()).state_dict()
    torch.save(saved, tmp_path / "refconv.pth")
    load_weights(model, tmp_path / "refconv.pth")
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


class _Opaque:
    pass


@pytest.mark.parametrize(
    "case",
    ["truncated_pth", "truncated_safetensors", "garbage", "empty", "pickled_object", "not_a_state_dict", "missing"],
)
def test_unreadable_files(tmp_path, case):
    sd = TinyNet().state_dict()
    path = tmp_path / "w.pth"
    if case == "truncated_pth":
        torch.save(sd, path)
        truncate(path, 0.5)
        match = "truncated or corrupt torch file"
    elif case == "truncated_safetensors":
        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
        truncate(path, 0.7)
        match = "truncated or corrupt safetensors"
    elif case == "garbage":
        path.write_bytes(b"this is not a checkpoint, just text")
        match = "not a weights file"
    elif case == "empty":
        path.write_bytes(b"")
        match = "truncated or empty"
    elif case == "pickled_object":
        torch.save({"state_dict": sd, "thing": _Opaque()}, path)
        match = "Python objects other than tensors"
    elif case == "not_a_state_dict":
        torch.save({"epoch": 3, "optimizer": {}}, path)
        match = "no state_dict found"
    else:
        path = tmp_path / "absent.pth"
        match = "does not exist"
    with pytest.raises(CheckpointError, match=match) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
