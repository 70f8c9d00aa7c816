"""FGSM / PGD (refconv.analysis.attacks) on tiny models whose response to an attack is known."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import refconv
from refconv.analysis import compare_robustness, fgsm, pgd, robust_accuracy
from refconv.errors import CheckpointError, ConfigError

MEAN, STD = [0.5, 0.4], [0.25, 0.2]

pytestmark = pytest.mark.usefixtures("one_thread")


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(MEAN).view(1, 2, 1, 1)) / torch.tensor(STD).view(1, 2, 1, 1)


def _to_pixels(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(1, 2, 1, 1) + torch.tensor(MEAN).view(1, 2, 1, 1)


def _linear_problem():
    """Two-class linear model on normalised 2x2x2 images; pixels in [0.3, 0.7] so eps <= 0.25 never clips."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2)).double()
    g = torch.Generator().manual_seed(1)
    pixels = (0.3 + 0.4 * torch.rand(64, 2, 2, 2, generator=g)).double()
    x = _normalise(pixels)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every sample starts correctly classified
    return model, pixels, x, y


def _input_weight_diff(model: nn.Module) -> torch.Tensor:
    """d(logit_1 - logit_0)/d(pixels) of the linear model, shaped like one image."""
    w = model[1].weight.detach()
    return ((w[1] - w[0]).view(2, 2, 2)) / torch.tensor(STD, dtype=torch.float64).view(2, 1, 1)


def test_fgsm_on_a_linear_model_moves_to_the_known_corner():
    model, pixels, x, y = _linear_problem()
    eps = 0.05
    adv_pixels = _to_pixels(fgsm(model, x, y, eps=eps, mean=MEAN, std=STD))
    direction = _input_weight_diff(model).sign()
    sign = torch.where(y == 1, -1.0, 1.0).double().view(-1, 1, 1, 1)  # push the margin toward the other class
    assert torch.allclose(adv_pixels - pixels, eps * sign * direction, atol=1e-9)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.03, 0.1])
def test_linear_model_accuracy_has_the_closed_form(eps):
    model, pixels, x, y = _linear_problem()
    with torch.no_grad():
        logits = model(x)
    margin = (logits[:, 1] - logits[:, 0]).abs()
    expected = float((margin > eps * _input_weight_diff(model).abs().sum()).double().mean())
    batches = [(x, y)]
    result = robust_accuracy(model, batches, eps=[eps], steps=20, mean=MEAN, std=STD)
    assert result["clean"] == 1.0
    assert result["fgsm"][0] == pytest.approx(expected)
    # FGSM is optimal for a linear two-class model; PGD reaches the same corner.
    assert result["pgd"][0] == pytest.approx(expected)


def _trained_mlp():
    """A fresh copy of the trained ring classifier (trained once per test session)."""
    model, x, y = _train_mlp()
    return copy.deepcopy(model), x, y


@functools.lru_cache(maxsize=1)
def _train_mlp():
    """A small nonlinear classifier on two noisy rings, trained to high clean accuracy."""
    g = torch.Generator().manual_seed(0)
    n = 256
    radius = torch.where(torch.arange(n) % 2 == 0, 0.15, 0.35)
    angle = torch.rand(n, generator=g) * 6.2832
    pix = torch.stack([0.5 + radius * angle.cos(), 0.5 + radius * angle.sin()], dim=1)
    pix = (pix + 0.02 * torch.randn(n, 2, generator=g)).clamp(0, 1)
    y = (torch.arange(n) % 2).long()
    x = (pix - 0.5) / 0.25
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_pgd_is_never_worse_than_fgsm():
    model, x, y = _trained_mlp()
    batches = [(x[:128], y[:128]), (x[128:], y[128:])]
    eps = [0.01, 0.03, 0.05, 0.08, 0.12]
    result = robust_accuracy(model, batches, eps=eps, steps=20, mean=0.5, std=0.25)
    assert result["clean"] > 0.95
    for k in range(len(eps)):
        assert result["pgd"][k] <= result["fgsm"][k], (eps[k], result)
    assert result["pgd"][-1] < result["clean"]  # the attack has an effect at the largest budget


