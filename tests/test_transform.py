"""The refocusing transform and the authors' grouping rule, checked against the authors' own module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import refconv
from refconv._reference import AuthorsRefConv
from refconv.errors import ConversionError
from refconv.transform import (
    capped_groups,
    check_groups,
    check_map_k,
    default_groups,
    refocus,
    refocus_increment,
    refocus_weight_shape,
)


@pytest.mark.parametrize(
    "cin,cout,g,expected_G,group_size",
    [
        (32, 32, 32, 1, 32),  # depthwise: every kernel refocused on all C kernels
        (16, 24, 1, 16 * 24, 1),  # dense: each kernel only on itself
        (16, 32, 4, 16 * 32 // 16, 4),  # group conv: in between, g kernels per RT group
        (8, 16, 8, 2, 8),  # depthwise multiplier 2
    ],
)
def test_authors_grouping_rule(cin, cout, g, expected_G, group_size):
    G = default_groups(cin, cout, g)
    assert G == expected_G
    n = cout * cin // g
    assert n // G == group_size == g
    assert refocus_weight_shape((cout, cin // g, 3, 3), G, 3) == (n, g, 3, 3)


def test_depthwise_refocus_weight_is_quadratic():
    layer = refconv.RefConv(nn.Conv2d(64, 64, 3, padding=1, groups=64))
    assert layer.refocus_weight.shape == (64, 64, 3, 3)  # C*C*map_k^2 weights


def test_kernel_numbering_is_row_major():
    # Dense 2->3 conv, G=N: kernel n = o*Cin + i is refocused only by Wr[n].
    wb = torch.randn(3, 2, 3, 3)
    wr = torch.zeros(6, 1, 3, 3)
    wr[1 * 2 + 1, 0, 1, 1] = 2.0  # kernel (o=1, i=1): scale by 2 through the centre tap
    out = refocus_increment(wb, wr, 6)
    expected = torch.zeros_like(wb)
    expected[1, 1] = 2 * wb[1, 1]
    torch.testing.assert_close(out, expected)


def test_refocus_is_conv_over_the_kernel_image():
    wb = torch.randn(8, 1, 5, 5)  # depthwise 8 channels, 5x5 kernels
    wr = torch.randn(8, 8, 3, 3)
    image = wb.reshape(1, 8, 5, 5)
    expected = wb + F.conv2d(image, wr, padding=1).reshape(wb.shape)
    torch.testing.assert_close(refocus(wb, wr, 1), expected)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_layer_matches_authors_module(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=groups, bias=True)
    authors = AuthorsRefConv(conv)
    ours = refconv.RefConv(conv)
    with torch.no_grad():
        ours.refocus_weight.copy_(authors.convmap.weight)  # same layout: one-to-one
    x = torch.randn(2, 16, 9, 9)
    torch.testing.assert_close(ours(x), authors(x))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_refocus_in_every_dimensionality(dims):
    k = (5,) * dims
    wb = torch.randn(4, 2, *k)
    wr = torch.randn(8, 1, *(3,) * dims)
    out = refocus(wb, wr, 8)
    assert out.shape == wb.shape


def test_map_k_validation():
    for bad in (0, -1, 2, 4, 3.0, True, "3"):
        with pytest.raises(ConversionError, match="map_k"):
            check_map_k(bad)
    assert check_map_k(5) == 5


def test_groups_validation_names_layer_and_divisors():
    with pytest.raises(ConversionError, match=r"groups=5 for layer 'a.b' does not divide the layer's N=12"):
        check_groups(12, 5, where="a.b")
    with pytest.raises(ConversionError):
        check_groups(12, 0)
    assert check_groups(12, 4) == 4


def test_capped_groups():
    # depthwise C=576: authors' G=1 puts 576 kernels in one group; cap at 64 kernels per group
    g = capped_groups(576, 1, 64)
    assert 576 % g == 0 and 576 // g <= 64 and g == 9
    assert capped_groups(576, 1, 1000) == 1
    assert capped_groups(7, 1, 2) == 7  # prime: only G=N satisfies the cap
    with pytest.raises(ConversionError):
        capped_groups(8, 1, 0)


@pytest.mark.parametrize("shape,groups", [((12, 1, 3, 3), 1), ((12, 1, 5, 5), 1), ((6, 2, 5), 1), ((4, 1, 3, 5), 1),
                                          ((8, 1, 3, 3), 2), ((6, 4, 3, 3), 24)])
def test_matrix_and_convolution_forms_agree(shape, groups):
    # the G=1 fast path (one matmul with the patch matrix) computes the grouped convolution exactly
    torch.manual_seed(0)
    wb = torch.randn(*shape, dtype=torch.float64)
    n = shape[0] * shape[1]
    wr = torch.randn(n, n // groups, *(3,) * (len(shape) - 2), dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d}[len(shape) - 2]
    expected = conv(wb.reshape(1, n, *shape[2:]), wr, padding=1, groups=groups).reshape(wb.shape)
    torch.testing.assert_close(refocus_increment(wb, wr, groups), expected)
    torch.testing.assert_close(refocus_increment(wb, wr, groups, method="matmul"), expected)
    torch.testing.assert_close(refocus_increment(wb.float(), wr.float(), groups, method="conv"), expected.float())
