"""Channel redundancy (refconv.analysis.redundancy) on hand-made kernels with known answers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import refconv
from refconv.analysis import (
    channel_diversity,
    check_same_architecture,
    compare_redundancy,
    eligible_convs,
    fold_for_analysis,
    kernel_distributions,
    layer_redundancy,
    redundancy_report,
)
from refconv.errors import CheckpointError, ConfigError, NoEligibleConvError

from _analysis_fixtures import small_convnet

pytestmark = pytest.mark.usefixtures("one_thread")


def _sym_kl(p: list[float], q: list[float]) -> float:
    return 0.5 * sum(a * math.log(a / b) + b * math.log(b / a) for a, b in zip(p, q))


def _net(width: int = 6) -> nn.Module:
    return small_convnet(width, lambda w: [nn.Conv2d(w, w, 3, padding=1, groups=w), nn.Conv2d(w, w, 1)])


def test_identical_kernels_have_zero_diversity():
    w = torch.randn(1, 4, 3, 3).repeat(8, 1, 1, 1)
    assert channel_diversity(w) == pytest.approx(0.0, abs=1e-12)
    assert channel_diversity(w, mode="spatial") == pytest.approx(0.0, abs=1e-12)


def test_scaled_and_sign_flipped_kernels_have_zero_diversity():
    base = torch.randn(1, 2, 3, 3)
    w = torch.cat([base, 3.0 * base, -0.5 * base])
    assert channel_diversity(w) == pytest.approx(0.0, abs=1e-12)


def test_two_channels_known_value():
    # |w| -> [0.75, 0.25] and [0.25, 0.75]: symmetric KL = 0.5 * log(3) with eps = 0.
    w = torch.tensor([[[[3.0, 1.0]]], [[[1.0, 3.0]]]])
    assert channel_diversity(w, eps=0.0) == pytest.approx(0.5 * math.log(3.0), rel=1e-12)


def test_three_channels_mean_over_pairs_and_eps_smoothing():
    w = torch.tensor([[[[1.0, 0.0, 0.0]]], [[[0.0, 2.0, 0.0]]], [[[1.0, 1.0, 2.0]]]])
    eps = 1e-3

    def dist(v: list[float]) -> list[float]:
        s = sum(v)
        return [(x / s + eps) / (1 + 3 * eps) for x in v]

    p = [dist([1, 0, 0]), dist([0, 2, 0]), dist([1, 1, 2])]
    expected = (_sym_kl(p[0], p[1]) + _sym_kl(p[0], p[2]) + _sym_kl(p[1], p[2])) / 3
    assert channel_diversity(w, eps=eps) == pytest.approx(expected, rel=1e-12)


def test_filter_mode_uses_in_channels_spatial_mode_does_not():
    # Same spatial pattern on different input channels: diverse as filters, identical spatially.
    k = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = torch.zeros(2, 2, 2, 2)
    w[0, 0], w[1, 1] = k, k
    assert channel_diversity(w) > 1.0
    assert channel_diversity(w, mode="spatial") == pytest.approx(0.0, abs=1e-12)


def test_distributions_are_normalised_and_zero_filter_is_uniform():
    w = torch.randn(4, 3, 3, 3)
    w[2] = 0.0
    p = kernel_distributions(w)
    assert p.shape == (4, 27)
    assert torch.allclose(p.sum(dim=1), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(p[2], torch.full((27,), 1 / 27, dtype=torch.float64))
    assert math.isfinite(channel_diversity(w))


def test_pair_sampling_is_seeded_and_close_to_exact():
    w = torch.randn(64, 2, 3, 3)  # 2016 pairs
    exact = channel_diversity(w)
    a = channel_diversity(w, max_pairs=500, seed=1)
    assert a == channel_diversity(w, max_pairs=500, seed=1)
    assert a != channel_diversity(w, max_pairs=500, seed=2)
    assert a == pytest.approx(exact, rel=0.1)
    report = redundancy_report(nn.Conv2d(2, 64, 3), max_pairs=500)
    layer = report["layers"][""]
    assert layer["sampled"] is True and layer["pairs"] == 500


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": torch.randn(4, 3)}, "at least 3 dims"),
        ({"weight": torch.randn(1, 3, 3, 3)}, "at least 2 output channels"),
        ({"weight": torch.randn(4, 3, 3, 3), "eps": 0.5}, r"eps=0.5 is out of range.*\[0.0, 0.01\]"),
        ({"weight": torch.randn(4, 3, 3, 3), "mode": "bogus"}, "mode='bogus'"),
        ({"weight": torch.randn(4, 3, 3, 3), "max_pairs": 0}, r"max_pairs=0 is out of range"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        channel_diversity(**kwargs)


def test_layer_redundancy_selects_kxk_convs_by_default():
    model = _net()
    names = list(layer_redundancy(model))
    assert names == ["0", "3"]
    assert list(layer_redundancy(model, min_kernel_size=1)) == ["0", "3", "4"]
    assert list(eligible_convs(model, min_kernel_size=1)) == ["0", "3", "4"]


def test_model_without_eligible_convs_raises():
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(NoEligibleConvError, match="min_kernel_size"):
        layer_redundancy(mlp)
    pointwise = nn.Sequential(nn.Conv2d(3, 4, 1))
    with pytest.raises(NoEligibleConvError, match="1 convolution"):
        layer_redundancy(pointwise)


def test_compare_redundancy_reports_layers_and_delta():
    a, b = _net(), _net()
    out = compare_redundancy(a, b)
    assert set(out["layers"]) == {"0", "3"}
    for v in out["layers"].values():
        assert v["delta"] == pytest.approx(v["refconv"] - v["baseline"])
    assert out["overall"]["baseline"] == pytest.approx(sum(v["baseline"] for v in out["layers"].values()) / 2)
    same = compare_redundancy(a, copy.deepcopy(a))
    assert same["overall"]["delta"] == 0.0


def test_different_architectures_name_the_layers():
    with pytest.raises(CheckpointError, match=r"0\.weight: \(6, 3, 3, 3\) vs \(8, 3, 3, 3\)") as err:
        check_same_architecture(_net(6), _net(8))
    msg = str(err.value)
    # same keys, other widths: every difference is a shape (11 of them, 10 shown), none is a missing key
    assert "only in" not in msg and "shape differs (baseline vs refconv)" in msg and "(1 more)" in msg
    assert "7.bias" not in msg  # (3,) in both
    extra = nn.Sequential(*_net(6), nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match=r"only in refconv: 8\.weight, 8\.bias\.") as err:
        compare_redundancy(_net(6), extra)
    assert "only in baseline" not in str(err.value) and "shape differs" not in str(err.value)


def test_the_basis_inside_a_refconv_layer_is_never_analysed():
    """A converted model's ``.conv`` children hold the basis Wb, not the applied kernel: they are not eligible,
    and the analyses fold the model (through the core's reparameterize) to read Wt instead."""
    model = refconv.convert(_net(), init="zeros")
    assert eligible_convs(_net()) and not eligible_convs(model)
    folded, was_folded = fold_for_analysis(model)
    assert was_folded and folded is not model and list(eligible_convs(folded)) == list(eligible_convs(_net()))
    plain = _net()
    assert fold_for_analysis(plain) == (plain, False)


def test_refconv_model_is_folded_on_a_copy():
    base = _net()
    model = refconv.convert(copy.deepcopy(base), init="zeros")
    report = redundancy_report(model)
    assert report["folded_from_refconv"] is True
    # zero-initialised RT: Wt == Wb, so the folded weights equal the baseline's
    assert report["overall"] == pytest.approx(redundancy_report(base)["overall"], rel=1e-9)
    from refconv.analysis import has_refconv_layers

    assert has_refconv_layers(model)  # the caller's model is untouched
