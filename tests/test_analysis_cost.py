"""Cost (refconv.analysis.cost): parameter and FLOP counts with known answers, memory and latency sanity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refconv
from refconv.analysis import compare_cost, cost_report, count_flops, count_parameters, measure_latency, peak_memory
from refconv.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))


def test_parameter_counts():
    model = _net()
    counts = count_parameters(model)
    assert counts["total"] == (3 * 8 * 9 + 8) + 16 + (8 * 4 * 9 + 4)
    model[0].weight.requires_grad_(False)
    assert count_parameters(model)["trainable"] == counts["total"] - 3 * 8 * 9
    assert counts["buffer_elements"] == 8 + 8 + 1


def test_flops_match_the_convolution_formula():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    macs = 2 * 8 * 8 * (8 * 3 * 9 + 4 * 8 * 9)
    assert count_flops(model, x) == 2 * macs
    train = count_flops(model, x, regime="train_step")
    assert 2 * macs * 2 < train <= 2 * macs * 3  # backward: input and weight gradients (none for the first input)
    with pytest.raises(ConfigError, match="regime='bogus'"):
        count_flops(model, x, regime="bogus")


def test_peak_memory_grows_with_the_batch_and_leaves_the_model_alone():
    model = _net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = peak_memory(model, torch.randn(1, 3, 16, 16))
    large = peak_memory(model, torch.randn(8, 3, 16, 16))
    assert small["bytes"] > 0 and large["bytes"] > small["bytes"]
    assert "profiler" in small["method"]
    # one output activation of the last conv is at least allocated
    assert large["bytes"] >= 8 * 4 * 16 * 16 * 4
    train = peak_memory(model, torch.randn(8, 3, 16, 16), regime="train_step")
    assert train["bytes"] > large["bytes"]
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN statistics untouched by the train-step regime


def test_peak_memory_prints_no_profiler_noise(capfd):
    """kineto writes USDT / gpuGetDeviceCount lines to fd 2: the measurement must keep them out of the terminal."""
    import sys

    peak_memory(_net(), torch.randn(2, 3, 8, 8))
    print("still-here", file=sys.stderr)  # fd 2 is restored afterwards
    err = capfd.readouterr().err
    assert "USDT" not in err and "gpuGetDeviceCount" not in err and "profiler_start" not in err
    assert "still-here" in err


def test_latency_is_interleaved_and_restores_modes():
    a, b = _net().train(), _net().eval()
    out = measure_latency({"a": a, "b": b}, torch.randn(1, 3, 8, 8), warmup=1, repeats=4)
    assert set(out) == {"a", "b"}
    for v in out.values():
        assert v["repeats"] == 4 and 0 < v["p25_ms"] <= v["median_ms"] <= v["p75_ms"]
    assert a.training and not b.training
    with pytest.raises(ConfigError, match=r"repeats=0 is out of range"):
        measure_latency({"a": a}, torch.randn(1, 3, 8, 8), repeats=0)


def test_compare_cost_of_a_folded_pair():
    a, b = _net(), _net()
    report = compare_cost(a, b, torch.randn(1, 3, 8, 8), warmup=0, repeats=2)
    assert list(report["models"]) == ["baseline", "refconv_folded"]
    assert report["training_time_model"] is False and report["folded_equals_baseline"] is True
    assert report["regimes"] == ["inference", "train_step"]
    entry = report["models"]["baseline"]["inference"]
    assert entry["macs"] * 2 == entry["flops"] and entry["latency"]["repeats"] == 2
    only = cost_report({"m": a}, torch.randn(1, 3, 8, 8), regimes=["inference"], latency=False, memory=False)
    assert "train_step" not in only["models"]["m"] and only["models"]["m"]["inference"]["latency"] is None


def test_compare_cost_shows_training_time_overhead_and_equal_folded_cost():
    base = _net()
    ref = refconv.convert(copy.deepcopy(base))
    report = compare_cost(base, ref, torch.randn(2, 3, 8, 8), warmup=0, repeats=2, memory=False)
    models = report["models"]
    assert list(models) == ["baseline", "refconv_train", "refconv_folded"]
    assert report["folded_equals_baseline"] is True
    assert models["refconv_train"]["params"]["total"] > models["baseline"]["params"]["total"]
    assert models["refconv_train"]["train_step"]["flops"] > models["baseline"]["train_step"]["flops"]
    assert refconv.refconv_layers(ref)  # the caller's model is not folded
