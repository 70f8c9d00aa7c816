"""convert() / reparameterize(): selection, conv semantics, and every bad input the issue lists."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import refconv
from refconv.errors import AlreadyConvertedError, ConversionError, NoEligibleConvError, StateDictFormatError

from _zoo import rel_err


def small_net(dims: int = 2) -> nn.Sequential:
    Conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    return nn.Sequential(
        Conv(3, 8, 3, padding=1), BN(8), nn.ReLU(),
        Conv(8, 8, 3, padding=1, groups=8), BN(8), nn.ReLU(),
        Conv(8, 16, 1),
    )


def _roundtrip(model, x, **kw):
    model.eval()
    with torch.no_grad():
        ref = model(x)
    conv = refconv.convert(copy.deepcopy(model), init="zeros", **kw).eval()
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-6)
        for layer in refconv.refconv_layers(conv).values():
            layer.refocus_weight.normal_(0, 0.1)
        y = conv(x)
    folded = refconv.reparameterize(copy.deepcopy(conv))
    with torch.no_grad():
        assert rel_err(folded(x), y) < 1e-5
    assert list(folded.state_dict()) == list(model.state_dict())
    return conv, folded


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv1d_2d_3d_models(dims):
    x = torch.randn(2, 3, *(6,) * dims)
    conv, _ = _roundtrip(small_net(dims), x)
    assert list(refconv.refconv_layers(conv)) == ["0", "3"]  # the 1x1 conv stays plain


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding="same"),
        dict(padding="valid"),
        dict(padding=2, dilation=2),
        dict(padding=1, padding_mode="reflect"),
        dict(padding=1, padding_mode="circular"),
        dict(padding=1, padding_mode="replicate"),
        dict(padding=1, stride=2, bias=False),
        dict(padding=(1, 2), kernel_size=(3, 5)),
    ],
)
def test_conv_semantics_preserved(kwargs):
    kwargs = {"kernel_size": 3, **kwargs}
    model = nn.Sequential(nn.Conv2d(4, 6, **kwargs))
    _roundtrip(model, torch.randn(2, 4, 11, 11))


def test_timm_conv2d_same_dynamic_padding():
    pytest.importorskip("timm")
    from timm.layers import Conv2dSame, MixedConv2d, StdConv2d

    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), StdConv2d(8, 8, 3, padding=1), MixedConv2d(8, 8, [3, 5, 7]))
    for size in (9, 10):  # odd and even sizes take different dynamic padding
        conv, folded = _roundtrip(model, torch.randn(2, 3, size, size))
    assert type(folded[0]) is Conv2dSame and type(folded[1]) is StdConv2d
    assert isinstance(conv[2], MixedConv2d)  # converted through its children
    assert len(refconv.refconv_layers(conv)) == 5


def test_root_conv_is_converted_and_folded():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = refconv.convert(conv, init="zeros")
    assert isinstance(layer, refconv.RefConv) and layer.conv is conv
    folded = refconv.reparameterize(layer)
    assert type(folded) is nn.Conv2d


def test_include_exclude_globs_and_containers():
    model = nn.Sequential(small_net(), small_net())
    conv = refconv.convert(copy.deepcopy(model), include="1")  # a container name selects the convs inside
    assert sorted(refconv.refconv_layers(conv)) == ["1.0", "1.3"]
    conv = refconv.convert(copy.deepcopy(model), include=["*.0"], exclude="1.*")
    assert sorted(refconv.refconv_layers(conv)) == ["0.0"]


def test_include_of_small_kernel_is_an_error():
    with pytest.raises(ConversionError, match=r"layer '6'.*smaller than map_k=3"):
        refconv.convert(small_net(), include="6")
    # map_k=1 converts 1x1 convs too
    conv = refconv.convert(small_net(), map_k=1)
    assert len(refconv.refconv_layers(conv)) == 3


def test_groups_override_int_and_callable():
    conv = refconv.convert(small_net(), groups=lambda name, m: 2 if m.groups > 1 else None)
    layers = refconv.refconv_layers(conv)
    assert layers["3"].refocus_groups == 2 and layers["3"].refocus_weight.shape == (8, 4, 3, 3)
    assert layers["0"].refocus_groups == 24  # authors' rule for the dense stem
    conv = refconv.convert(small_net(), groups=8)
    assert all(layer.refocus_groups == 8 for layer in refconv.refconv_layers(conv).values())


def test_not_in_place():
    model = small_net()
    conv = refconv.convert(model, inplace=False)
    assert not refconv.refconv_layers(model) and refconv.refconv_layers(conv)
    assert all(p.requires_grad for p in model.parameters())
    folded = refconv.reparameterize(conv, inplace=False)
    assert refconv.refconv_layers(conv) and not refconv.refconv_layers(folded)


def test_shared_conv_stays_shared():
    shared = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    conv = refconv.convert(model)
    assert conv[0] is conv[2]
    folded = refconv.reparameterize(conv)
    assert folded[0] is folded[2] and type(folded[0]) is nn.Conv2d


def test_only_refocus_weights_and_other_params_train():
    model = refconv.convert(small_net())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "0.conv.weight" not in trainable and "3.conv.weight" not in trainable
    assert {"0.refocus_weight", "3.refocus_weight", "0.conv.bias", "1.weight", "6.weight"} <= trainable
    # even a careless requires_grad_(True) cannot make the basis learn: it is used detached
    model.requires_grad_(True)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    assert model[0].conv.weight.grad is None


def test_delegated_attributes_and_weight_property():
    model = refconv.convert(small_net())
    layer = model[3]
    assert layer.out_channels == 8 and layer.groups == 8 and layer.kernel_size == (3, 3)
    torch.testing.assert_close(layer.weight, layer.transformed_weight())
    with pytest.raises(AttributeError):
        layer.does_not_exist


# ----------------------------------------------------------------- bad input
def test_double_conversion_is_refused():
    model = refconv.convert(small_net())
    with pytest.raises(AlreadyConvertedError, match="already converted"):
        refconv.convert(model)
    with pytest.raises(AlreadyConvertedError):
        refconv.convert(model[0])
    # but a further, explicit selection of still-plain layers is allowed (no double wrapping)
    refconv.convert(model, include="6", map_k=1)
    assert isinstance(model[6], refconv.RefConv) and not isinstance(model[0].conv, refconv.RefConv)


@pytest.mark.parametrize("map_k", [0, -3, 2, 4])
def test_bad_map_k(map_k):
    with pytest.raises(ConversionError, match="positive odd"):
        refconv.convert(small_net(), map_k=map_k)


def test_map_k_larger_than_every_kernel():
    with pytest.raises(NoEligibleConvError, match="map_k=5"):
        refconv.convert(small_net(), map_k=5)


def test_groups_not_dividing_n_names_layer():
    with pytest.raises(ConversionError, match=r"groups=7 for layer '0' does not divide its N=24"):
        refconv.convert(small_net(), groups=7)


def test_patterns_matching_nothing():
    with pytest.raises(ConversionError, match=r"include pattern 'backbone\.\*' matches no module"):
        refconv.convert(small_net(), include="backbone.*")
    with pytest.raises(ConversionError, match="exclude pattern 'head'"):
        refconv.convert(small_net(), exclude="head")


def test_no_eligible_conv():
    with pytest.raises(NoEligibleConvError, match="no convolution"):
        refconv.convert(nn.Sequential(nn.Linear(3, 4), nn.Conv2d(3, 3, 1)))


def test_bad_init():
    with pytest.raises(ConversionError, match="init must be one of"):
        refconv.convert(small_net(), init="xavier")


def test_non_float_and_meta_weights_leave_model_untouched():
    model = small_net()
    model[3].weight = nn.Parameter(model[3].weight.data.to(torch.int32), requires_grad=False)  # the second conv is broken
    with pytest.raises(ConversionError, match=r"layer '3' has a torch.int32 weight"):
        refconv.convert(model)
    assert not refconv.refconv_layers(model)
    assert model[0].weight.requires_grad  # the first conv was not left frozen
    with torch.device("meta"):
        meta = small_net()
    with pytest.raises(ConversionError, match="meta device"):
        refconv.convert(meta)


def test_parametrized_weight_is_refused():
    model = small_net()
    torch.nn.utils.parametrizations.weight_norm(model[0])
    with pytest.raises(ConversionError, match="parametriz"):
        refconv.convert(model)


def test_reparameterize_with_nothing_to_fold_warns():
    model = small_net()
    with pytest.warns(refconv.RefConvWarning, match="nothing to fold"):
        assert refconv.reparameterize(model) is model


def test_state_dict_format_mismatch_both_ways():
    plain = small_net()
    conv = refconv.convert(small_net())
    with pytest.raises(StateDictFormatError, match="folded .plain conv. weight"):
        conv.load_state_dict(plain.state_dict())
    with pytest.raises(StateDictFormatError, match="RefConv .unfolded. checkpoint"):
        refconv.load_state_dict(plain, conv.state_dict())
    with pytest.raises(StateDictFormatError, match="folded .plain. checkpoint"):
        refconv.load_state_dict(conv, plain.state_dict())
    assert refconv.state_dict_format(conv.state_dict()) == "refconv"
    assert refconv.state_dict_format(plain.state_dict()) == "plain"


def test_plan_conversion_is_a_dry_run():
    model = small_net()
    plans = refconv.plan_conversion(model)
    assert [p.name for p in plans] == ["0", "3"]
    assert plans[1].refocus_params == 8 * 8 * 9 and plans[0].refocus_params == 24 * 9
    assert not refconv.refconv_layers(model)


def test_no_warnings_on_normal_use():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = refconv.convert(small_net())
        model(torch.randn(1, 3, 5, 5))
        refconv.reparameterize(model)
