"""The refocusing spectrum (refconv.analysis.spectrum, ``refconv convert-info --spectrum``, analyze's section)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import refconv
from refconv.analysis import plot_spectrum, refocus_spectrum
from refconv.errors import NoEligibleConvError
from refconv.precondition import gram_matrices


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.Conv2d(8, 4, 1))


def test_spectrum_of_stock_and_converted_model_agree_and_match_M():
    model = _net()
    stock = refocus_spectrum(model)
    converted = refocus_spectrum(refconv.convert(model, inplace=False, init="zeros"))
    assert [r["layer"] for r in stock] == ["0", "2"]  # the 1x1 conv is not refocused
    assert stock == converted
    dw = stock[1]
    assert dw["refocus_groups"] == 1 and dw["positions"] == 9 and dw["zero_groups"] == 0
    m = gram_matrices(model[2].weight.detach().double(), 3, 1)[0]
    eig = torch.linalg.eigvalsh(m)
    assert dw["lambda_max"]["max"] == pytest.approx(float(eig[-1]))
    assert dw["lambda_min"]["min"] == pytest.approx(float(eig[0]))
    assert dw["trace"]["mean"] == pytest.approx(float(m.trace()))
    assert torch.allclose(torch.tensor(dw["diag"], dtype=torch.float64).flatten(), m.diagonal())
    dense = stock[0]  # dense: one group per kernel, summarised
    assert dense["refocus_groups"] == 24 and dense["lambda_max"]["min"] <= dense["lambda_max"]["mean"] \
        <= dense["lambda_max"]["max"]


def test_all_ones_kernel_diag_is_the_padding_geometry():
    conv = nn.Conv2d(4, 4, 3, groups=4, bias=False)
    nn.init.ones_(conv.weight)
    rel = torch.tensor(refocus_spectrum(nn.Sequential(conv))[0]["diag_relative"])
    # centre sees 9 taps, an edge 6, a corner 4 (x C kernels): 1, 2/3, 4/9
    assert torch.allclose(rel, torch.tensor([[4 / 9, 2 / 3, 4 / 9], [2 / 3, 1, 2 / 3], [4 / 9, 2 / 3, 4 / 9]]))


def test_spectrum_without_eligible_conv_names_the_fix():
    with pytest.raises(NoEligibleConvError, match="lower map_k"):
        refocus_spectrum(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_plot_spectrum_writes_a_png(tmp_path):
    path = plot_spectrum(refocus_spectrum(_net()), tmp_path / "s.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_convert_info_spectrum_cli(tmp_path, capsys):
    from safetensors.torch import save_file

    from refconv.cli import main
    from refconv.engine.modeling import create_stock_model

    model = create_stock_model("timm/test_efficientnet", num_classes=10, in_chans=1)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    argv = ["convert-info", "--model", "timm/test_efficientnet", "--num-classes", "10", "--in-chans", "1",
            "--weights", str(weights), "--spectrum"]
    assert main([*argv, "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert layers and layers == refocus_spectrum(model)
    assert main(argv) == 0
    assert "lambda_max" in capsys.readouterr().out
    for extra, expected in ((["--map-k", "7"], "lower map_k"), ([], None)):
        bad = argv + extra if expected else [a for a in argv if a not in ("--weights", str(weights))]
        assert main(bad) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("refconv convert-info: error:") and "\n" not in err
        assert (expected or "add --weights") in err
