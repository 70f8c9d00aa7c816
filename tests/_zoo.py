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
def randomize_norm_stats(model: nn.Module, seed: int = 0, x: torch.Tensor | None = None) -> None:
    """Give every BatchNorm non-trivial affine parameters and statistics, so an eval comparison means something.

    RepVGG's trick, with one refinement: the running statistics are *calibrated* on random inputs (cumulative
    averages of train-mode forwards) rather than drawn at random. Drawn statistics that do not match the
    activations make deep nets explode in eval mode (EfficientNetV2 reaches outputs ~1e4 where fp32 and fp64
    disagree by 10%), and such a net cannot tell an exact fold from a wrong one.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        if m.weight is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    if x is None:
        return
    saved = [(m, m.momentum) for m in bns if m.track_running_stats]
    for m, _ in saved:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration passes
    was_training = model.training
    model.train()
    for _ in range(2):
        model(torch.randn((max(8, x.shape[0]), *x.shape[1:]), generator=g))
    model.train(was_training)
    for m, momentum in saved:
        m.momentum = momentum
        # A channel that was nearly constant on the calibration batch would divide by ~sqrt(eps) in eval
        # mode and amplify round-off without bound: keep every variance at least 0.1.
        m.running_var.clamp_(min=0.1)


def first_tensor(out) -> torch.Tensor:
    """Classification outputs may be tuples or namedtuples (GoogLeNet, Inception aux logits)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / (b.abs().max() + 1e-12)).item()


# Above this many RT weights (the authors' rule is quadratic in the channels of depthwise layers:
# EfficientNet-B7 would need tens of GiB) the sweep caps RT's group size instead, as users of such models would.
MAX_REFOCUS_PARAMS = 150_000_000


def _groups_for(stock: nn.Module):
    """None (the authors' rule) unless RT would exceed MAX_REFOCUS_PARAMS; then at most 64 kernels per RT group,
    and if even that is too large (RegNetY-32GF: wide grouped convs), one kernel per group."""
    plans = refconv.plan_conversion(stock)
    if sum(p.refocus_params for p in plans) <= MAX_REFOCUS_PARAMS:
        return None

    def rt_params(size: int) -> int:
        total = 0
        for p in plans:
            g = refconv.capped_groups(p.kernels, p.refocus_groups, size)
            total += p.kernels * (p.kernels // g) * p.map_k ** (len(p.weight_shape) - 2)
        return total

    size = 64 if rt_params(64) <= MAX_REFOCUS_PARAMS else 1

    def capped(name, conv):
        n = conv.weight.shape[0] * conv.weight.shape[1]
        return refconv.capped_groups(n, refconv.default_groups(conv.in_channels, conv.out_channels, conv.groups), size)

    return capped


def check_model(build, x: torch.Tensor, *, check_grads: bool = True, check_pickle: bool = True) -> dict:
    """Run every invariant of the core on one architecture.

    ``build`` makes a fresh stock model (random init, fixed seed inside). Returns a few numbers for reports.
    """
    torch.manual_seed(0)
    stock = build().eval()
    randomize_norm_stats(stock, x=x)
    keys = list(stock.state_dict().keys())
    shapes = {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    classes = [type(m) for m in stock.modules()]
    nparams = sum(p.numel() for p in stock.parameters())
    with torch.no_grad():
        ref = first_tensor(stock(x))

    # 1. zero init is an exact identity
    groups = _groups_for(stock)
    zero = refconv.convert(copy.deepcopy(stock), init="zeros", groups=groups)
    n_layers = len(refconv.refconv_layers(zero))
    assert n_layers > 0
    with torch.no_grad():
        assert rel_err(first_tensor(zero(x)), ref) <= 1e-6

    # 2. default init: gradients only where allowed
    torch.manual_seed(1)
    model = refconv.convert(copy.deepcopy(stock), groups=groups)
    # A random RT on a random network with eval-mode BatchNorm compounds layer by layer (EfficientNetV2's dense
    # 3x3 stages reach outputs ~1e5), where fp32 round-off is amplified chaotically and says nothing about
    # folding. A tenth of the default init keeps Wt clearly different from Wb and the outputs well conditioned.
    with torch.no_grad():
        for layer in refconv.refconv_layers(model).values():
            layer.refocus_weight.mul_(0.1)
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
    # "fp32 precision" is the architecture's own: deep nets (ResNet-152, Wide ResNet-101) differ from their
    # float64 selves by ~1e-4 of the output scale before any folding. The fold must be as close as that.
    bound = REL_TOL
    if err > REL_TOL:
        with torch.no_grad():
            own = rel_err(y, first_tensor(copy.deepcopy(model).double()(x.double())).float())
        bound = max(REL_TOL, 4 * own)
    assert err <= bound, f"folded output differs: rel err {err:.3g} (bound {bound:.3g})"
    sd = folded.state_dict()
    assert list(sd.keys()) == keys
    assert {k: tuple(v.shape) for k, v in sd.items()} == shapes
    assert [type(m) for m in folded.modules()] == classes
    assert sum(p.numel() for p in folded.parameters()) == nparams
    fresh = build()
    fresh.load_state_dict(sd, strict=True)

    # 4. timm's re-parameterisation protocol folds the same way. timm walks parents before children, so a
    # model with timm's own re-parameterisable blocks (RepGhost asserts on its branch convs) is folded by
    # refconv first, then by timm: the documented order for such models.
    import timm.utils

    own_blocks = any(
        not isinstance(m, refconv.RefConv) and any(hasattr(m, a) for a in ("fuse", "reparameterize", "switch_to_deploy"))
        for m in stock.modules()
    )
    src = refconv.reparameterize(copy.deepcopy(model)) if own_blocks else model
    folded_timm = timm.utils.reparameterize_model(src, inplace=False)
    # timm's own conv+BN fusions are exact only to ~3e-5 relative on these nets (MobileOne on the stock
    # model): with them in the chain the bound is theirs, not ours.
    with torch.no_grad():
        assert rel_err(first_tensor(folded_timm(x)), y) <= max(bound, 1e-3 if own_blocks else REL_TOL)

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
    return {"layers": n_layers, "fold_rel_err": err, "capped_groups": groups is not None}
