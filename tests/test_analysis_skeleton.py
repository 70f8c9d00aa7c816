"""Kernel skeleton (refconv.analysis.skeleton) on hand-made kernels with known answers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refconv
from refconv.analysis import (
    compare_skeleton,
    cross_mask,
    kernel_skeleton,
    skeleton_report,
    skeleton_share,
    stages_by_name,
    stages_by_resolution,
)
from refconv.errors import CheckpointError, ConfigError, NoEligibleConvError

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_hot_centre(cout: int, cin: int, k: int) -> torch.Tensor:
    w = torch.zeros(cout, cin, k, k)
    w[:, :, k // 2, k // 2] = torch.randn(cout, cin).abs() + 0.1
    return w


def test_one_hot_centre_kernels_have_share_one():
    for k in (3, 5, 7):
        w = _one_hot_centre(4, 3, k)
        sk = kernel_skeleton(w)
        expected = torch.zeros(k, k, dtype=torch.float64)
        expected[k // 2, k // 2] = 1.0
        assert torch.allclose(sk, expected)
        assert skeleton_share(w) == pytest.approx(1.0)


def test_uniform_kernels_share_is_the_cross_fraction():
    w = torch.ones(2, 2, 3, 3)
    assert torch.allclose(kernel_skeleton(w), torch.full((3, 3), 1 / 9, dtype=torch.float64))
    assert skeleton_share(w) == pytest.approx(5 / 9)
    assert skeleton_share(torch.ones(1, 1, 5, 5)) == pytest.approx(9 / 25)


def test_corner_kernels_have_share_zero():
    w = torch.zeros(3, 2, 3, 3)
    w[:, :, 0, 0] = 1.0
    w[:, :, 2, 2] = -2.0
    assert skeleton_share(w) == 0.0


def test_map_is_scale_free_sums_to_one_and_skips_zero_kernels():
    w = torch.randn(4, 3, 3, 3)
    sk = kernel_skeleton(w)
    assert float(sk.sum()) == pytest.approx(1.0)
    scaled = w * torch.tensor([1.0, 10.0, 0.01, -3.0]).view(4, 1, 1, 1)
    assert torch.allclose(kernel_skeleton(scaled), sk)
    with_zero = torch.cat([_one_hot_centre(1, 1, 3), torch.zeros(1, 1, 3, 3)])
    assert skeleton_share(with_zero) == pytest.approx(1.0)
    assert torch.allclose(kernel_skeleton(torch.zeros(2, 1, 3, 3)), torch.full((3, 3), 1 / 9, dtype=torch.float64))


def test_cross_mask_shapes():
    assert cross_mask((3, 3)).tolist() == [[False, True, False], [True, True, True], [False, True, False]]
    assert int(cross_mask((5, 5)).sum()) == 9
    assert int(cross_mask((4, 4)).sum()) == 12  # two middle rows and columns
    assert bool(cross_mask((5,)).all())  # 1-D: every position is on the axis
    assert int(cross_mask((3, 3, 3)).sum()) == 7  # the three axis lines through the centre
    with pytest.raises(ConfigError):
        cross_mask(())


def test_bad_weight_raises():
    with pytest.raises(ConfigError, match="at least 3 dims"):
        kernel_skeleton(torch.randn(3, 3))


def _staged_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 0: 16x16
        nn.Conv2d(4, 4, 5, padding=2, groups=4),  # 1: 16x16, 5x5
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 2: 8x8
        nn.Conv2d(4, 4, 1),  # 3: pointwise, not eligible
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_stages_by_resolution_and_kernel_size_groups():
    model = _staged_net()
    x = torch.randn(1, 3, 16, 16)
    assert stages_by_resolution(model, x, ["0", "1", "2"]) == {
        "0": "stage0 (16x16)",
        "1": "stage0 (16x16)",
        "2": "stage1 (8x8)",
    }
    report = skeleton_report(model, example_input=x)
    assert list(report["layers"]) == ["0", "1", "2"]
    assert set(report["stages"]) == {"stage0 (16x16) k3x3", "stage0 (16x16) k5x5", "stage1 (8x8) k3x3"}
    assert report["stages"]["stage0 (16x16) k3x3"]["layers"] == ["0"]
    assert report["overall_share"] == pytest.approx(sum(v["share"] for v in report["layers"].values()) / 3)
    assert stages_by_name(["layer1.0.conv1", "layer2.1.conv2"]) == {
        "layer1.0.conv1": "layer1",
        "layer2.1.conv2": "layer2",
    }
    by_name = skeleton_report(model)
    assert {v["stage"] for v in by_name["layers"].values()} == {"0", "1", "2"}


def test_stage_map_is_mean_of_layer_maps():
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    with torch.no_grad():
        model[0].weight.copy_(_one_hot_centre(2, 2, 3))
        model[1].weight.fill_(1.0)
    report = skeleton_report(model, stages=lambda name: "all")
    stage = report["stages"]["all k3x3"]
    assert stage["share"] == pytest.approx((1.0 + 5 / 9) / 2)


def test_compare_and_errors():
    a, b = _staged_net(), _staged_net()
    out = compare_skeleton(a, b, example_input=torch.randn(1, 3, 16, 16))
    assert set(out["share"]) == {"0", "1", "2"}
    assert out["overall_share"]["delta"] == pytest.approx(
        out["overall_share"]["refconv"] - out["overall_share"]["baseline"]
    )
    assert list(out["baseline"]["stages"]) == list(out["refconv"]["stages"])
    wider = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), *list(_staged_net())[1:])
    with pytest.raises(CheckpointError, match=r"0\.weight"):
        compare_skeleton(a, wider)
    with pytest.raises(NoEligibleConvError):
        skeleton_report(nn.Sequential(nn.Conv2d(3, 4, 1)))
    with pytest.raises(ConfigError, match="no entry"):
        skeleton_report(a, stages={"0": "s"})


def test_refconv_model_is_analysed_folded():
    base = _staged_net()
    model = refconv.convert(copy.deepcopy(base), init="zeros")
    report = skeleton_report(model)
    assert report["folded_from_refconv"] is True
    assert report["overall_share"] == pytest.approx(skeleton_report(base)["overall_share"])
