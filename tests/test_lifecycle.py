"""A converted model's life: eval cache, state_dict round trips, copies, torch.compile, DDP."""

from __future__ import annotations

import copy
import io
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import refconv

from test_convert import small_net


def converted(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return refconv.convert(small_net())


def test_eval_cache_reused_until_parameters_change():
    model = converted().eval()
    layer = model[3]
    x = torch.randn(2, 3, 6, 6)
    calls = []
    orig = layer.transformed_weight
    layer.transformed_weight = lambda: (calls.append(1), orig())[1]
    with torch.no_grad():
        y1 = model(x)
        model(x)
    assert len(calls) == 1  # computed once, reused
    # an optimizer step changes the refocus weight in place -> recomputed
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    opt.step()
    model.eval()
    calls.clear()
    with torch.no_grad():
        y2 = model(x)
    assert len(calls) == 1 and not torch.allclose(y1, y2)
    # load_state_dict writes in place -> recomputed, and results follow the loaded weights
    other = converted(seed=1)
    model.load_state_dict(other.state_dict())
    calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(model(x), other.eval()(x))
    assert len(calls) == 1


def test_eval_with_grad_enabled_is_differentiable():
    # adversarial attacks and eval-mode fine-tuning need gradients through Wt: no stale cache then
    model = converted().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model(x)  # fills the eval cache
    # the reference: the same function with the RefConv layers in train mode (never cached), BatchNorm in eval mode
    ref = copy.deepcopy(model).train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    for step in range(2):  # a step on RT between the two: the gradients must follow the new Wt
        grads = []
        for net in (model, ref):
            net.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_()
            (net(xg) ** 2).sum().backward()
            grads.append({"x": xg.grad, **{n: p.grad for n, p in net.named_parameters() if p.grad is not None}})
        got, want = grads
        assert got.keys() == want.keys() and "0.refocus_weight" in got and "3.refocus_weight" in got
        for k in want:
            torch.testing.assert_close(got[k], want[k], msg=f"step {step}: {k}")
        with torch.no_grad():
            for net in (model, ref):
                for layer in refconv.refconv_layers(net).values():
                    layer.refocus_weight.sub_(0.5 * layer.refocus_weight.grad)


def test_cache_follows_dtype_changes():
    model = converted().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model(x)
        model.double()
        y = model(x.double())
    assert y.dtype == torch.float64


def test_state_dict_round_trip_into_fresh_conversion():
    src = converted(seed=0)
    dst = converted(seed=1)
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, 3, 6, 6)
    src.eval(), dst.eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    assert not dst[0].conv.weight.requires_grad  # loading keeps the basis frozen


def test_deepcopy_and_pickle_of_eval_model_with_cache():
    model = converted().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        y = model(x)
    assert model[0]._cache is not None
    clone = copy.deepcopy(model)
    assert clone[0]._cache is None
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), y)
        torch.testing.assert_close(loaded(x), y)
    # folding a deep copy leaves the original working (the parametrize pitfall)
    refconv.reparameterize(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), y)


def test_fold_in_reduced_precision_uses_exact_arithmetic():
    model = converted()
    model.to(torch.bfloat16)
    folded = refconv.reparameterize(copy.deepcopy(model))
    exact = refconv.refocus(model[3].conv.weight.double(), model[3].refocus_weight.double(), model[3].refocus_groups)
    assert folded[3].weight.dtype == torch.bfloat16
    torch.testing.assert_close(folded[3].weight, exact.to(torch.bfloat16), rtol=0, atol=0)


def test_torch_compile():
    model = converted().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
    compiled = torch.compile(model, backend="eager")  # dynamo tracing; no C++ toolchain needed
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), expected)
    model.train()
    out = compiled(x)
    out.sum().backward()
    assert model[0].refocus_weight.grad is not None and model[0].conv.weight.grad is None


def _no_bn_net() -> nn.Module:
    # BatchNorm statistics differ between a per-rank half batch and the joint batch; leave them out.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 4, 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_path: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = refconv.convert(_no_bn_net())
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(rank)
        for _ in range(2):
            x = torch.randn(4, 3, 6, 6, generator=g)
            opt.zero_grad()
            ddp(x).pow(2).mean().backward()
            opt.step()
        if rank == 0:
            torch.save(model.state_dict(), out_path)
    finally:
        dist.destroy_process_group()


def test_distributed_data_parallel_matches_single_process(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.start_processes(_ddp_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    ddp_state = torch.load(out)
    # single process, same global batch (both ranks' halves), same steps
    torch.manual_seed(0)
    model = refconv.convert(_no_bn_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    for _ in range(2):
        x = torch.cat([torch.randn(4, 3, 6, 6, generator=g) for g in gens])
        opt.zero_grad()
        # DDP averages per-rank mean losses: the same as the mean over the joint batch
        model(x).pow(2).mean().backward()
        opt.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-4, atol=1e-5, msg=k)
