"""analyze() end to end on tiny models, the plots, the config validation and bad inputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import refconv
from refconv.analysis import (
    SECTIONS,
    AnalysisConfig,
    analyze,
    plot_cost,
    plot_landscape_1d,
    plot_landscape_2d,
    plot_redundancy,
    plot_robustness,
    plot_skeleton,
    to_jsonable,
)
from refconv.errors import CheckpointError, ConfigError, NoEligibleConvError

from _analysis_fixtures import random_batches, small_convnet

PNG = b"\x89PNG\r\n\x1a\n"
TINY = dict(
    num_batches=2, resolution_1d=3, resolution_2d=2, latency_warmup=0, latency_repeats=2, pgd_steps=2,
    eps=(2 / 255, 8 / 255),
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(width: int = 4, seed: int = 0) -> nn.Module:
    return small_convnet(
        width, lambda w: [nn.Conv2d(w, w, 3, stride=2, padding=1, groups=w), nn.ReLU()], seed=seed
    )


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000, path


def test_analyze_writes_json_and_every_png(tmp_path):
    result = analyze(
        _net(seed=0), _net(seed=1), tmp_path, held_out=random_batches(), test=random_batches(),
        mean=[0.5] * 3, std=[0.25] * 3, config=AnalysisConfig(**TINY),
    )
    for section in SECTIONS:
        assert section in result and "skipped" not in result[section], section
    expected = {
        "cost.png", "redundancy.png", "skeleton_stages.png", "skeleton_layers.png", "spectrum_diag.png", "landscape_1d.png",
        "landscape_2d.png", "robustness.png", "analysis.json",
    }
    assert set(result["files"]) == expected
    for name in expected - {"analysis.json"}:
        _assert_png(tmp_path / name)
    on_disk = json.loads((tmp_path / "analysis.json").read_text())
    assert on_disk == result
    assert set(on_disk["redundancy"]["layers"]) == {"0", "3"}
    assert on_disk["attacks"]["baseline"]["samples"] == 8
    assert on_disk["config"]["resolution_1d"] == 3
    for k in range(2):
        assert on_disk["attacks"]["refconv"]["pgd"][k] <= on_disk["attacks"]["refconv"]["fgsm"][k]


def test_sections_without_data_are_skipped_with_a_reason(tmp_path):
    result = analyze(_net(), _net(seed=1), tmp_path, config=AnalysisConfig(**TINY), plot=False)
    assert result["landscape"] == {"skipped": "no held_out batches given"}
    assert result["attacks"] == {"skipped": "no test batches given"}
    assert "skipped" in result["cost"]
    assert result["files"] == ["analysis.json"]
    only = analyze(
        _net(), _net(seed=1), tmp_path / "only", example_input=torch.randn(1, 3, 8, 8),
        config=AnalysisConfig(sections=("skeleton",)),
    )
    assert "redundancy" not in only and set(only["skeleton"]["baseline"]["stages"]) == {
        "stage0 (8x8) k3x3", "stage1 (4x4) k3x3",
    }


def test_different_architectures_fail_before_any_work(tmp_path):
    with pytest.raises(CheckpointError, match=r"0\.weight: \(4, 3, 3, 3\) vs \(6, 3, 3, 3\)"):
        analyze(_net(4), _net(6), tmp_path / "out", held_out=random_batches())
    assert not (tmp_path / "out").exists()


def test_models_without_eligible_convs(tmp_path):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(NoEligibleConvError, match="min_kernel_size"):
        analyze(mlp, copy.deepcopy(mlp), tmp_path, config=AnalysisConfig(sections=("redundancy",)))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"resolution_2d": 500}, r"resolution_2d=500 is out of range: expected an integer in \[2, 101\]"),
        ({"resolution_1d": 1}, r"resolution_1d=1 is out of range"),
        ({"num_batches": 0}, r"num_batches=0 is out of range: expected an integer in \[1, 10000\]"),
        ({"span": -1.0}, r"span=-1.0 is out of range"),
        ({"eps": (0.5, 2.0)}, r"eps=2.0 is out of range"),
        ({"sections": ("cost", "astrology")}, "sections=.*is invalid"),
        ({"interp_range": (1.0, 1.0)}, "start < end"),
        ({"cost_regimes": ("fast",)}, "cost_regimes"),
        ({"redundancy_mode": "pairs"}, "redundancy_mode='pairs'"),
        ({"pgd_restarts": 0}, r"pgd_restarts=0 is out of range"),
    ],
)
def test_config_ranges(options, match):
    with pytest.raises(ConfigError, match=match):
        AnalysisConfig(**options).validate()


def test_config_from_dict_rejects_unknown_keys_and_converts_lists():
    config = AnalysisConfig.from_dict({"eps": [0.01], "sections": ["cost"], "resolution_2d": 0})
    assert config.eps == (0.01,) and config.sections == ("cost",)
    with pytest.raises(ConfigError, match=r"unknown analysis option\(s\) \['resolutoin_1d'\]"):
        AnalysisConfig.from_dict({"resolutoin_1d": 5})


def test_more_batches_requested_than_available(tmp_path):
    with pytest.raises(ConfigError, match=r"num_batches=5 is out of range: only 2 batch"):
        analyze(_net(), _net(seed=1), tmp_path, held_out=random_batches(2), config=AnalysisConfig(num_batches=5))


def test_to_jsonable_is_strict_json():
    data = to_jsonable({"a": float("nan"), "b": (1, torch.tensor([1.5, float("inf")])), 3: True})
    assert data == {"a": None, "b": [1, [1.5, None]], "3": True}
    json.dumps(data, allow_nan=False)


def test_each_plot_is_written_from_plain_data(tmp_path):
    layer = {"baseline": 0.1, "refconv": 0.2, "delta": 0.1}
    plot_redundancy({"layers": {"a": layer, "b": layer}, "overall": layer}, tmp_path / "r.png")
    m = [[0.1, 0.1, 0.1], [0.1, 0.2, 0.1], [0.1, 0.1, 0.1]]
    report = {"stages": {"s k3x3": {"map": m, "share": 0.6, "layers": ["a"]}}}
    plot_skeleton({"baseline": report, "refconv": report}, tmp_path / "s.png")
    curve = {"alpha": [-1.0, 0.0, 1.0], "loss": [2.0, 1.0, 2.0]}
    surface = {"x": [-1.0, 0.0, 1.0], "y": [-1.0, 0.0, 1.0], "loss": [[3, 2, 3], [2, 1, 2], [3, 2, float("nan")]]}
    landscape = {
        "interpolation": curve,
        "random_1d": {"baseline": curve, "refconv": curve},
        "surface_2d": {"baseline": surface, "refconv": surface},
    }
    plot_landscape_1d(landscape, tmp_path / "l1.png")
    plot_landscape_2d(landscape, tmp_path / "l2.png")
    res = {"clean": 0.9, "eps": [1 / 255, 8 / 255], "fgsm": [0.8, 0.3], "pgd": [0.7, 0.1]}
    plot_robustness({"baseline": res, "refconv": res}, tmp_path / "a.png")
    entry = {"flops": 10, "macs": 5, "peak_memory": {"bytes": 2048, "method": "x"}, "latency": {"median_ms": 1.0}}
    cost = {"models": {"baseline": {"params": {"total": 5, "trainable": 5}, "inference": entry}},
            "regimes": ["inference"], "input_shape": [1, 3, 8, 8]}
    plot_cost(cost, tmp_path / "c.png")
    for name in ("r", "s", "l1", "l2", "a", "c"):
        _assert_png(tmp_path / f"{name}.png")


def test_analyze_a_training_time_refconv_model(tmp_path):
    base = _net()
    ref = refconv.convert(copy.deepcopy(base))
    result = analyze(
        base, ref, tmp_path, held_out=random_batches(), test=random_batches(), config=AnalysisConfig(**TINY), plot=False
    )
    assert result["models"]["refconv"]["folded_for_analysis"] is True
    assert result["redundancy"]["refconv"]["folded_from_refconv"] is True
    assert list(result["cost"]["models"]) == ["baseline", "refconv_train", "refconv_folded"]
    assert result["cost"]["folded_equals_baseline"] is True
    assert refconv.refconv_layers(ref)  # the caller's model is untouched


@pytest.mark.slow
def test_analyze_torchvision_mobilenet_v3_small(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    base = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    ref = refconv.convert(copy.deepcopy(base))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, 10, (2,), generator=g))]
    result = analyze(
        base, ref, tmp_path, held_out=data, test=data, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
        config=AnalysisConfig(**{**TINY, "num_batches": 1}),
    )
    assert len(result["redundancy"]["layers"]) == 12  # the stem and the 11 depthwise convs
    assert result["cost"]["folded_equals_baseline"] is True
    train = result["cost"]["models"]["refconv_train"]
    assert train["params"]["total"] > 5 * result["cost"]["models"]["baseline"]["params"]["total"]
    for name in result["files"][:-1]:
        _assert_png(tmp_path / name)