def test_plain_pgd_without_the_fgsm_point_still_attacks():
    model, x, y = _trained_mlp()
    result = robust_accuracy(
        model, [(x, y)], eps=[0.12], attacks=["pgd"], steps=10, restarts=2, include_fgsm=False, mean=0.5, std=0.25
    )
    assert result["pgd"][0] < 0.5 * result["clean"]
    assert result["settings"]["pgd_includes_fgsm_point"] is False and "fgsm" not in result


def test_perturbations_stay_in_the_ball_and_in_pixel_range():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    pixels = torch.rand(6, 2, 4, 4)
    pixels[0] = 0.0
    pixels[1] = 1.0
    x, y = _normalise(pixels), torch.randint(0, 3, (6,))
    for adv in (
        fgsm(model, x, y, eps=0.1, mean=MEAN, std=STD),
        pgd(model, x, y, eps=0.1, steps=5, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(0)),
    ):
        adv_pixels = _to_pixels(adv)
        assert float((adv_pixels - pixels).abs().max()) <= 0.1 + 1e-6
        assert float(adv_pixels.min()) >= -1e-6 and float(adv_pixels.max()) <= 1 + 1e-6


def test_attacks_leave_model_mode_and_grads_alone_and_are_reproducible():
    model, x, y = _trained_mlp()
    model.train()
    for p in model.parameters():
        p.grad = None
    a = pgd(model, x, y, eps=0.05, generator=torch.Generator().manual_seed(3), mean=0.5, std=0.25)
    b = pgd(model, x, y, eps=0.05, generator=torch.Generator().manual_seed(3), mean=0.5, std=0.25)
    fgsm(model, x, y, eps=0.05, mean=0.5, std=0.25)
    assert torch.equal(a, b)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_zero_eps_is_clean_accuracy():
    model, x, y = _trained_mlp()
    result = robust_accuracy(model, [(x, y)], eps=[0.0], mean=0.5, std=0.25)
    assert result["fgsm"] == [result["clean"]] and result["pgd"] == [result["clean"]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": [1.5]}, r"eps=1.5 is out of range.*\[0.0, 1.0\]"),
        ({"eps": []}, "eps is empty"),
        ({"steps": 0}, r"steps=0 is out of range.*\[1, 1000\]"),
        ({"step_size": 0.0}, r"step_size=0.0 is out of range"),
        ({"attacks": ["cw"]}, "attacks=\\['cw'\\] is invalid"),
        ({"std": [0.2, 0.0], "mean": [0.5, 0.5]}, "every value must be > 0"),
        ({"mean": [0.5, 0.5, 0.5]}, "3 values but the inputs have 2 channels"),
        ({"max_batches": 0}, r"max_batches=0 is out of range"),
        ({"restarts": 0}, r"restarts=0 is out of range.*\[1, 100\]"),
    ],
)
def test_bad_options_raise_config_error(kwargs, match):
    model, x, y = _trained_mlp()
    with pytest.raises(ConfigError, match=match):
        robust_accuracy(model, [(x[:4], y[:4])], **kwargs)


def test_compare_robustness_uses_the_same_samples():
    model, x, y = _trained_mlp()
    other = copy.deepcopy(model)
    batches = iter([(x[:64], y[:64]), (x[64:128], y[64:128]), (x[128:], y[128:])])
    out = compare_robustness(model, other, batches, eps=[0.05], steps=3, max_batches=2, mean=0.5, std=0.25)
    assert out["baseline"]["samples"] == out["refconv"]["samples"] == 128
    assert out["baseline"] == out["refconv"]  # same weights, same seed: same result
    wider = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 2))
    with pytest.raises(CheckpointError, match=r"0\.weight"):
        compare_robustness(model, wider, [(x, y)])


def test_refconv_model_is_attacked_folded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.randn(8, 2, 4, 4), torch.randint(0, 3, (8,))
    ref = refconv.convert(copy.deepcopy(model), init="zeros")
    res_ref = robust_accuracy(ref, [(x, y)], eps=[0.02], steps=3, mean=MEAN, std=STD)
    res_base = robust_accuracy(model, [(x, y)], eps=[0.02], steps=3, mean=MEAN, std=STD)
    assert res_ref["folded_from_refconv"] is True
    assert res_ref["fgsm"] == res_base["fgsm"] and res_ref["clean"] == res_base["clean"]
