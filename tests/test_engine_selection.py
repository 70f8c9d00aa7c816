"""Layer selection and basis ablations of the engine (used by sweeps): layers=..., basis=random."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

import refconv  # noqa: E402
from refconv.engine.config import make_config  # noqa: E402
from refconv.engine.modeling import apply_conversion, convert_kwargs, select_layers  # noqa: E402
from refconv.errors import ConfigError, NoEligibleConvError  # noqa: E402


def _model():
    torch.manual_seed(0)
    return timm.create_model("mobilenetv3_small_050", num_classes=10)


def _kw(**over):
    return convert_kwargs(make_config({"method": "refconv", **over}))


def test_layer_selections():
    all_names = select_layers(_model(), _kw())
    assert all_names[0] == "conv_stem" and len(all_names) == 12
    dw = select_layers(_model(), _kw(layers="depthwise"))
    assert "conv_stem" not in dw and all(n.endswith("conv_dw") for n in dw) and len(dw) == 11
    assert select_layers(_model(), _kw(layers="dense")) == ["conv_stem"]
    assert select_layers(_model(), _kw(layers="no-stem")) == all_names[1:]
    model = apply_conversion(_model(), _kw(layers="depthwise"))
    assert sorted(refconv.refconv_layers(model)) == sorted(dw)


def test_selection_that_leaves_nothing_is_an_error():
    with pytest.raises(NoEligibleConvError, match="layers='dense' leaves no convolution"):
        select_layers(_model(), _kw(layers="dense", exclude=["conv_stem"]))


def test_random_basis_replaces_only_converted_kernels():
    ref = _model()
    model = apply_conversion(_model(), _kw(basis="random", layers="depthwise"))
    layer = refconv.refconv_layers(model)["blocks.0.0.conv_dw"]
    assert not torch.equal(layer.conv.weight, ref.blocks[0][0].conv_dw.weight)
    assert torch.equal(model.conv_stem.weight, ref.conv_stem.weight)  # not converted: untouched
    assert not layer.conv.weight.requires_grad  # a random basis is still a frozen basis
    pre = apply_conversion(_model(), _kw(layers="depthwise"))
    assert torch.equal(refconv.refconv_layers(pre)["blocks.0.0.conv_dw"].conv.weight, ref.blocks[0][0].conv_dw.weight)


def test_config_validation_of_selection_keys():
    with pytest.raises(ConfigError, match="layers"):
        make_config({"method": "refconv", "layers": "pointwise"}).validate()
    with pytest.raises(ConfigError, match="basis"):
        make_config({"method": "refconv", "basis": "imagenet"}).validate()
