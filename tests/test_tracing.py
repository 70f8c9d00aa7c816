"""FX tracing, feature extraction and ``torch.export`` of converted and folded models (issue 13, point 7).

The transform reads tensor shapes at run time, which an FX ``Proxy`` cannot answer: the layer computes its kernel
through one ``torch.fx.wrap``-ed function, recorded as a single graph node.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import refconv
from refconv.layers import refocused_weight


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    refconv.convert(model)
    return model


def _x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_symbolic_trace_equals_eager(converted, train):
    model = copy.deepcopy(converted).train(train)
    graph = torch.fx.symbolic_trace(model)
    assert any(n.op == "call_function" and n.target is refocused_weight for n in graph.graph.nodes)
    eager, traced = copy.deepcopy(model), copy.deepcopy(graph)  # train-mode BN updates its statistics: same start
    torch.testing.assert_close(traced(_x()), eager(_x()), rtol=0, atol=0)
    if train:  # the traced graph trains RT: the gradient reaches refocus_weight, never the frozen basis
        traced(_x()).sum().backward()
        assert traced.get_submodule("layer1.0.conv1").refocus_weight.grad is not None
        assert traced.get_submodule("layer1.0.conv1").conv.weight.grad is None


def test_trace_under_no_grad_does_not_capture_the_eval_cache(converted):
    model = copy.deepcopy(converted).eval()
    with torch.no_grad():
        model(_x())  # fills the eval cache of every layer
        graph = torch.fx.symbolic_trace(model)
        layer = graph.get_submodule("conv1")
        layer.refocus_weight.add_(0.1)  # the traced graph must see the change, not a captured Wt
        model.get_submodule("conv1").refocus_weight.add_(0.1)
        torch.testing.assert_close(graph(_x()), model(_x()), rtol=0, atol=0)


def test_feature_extractor_on_a_converted_model(converted):
    model = copy.deepcopy(converted).eval()
    extractor = create_feature_extractor(model, {"layer2": "mid", "fc": "logits"})
    with torch.no_grad():
        feats = extractor(_x())
        assert feats["mid"].shape == (2, 128, 4, 4)
        torch.testing.assert_close(feats["logits"], model(_x()), rtol=0, atol=0)


def test_export_converted_and_folded(converted):
    model = copy.deepcopy(converted).eval()
    x = _x()
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=0)
    folded = refconv.reparameterize(copy.deepcopy(model)).eval()
    exported = torch.export.export(folded, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), folded(x), rtol=0, atol=0)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_fx_graph_mode_quantisation_runs(converted):
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(converted).eval()
    x = _x()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
        with torch.no_grad():
            prepared(x)  # calibrate
            quantised = convert_fx(prepared)
            out, ref = quantised(x), model(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.25 * ref.abs().max()  # int8: close, not equal
