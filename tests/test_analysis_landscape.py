"""Loss landscape (refconv.analysis.landscape): known quadratics, filter normalisation, exact restore."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import refconv
from refconv.analysis import (
    compare_landscape,
    evaluate,
    filter_normalized_direction,
    interpolation_curve,
    loss_along_direction,
    loss_surface_2d,
    take_batches,
)
from refconv.errors import CheckpointError, ConfigError

from _analysis_fixtures import random_batches, small_convnet

pytestmark = pytest.mark.usefixtures("one_thread")


N = 5


def _quadratic_problem(seed: int = 0):
    """Linear(N, 1) without bias, inputs = identity, MSE: the loss is mean((w - t)^2), a known quadratic."""
    torch.manual_seed(seed)
    model = nn.Linear(N, 1, bias=False).double()
    target = model.weight.detach().clone().reshape(N, 1)  # the model sits at the minimum
    batches = [(torch.eye(N, dtype=torch.float64), target)]
    return model, batches


def _net(width: int = 4) -> nn.Module:
    return small_convnet(width, lambda w: [nn.Conv2d(w, w, 3, padding=1)], seed=width)


def test_direction_is_filter_normalised_and_ignores_bias_bn():
    model = _net()
    d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            assert torch.allclose(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5)


def test_same_seed_gives_same_raw_directions_for_both_models():
    a, b = _net(), _net()
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(3.0).add_(0.1)
    da = filter_normalized_direction(a, generator=torch.Generator().manual_seed(7))
    db = filter_normalized_direction(b, generator=torch.Generator().manual_seed(7))
    for name, p in a.named_parameters():
        if p.dim() > 1:
            ua = da[name].flatten(1) / da[name].flatten(1).norm(dim=1, keepdim=True)
            ub = db[name].flatten(1) / db[name].flatten(1).norm(dim=1, keepdim=True)
            assert torch.allclose(ua, ub, atol=1e-6)


def test_1d_curve_is_the_expected_quadratic():
    model, batches = _quadratic_problem()
    d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(3))
    curve = loss_along_direction(model, batches, d, resolution=9, span=2.0, loss_fn=F.mse_loss)
    w2 = float(model.weight.detach().pow(2).sum())  # filter-normalised: ||d|| == ||w|| (one filter)
    for a, loss in zip(curve["alpha"], curve["loss"]):
        assert loss == pytest.approx(a * a * w2 / N, rel=1e-9, abs=1e-12)
    assert curve["alpha"][4] == 0.0 and curve["loss"][4] == pytest.approx(0.0, abs=1e-15)
    assert curve["accuracy"] is None  # regression output: no accuracy


def test_2d_surface_is_the_expected_bowl():
    model, batches = _quadratic_problem()
    surf = loss_surface_2d(model, batches, resolution=5, span=1.0, seed=11, loss_fn=F.mse_loss)
    gen = torch.Generator().manual_seed(11)
    d1 = filter_normalized_direction(model, generator=gen)["weight"]
    d2 = filter_normalized_direction(model, generator=gen)["weight"]
    for i, b in enumerate(surf["y"]):
        for j, a in enumerate(surf["x"]):
            expected = float((a * d1 + b * d2).pow(2).mean())
            assert surf["loss"][i][j] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert surf["loss"][2][2] == pytest.approx(0.0, abs=1e-15)  # the minimum is at the centre


def test_interpolation_matches_the_quadratic_between_two_models():
    a, batches = _quadratic_problem(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.weight.add_(1.0)
    curve = interpolation_curve(a, b, batches, resolution=5, alpha_range=(-1.0, 2.0), loss_fn=F.mse_loss)
    for alpha, loss in zip(curve["alpha"], curve["loss"]):
        assert loss == pytest.approx(alpha * alpha, rel=1e-9, abs=1e-12)  # mean((alpha * 1)^2)


def test_weights_buffers_and_mode_are_restored_exactly():
    model = _net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = random_batches()
    d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    loss_along_direction(model, batches, d, resolution=3)
    loss_surface_2d(model, batches, resolution=2)
    interpolation_curve(model, _net(), batches, resolution=3)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bn_is_evaluated_in_eval_mode():
    model = _net().train()
    batches = random_batches()
    d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    curve = loss_along_direction(model, batches, d, resolution=3)
    model.eval()
    with torch.no_grad():
        expected = sum(float(F.cross_entropy(model(x), y)) * len(y) for x, y in batches) / 8
    assert curve["loss"][1] == pytest.approx(expected, rel=1e-6)
    assert evaluate(model, batches)["loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, b, d: loss_along_direction(m, b, d, resolution=1), r"resolution=1 is out of range.*\[2, 401\]"),
        (lambda m, b, d: loss_along_direction(m, b, d, resolution=1000), r"resolution=1000"),
        (lambda m, b, d: loss_along_direction(m, b, d, span=0.0), r"span=0.0 is out of range"),
        (lambda m, b, d: loss_surface_2d(m, b, resolution=500), r"resolution=500 is out of range.*\[2, 101\]"),
        (lambda m, b, d: take_batches(b, 0), r"num_batches=0 is out of range"),
        (lambda m, b, d: take_batches(b, 3), r"num_batches=3 is out of range: only 2 batch"),
        (lambda m, b, d: interpolation_curve(m, m, b, alpha_range=(1.0, 0.0)), "start < end"),
        (lambda m, b, d: loss_along_direction(m, b, {}), "does not fit"),
    ],
)
def test_out_of_range_options_raise(call, match):
    model, batches = _net(), random_batches()
    d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=match):
        call(model, batches, d)


def test_interpolation_between_different_architectures_names_the_layers():
    with pytest.raises(CheckpointError, match=r"0\.weight: \(4, 3, 3, 3\) vs \(6, 3, 3, 3\)"):
        interpolation_curve(_net(4), _net(6), random_batches())


def test_compare_landscape_structure():
    out = compare_landscape(_net(), _net(), iter(random_batches(3)), num_batches=2, resolution_1d=3, resolution_2d=2)
    assert out["settings"]["samples"] == 8
    assert len(out["interpolation"]["loss"]) == 3
    assert set(out["random_1d"]) == set(out["surface_2d"]) == {"baseline", "refconv"}
    assert out["summary"]["baseline"]["center_loss"] > 0
    assert len(out["surface_2d"]["refconv"]["loss"]) == 2


def test_interpolation_from_baseline_to_zero_init_refconv_is_flat():
    base = _net()
    ref = refconv.convert(copy.deepcopy(base), init="zeros")  # folds to exactly the baseline
    curve = interpolation_curve(base, ref, random_batches(), resolution=3)
    assert max(curve["loss"]) == pytest.approx(min(curve["loss"]), rel=1e-6)


def test_sharpness_is_the_known_quadratic_rise_at_each_radius():
    """On mean((w - t)^2) at its minimum, a filter-normalised step of radius r along any direction d (|d| = |w|)
    raises the loss by exactly r^2 |w|^2 / N: the same for both signs and every direction, so the spread is 0."""
    from refconv.analysis import sharpness

    model, batches = _quadratic_problem()
    before = model.weight.detach().clone()
    radii = (0.01, 0.1, 0.5)
    out = sharpness(model, batches, radii=radii, directions=3, seed=1, loss_fn=F.mse_loss)
    w2 = float(before.pow(2).sum())
    assert out["center_loss"] == pytest.approx(0.0, abs=1e-24)
    assert out["rise"] == pytest.approx([r * r * w2 / N for r in radii], rel=1e-8)
    assert max(out["rise_std"]) == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(model.weight, before)  # restored bit for bit
    with pytest.raises(ConfigError, match="radii"):
        sharpness(model, batches, radii=(0.0,), loss_fn=F.mse_loss)


def test_sharpness_uses_the_same_directions_for_both_models():
    """compare_landscape's sharpness of a model against itself is identical on both sides (same raw draws), and
    it matches the rise read off loss_along_direction at +-r for one direction."""
    from refconv.analysis import sharpness

    net, batches = _net(), random_batches()
    out = compare_landscape(net, copy.deepcopy(net), batches, num_batches=2, resolution_1d=3, surfaces=False)
    assert out["summary"]["baseline"]["sharpness"] == out["summary"]["refconv"]["sharpness"]
    one = sharpness(net.eval(), batches, radii=(0.05,), directions=1, seed=3)
    d = filter_normalized_direction(net, generator=torch.Generator().manual_seed(3))
    curve = loss_along_direction(net, batches, d, resolution=3, span=0.05)
    center = evaluate(net, batches)["loss"]
    assert one["rise"][0] == pytest.approx((curve["loss"][0] + curve["loss"][2]) / 2 - center, rel=1e-6)
