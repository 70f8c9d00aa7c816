"""The refocusing transform and the authors' grouping rule, checked against the authors' own module."""

from __future__ import annotations

import itertools

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
    wb64, wr64 = wb.double(), wr.double()
    torch.testing.assert_close(refocus(wb64, wr64, 1), wb64 + _reference_increment(wb64, wr64, 1))


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


def _reference_increment(wb, wr, groups):
    """``RT(Wb)`` straight from the module docstring, with explicit loops (no ``F.conv``, no unfold).

    The ``N = Cout*Cin/g`` kernels (kernel ``n = o*(Cin/g) + i``) form an ``N``-channel image; RT is a grouped
    cross-correlation of that image with ``Wr`` (``N`` output channels, ``N/G`` inputs each), zero padding
    ``map_k // 2`` per axis, stride 1, no bias.
    """
    cout, cin_g = wb.shape[:2]
    spatial = tuple(wb.shape[2:])
    maps = tuple(wr.shape[2:])
    n = cout * cin_g
    size = n // groups
    assert wr.shape[:2] == (n, size)
    image = torch.zeros(n, *spatial, dtype=wb.dtype)
    for o in range(cout):
        for i in range(cin_g):
            image[o * cin_g + i] = wb[o, i]
    out = torch.zeros_like(image)
    for c_out in range(n):
        first = (c_out // size) * size  # the input channels of c_out's group
        for pos in itertools.product(*(range(s) for s in spatial)):
            acc = torch.zeros((), dtype=wb.dtype)
            for j in range(size):
                for q in itertools.product(*(range(m) for m in maps)):
                    src = tuple(p + t - m // 2 for p, t, m in zip(pos, q, maps))
                    if all(0 <= x < s for x, s in zip(src, spatial)):
                        acc = acc + wr[(c_out, j) + q] * image[(first + j,) + src]
            out[(c_out,) + pos] = acc
    return torch.stack([torch.stack([out[o * cin_g + i] for i in range(cin_g)]) for o in range(cout)])


# (basis shape, RT groups G, map_k): 1-D, 2-D and 3-D kernels; G = 1, G = N and in between;
# map_k larger than a kernel axis, non-square kernels.
_REFERENCE_CASES = [
    ((3, 2, 5), 1, 3),
    ((3, 2, 5), 6, 3),
    ((3, 2, 5), 3, 5),
    ((4, 1, 3, 3), 1, 3),
    ((3, 2, 3, 4), 6, 3),
    ((4, 2, 3, 3), 2, 3),
    ((6, 1, 2, 5), 3, 5),
    ((2, 2, 3, 3, 3), 1, 3),
    ((2, 2, 3, 3, 3), 4, 3),
    ((2, 2, 3, 2, 3), 2, 3),
]


def _case_id(case):
    shape, groups, map_k = case
    return f"{len(shape) - 2}d-{'x'.join(map(str, shape))}-G{groups}-m{map_k}"


@pytest.mark.parametrize("shape,groups,map_k", _REFERENCE_CASES, ids=[_case_id(c) for c in _REFERENCE_CASES])
def test_refocus_matches_loop_reference(shape, groups, map_k):
    gen = torch.Generator().manual_seed(hash((shape, groups, map_k)) % 2**31)
    wb = torch.randn(*shape, dtype=torch.float64, generator=gen)
    n = shape[0] * shape[1]
    wr = torch.randn(n, n // groups, *(map_k,) * (len(shape) - 2), dtype=torch.float64, generator=gen)
    expected = _reference_increment(wb, wr, groups)
    assert expected.abs().max() > 0.1  # not a degenerate all-zero reference
    tight = dict(rtol=1e-12, atol=1e-12)
    methods = ["auto", "conv"] + (["matmul"] if len(shape) <= 4 else [])
    for method in methods:
        torch.testing.assert_close(refocus_increment(wb, wr, groups, method=method), expected, **tight, msg=method)
    torch.testing.assert_close(refocus(wb, wr, groups), wb + expected, **tight)
    if len(shape) == 5:
        with pytest.raises(ConversionError, match="matmul"):
            refocus_increment(wb, wr, groups, method="matmul")
    # float32 (the training dtype, where "auto" takes "conv" for G > 1) agrees to float32 precision
    for method in methods:
        got32 = refocus_increment(wb.float(), wr.float(), groups, method=method)
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32.double(), expected, rtol=1e-5, atol=1e-5, msg=method)


def test_loop_reference_by_hand():
    # the reference itself on a case small enough to do by hand: one 1-D kernel [1, 2, 3], Wr = [a, b, c]
    wb = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    wr = torch.tensor([[[10.0, 100.0, 1000.0]]], dtype=torch.float64)
    # cross-correlation with zero padding 1: out[p] = 10*x[p-1] + 100*x[p] + 1000*x[p+1]
    expected = torch.tensor([[[0 + 100 + 2000, 10 + 200 + 3000, 20 + 300 + 0]]], dtype=torch.float64)
    torch.testing.assert_close(_reference_increment(wb, wr, 1), expected)
    torch.testing.assert_close(refocus_increment(wb, wr, 1, method="conv"), expected)
    torch.testing.assert_close(refocus_increment(wb, wr, 1, method="matmul"), expected)


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
def test_matrix_and_convolution_forms_match_reference(shape, groups):
    # both evaluations (the G=1 fast path is one matmul with the patch matrix) against the loop reference
    torch.manual_seed(0)
    wb = torch.randn(*shape, dtype=torch.float64)
    n = shape[0] * shape[1]
    wr = torch.randn(n, n // groups, *(3,) * (len(shape) - 2), dtype=torch.float64)
    expected = _reference_increment(wb, wr, groups)
    tight = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(refocus_increment(wb, wr, groups), expected, **tight)
    torch.testing.assert_close(refocus_increment(wb, wr, groups, method="matmul"), expected, **tight)
    torch.testing.assert_close(refocus_increment(wb, wr, groups, method="conv"), expected, **tight)
    torch.testing.assert_close(refocus_increment(wb.float(), wr.float(), groups, method="conv").double(), expected,
                               rtol=1e-5, atol=1e-5)
