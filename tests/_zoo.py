"""Shared checks for the model-zoo sweeps: what must hold for every real architecture."""

from __future__ import annotations

import copy
import io
import pickle

import torch
from torch import nn

import refconv

# Folded outputs must match the converted model's to fp32 precision, relative to the output scale.
REL_TOL = 1e-4


@torch.no_grad()
def randomize_norm_stats(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics, so an eval-mode comparison means something (RepVGG's trick)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def first_tensor(out) -> torch.Tensor:
    """Classification outputs may be tuples or namedtuples (GoogLeNet, Inception aux logits)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / (b.abs().max() + 1e-12)).item()


def check_model(build, x: torch.Tensor, *, check_grads: bool = True, check_pickle: bool = True) -> dict:
    """Run every invariant of the core on one architecture.

    ``build`` makes a fresh stock model (random init, fixed seed inside). Returns a few numbers for reports.
    """
    torch.manual_seed(0)
    stock = build().eval()
    randomize_norm_stats(stock)
    keys = list(stock.state_dict().keys())
    shapes = {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    classes = [type(m) for m in stock.modules()]
    nparams = sum(p.numel() for p in stock.parameters())
    with torch.no_grad():
        ref = first_tensor(stock(x))

    # 1. zero init is an exact identity
    zero = refconv.convert(copy.deepcopy(stock), init="zeros")
    n_layers = len(refconv.refconv_layers(zero))
    assert n_layers > 0
    with torch.no_grad():
        assert rel_err(first_tensor(zero(x)), ref) <= 1e-6

    # 2. default init: gradients only where allowed
    torch.manual_seed(1)
    model = refconv.convert(copy.deepcopy(stock))
    if check_grads:
        model.train()
        out = first_tensor(model(x))
        out.float().pow(2).mean().backward()
        for name, layer in refconv.refconv_layers(model).items():
            assert layer.conv.weight.grad is None, f"basis of {name} received a gradient"
            assert layer.refocus_weight.grad is not None, f"refocus weight of {name} got no gradient"
        model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        y = first_tensor(model(x))
    assert torch.isfinite(y).all()

    # 3. fold: same outputs, keys, shapes, classes, parameter count, strict load into a stock model
    folded = refconv.reparameterize(copy.deepcopy(model))
    assert not refconv.refconv_layers(folded)
    with torch.no_grad():
        yf = first_tensor(folded(x))
    err = rel_err(yf, y)
    assert err <= REL_TOL, f"folded output differs: rel err {err:.3g}"
    sd = folded.state_dict()
    assert list(sd.keys()) == keys
    assert {k: tuple(v.shape) for k, v in sd.items()} == shapes
    assert [type(m) for m in folded.modules()] == classes
    assert sum(p.numel() for p in folded.parameters()) == nparams
    fresh = build()
    fresh.load_state_dict(sd, strict=True)

    # 4. timm's re-parameterisation protocol folds the same way
    import timm.utils

    folded_timm = timm.utils.reparameterize_model(model, inplace=False)
    with torch.no_grad():
        assert rel_err(first_tensor(folded_timm(x)), y) <= REL_TOL

    # 5. deepcopy and pickling of the whole converted module
    if check_pickle:
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        with torch.no_grad():
            assert rel_err(first_tensor(loaded(x)), y) <= 1e-6
        clone = pickle.loads(pickle.dumps(copy.deepcopy(model)))
        with torch.no_grad():
            assert rel_err(first_tensor(clone(x)), y) <= 1e-6
    return {"layers": n_layers, "fold_rel_err": err}
