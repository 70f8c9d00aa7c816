"""Implicit refocusing (refconv.implicit, refconv.precondition): training RT is training ``Wt`` with ``g @ M``.

Part 1 (pure, fp64): N SGD steps of the explicit RefConv layer equal N steps of the preconditioned update on the
stock conv, over depthwise / dense / grouped convs, 1-D / 2-D / 3-D, default and zero init, with momentum,
Nesterov and weight decay; the preconditioner variants are what docs/method.md says they are.
Part 2 (engine): both implementations from one seed end at the same weights; implicit runs resume exactly, keep
no extra parameter and deploy the stock model; the bad inputs are one-line errors.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refconv
from refconv.errors import ConversionError
from refconv.implicit import ImplicitRefocusing, check_optimizer
from refconv.precondition import (
    GroupPreconditioner,
    build_preconditioner,
    gram_matrices,
    group_spectrum,
    patch_stack,
)
from refconv.transform import kernel_patches

# (name, conv factory): small convs of every kind RefConv refocuses
CONVS = {
    "dw2d": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),
    "dense2d": lambda: nn.Conv2d(2, 3, 3, padding=1),
    "grouped2d": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2),
    "dw1d": lambda: nn.Conv1d(3, 3, 5, padding=2, groups=3),
    "dense1d": lambda: nn.Conv1d(2, 2, 3, padding=1),
    "dw3d": lambda: nn.Conv3d(2, 2, 3, padding=1, groups=2),
    "dense3d": lambda: nn.Conv3d(2, 2, 3, padding=1, bias=False),
}
OPTS = {
    "sgd": dict(momentum=0.0),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
}


def _net(kind: str) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(CONVS[kind]()).double()


def _batches(conv: nn.Module, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    d = conv.weight.dim() - 2
    shape = (3, conv.in_channels) + (6,) * d
    out_shape = (3, conv.out_channels) + (6,) * d
    return [(torch.randn(shape, generator=gen, dtype=torch.float64),
             torch.randn(out_shape, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches) -> None:
    for x, y in batches:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("init", ["default", "zeros"])
@pytest.mark.parametrize("opt", list(OPTS))
@pytest.mark.parametrize("kind", list(CONVS))
def test_explicit_steps_equal_preconditioned_steps_fp64(kind, opt, init):
    lr, wd, steps = 0.05, 1e-2, 15
    base = _net(kind)
    batches = _batches(base[0], steps)

    explicit = copy.deepcopy(base)
    torch.manual_seed(3)
    refconv.convert(explicit, init=init)
    sgd = torch.optim.SGD(explicit.parameters(), lr=lr, weight_decay=wd, **OPTS[opt])
    _train(explicit, sgd, batches)
    folded = refconv.reparameterize(explicit, inplace=False)

    implicit = copy.deepcopy(base)
    torch.manual_seed(3)  # the same RT draws: the same start Wt0 = Wb + Wr0 P
    refconv.convert(implicit, init=init)
    imp = ImplicitRefocusing.from_converted(implicit, weight_decay=wd)
    assert type(implicit[0]) is type(base[0])  # folded back: the stock module
    sgd = torch.optim.SGD(imp.param_groups(implicit, lr=lr, weight_decay=wd), lr=lr, **OPTS[opt])
    imp.attach(sgd)
    imp.check_optimizer_groups(sgd)
    _train(implicit, sgd, batches)

    moved = (folded[0].weight - base[0].weight).norm()
    assert moved > 1e-3  # the test trains something
    torch.testing.assert_close(implicit[0].weight, folded[0].weight, rtol=1e-12, atol=1e-13)
    if base[0].bias is not None:
        torch.testing.assert_close(implicit[0].bias, folded[0].bias, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["dw2d", "grouped2d", "dense2d"])
def test_normalized_explicit_equals_normalized_implicit_fp64(kind):
    from refconv.engine.refocusing import ExplicitNormalization

    lr, wd, steps = 0.05, 1e-2, 10
    base = _net(kind)
    batches = _batches(base[0], steps)
    explicit = copy.deepcopy(base)
    torch.manual_seed(3)
    refconv.convert(explicit)
    sgd = torch.optim.SGD(explicit.parameters(), lr=lr, weight_decay=wd, momentum=0.9)
    ExplicitNormalization(explicit).attach(sgd)  # RT's gradient rows of each group / lambda_max
    _train(explicit, sgd, batches)
    implicit = copy.deepcopy(base)
    torch.manual_seed(3)
    refconv.convert(implicit)
    imp = ImplicitRefocusing.from_converted(implicit, precond="normalized", weight_decay=wd)
    sgd = torch.optim.SGD(imp.param_groups(implicit, lr=lr, weight_decay=wd), lr=lr, momentum=0.9)
    imp.attach(sgd)
    _train(implicit, sgd, batches)
    torch.testing.assert_close(implicit[0].weight, refconv.reparameterize(explicit)[0].weight, rtol=1e-12,
                               atol=1e-13)


@pytest.mark.parametrize("impl", ["explicit", "implicit"])
def test_a_loss_on_one_channel_moves_only_that_kernel_from_zero_init(impl):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False)).double()
    start = model[0].weight.detach().clone()
    refconv.convert(model, init="zeros")  # depthwise: one RT group, every kernel refocused on all five
    if impl == "explicit":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    else:
        imp = ImplicitRefocusing.from_converted(model, weight_decay=1e-2)
        opt = torch.optim.SGD(imp.param_groups(model, lr=0.1, weight_decay=1e-2), lr=0.1, momentum=0.9)
        imp.attach(opt)
    x = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        model(x)[:, 2].square().mean().backward()
        opt.step()
    weight = refconv.reparameterize(model, inplace=False)[0].weight if impl == "explicit" else model[0].weight
    delta = (weight - start).flatten(1).norm(dim=1)
    assert delta[2] > 1e-3
    assert torch.all(delta[[0, 1, 3, 4]] == 0)


# ---------------------------------------------------------------- the preconditioners
def _basis(shape=(6, 1, 3, 3), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_patch_stack_matches_kernel_patches_and_gram_is_pt_p():
    basis = _basis()
    stack = patch_stack(basis, 3)
    assert stack.shape == (6, 9, 9)
    torch.testing.assert_close(stack.reshape(-1, 9), kernel_patches(basis, 3).reshape(-1, 9))
    p = stack.reshape(1, -1, 9)[0]
    torch.testing.assert_close(gram_matrices(basis, 3, 1)[0], p.T @ p)


def test_preconditioner_variants():
    basis = _basis()
    exact = build_preconditioner(basis, 3, 1, "exact").matrix(basis)
    norm = build_preconditioner(basis, 3, 1, "normalized").matrix(basis)
    geom = build_preconditioner(basis, 3, 1, "geometry").matrix(basis)
    iso = build_preconditioner(basis, 3, 1, "isotropic").matrix(basis)
    top = torch.linalg.eigvalsh(exact)[:, -1]
    torch.testing.assert_close(torch.linalg.eigvalsh(norm)[:, -1], torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(norm * top, exact)
    trace = torch.diagonal(exact, dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(torch.diagonal(geom, dim1=-2, dim2=-1).sum(-1), trace)
    ones = gram_matrices(torch.ones(1, 1, 3, 3, dtype=torch.float64), 3, 1)
    torch.testing.assert_close(geom / geom[0, 4, 4], ones / ones[0, 4, 4])
    torch.testing.assert_close(iso, trace.reshape(-1, 1, 1) / 9 * torch.eye(9, dtype=torch.float64))
    spec = group_spectrum(basis, 3, 1)
    torch.testing.assert_close(spec["max"], top)
    torch.testing.assert_close(spec["trace"], trace)
    torch.testing.assert_close(spec["diag"], torch.diagonal(exact, dim1=-2, dim2=-1))


@pytest.mark.parametrize("precond", ["exact", "normalized"])
def test_factored_path_equals_stored_matrices(precond):
    basis = _basis((4, 3, 3, 3))  # dense: one group per kernel, M would cost more than RT itself
    groups = 12
    pre = build_preconditioner(basis, 3, groups, precond)
    assert pre.matrices is None and pre.map_k == 3  # the factored form (g @ P.T) @ P
    mats = gram_matrices(basis, 3, groups)
    if precond == "normalized":
        mats = mats / torch.linalg.eigvalsh(mats)[:, -1].reshape(-1, 1, 1)
    grad = torch.randn(12, 9, dtype=torch.float64)
    stored = GroupPreconditioner(groups, matrices=mats)
    torch.testing.assert_close(pre.apply(grad, basis), stored.apply(grad, basis))
    dw = build_preconditioner(_basis(), 3, 1, precond)
    assert dw.matrices is not None  # depthwise: one 9 x 9 matrix, far below RT's C*C*9 weights


def test_normalized_on_an_all_zero_basis_is_refused():
    basis = _basis()
    basis[:] = 0
    with pytest.raises(ConversionError, match="all-zero basis.*--exclude"):
        build_preconditioner(basis, 3, 1, "normalized", where="blocks.0.conv_dw")
    build_preconditioner(basis, 3, 1, "exact")  # M = 0 is defined: refocusing just cannot move it


def test_adam_is_refused_naming_the_supported_optimisers():
    check_optimizer("momentum")
    with pytest.raises(ConversionError, match="sgd, nesterov, momentum.*not 'adamw'"):
        check_optimizer("adamw")


# ---------------------------------------------------------------- engine
from _datagen import write_fashion_mnist  # noqa: E402
from _engine_runs import assert_same_history, base_run, torchrun, train_flags  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from refconv.engine import RunConfig, RunInterrupted, run  # noqa: E402
from refconv.engine.checkpoint import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("implicit")
    common, base = base_run(root)
    refconv_cfg = dict(method="refconv", weights=str(base.run_dir), init="zeros", epochs=1, **common)
    return root, common, base, refconv_cfg


def _global_rel(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point() and "running_" not in k]
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in keys)
    den = sum(float(a[k].double().square().sum()) for k in keys)
    return (num / den) ** 0.5


def test_engine_explicit_and_implicit_end_at_the_same_weights(engine):
    root, _, _, cfg = engine
    explicit = run(RunConfig(out=str(root / "explicit"), **cfg))
    implicit = run(RunConfig(out=str(root / "implicit"), refocus_impl="implicit", **cfg))
    a, b = load_file(str(explicit.folded_path)), load_file(str(implicit.weights_path))
    assert a.keys() == b.keys()
    rel = _global_rel(a, b)
    print(f"explicit vs implicit, global relative weight difference {rel:.3g}")
    assert rel < 1e-4
    assert implicit.folded_path is None and implicit.weights_path.name == "model.safetensors"  # nothing to fold
    assert implicit.trainable_params == implicit.deploy_params  # no extra parameter
    assert implicit.trainable_params < explicit.trainable_params


def test_implicit_checkpoint_is_the_stock_model_and_weights_load_strictly(engine, capsys):
    from refconv.cli import main
    from refconv.engine.modeling import create_stock_model

    root, _, _, cfg = engine
    out = root / "implicit-ckpt"
    result = run(RunConfig(out=str(out), refocus_impl="implicit", refocus_precond="normalized", **cfg))
    stock = create_stock_model("timm/test_efficientnet", num_classes=10, in_chans=1)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["state_dict"].keys() == stock.state_dict().keys()  # no basis, no RT in the model's state
    assert ckpt["conversion"] is None
    saved = ckpt["implicit_refocus"]
    assert saved["precond"] == "normalized" and saved["layers"]  # the bases live beside it
    stock.load_state_dict(load_file(str(result.weights_path)), strict=True)
    capsys.readouterr()
    assert main(["fold", str(out)]) == 1  # nothing to fold, and the message says why
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--refocus-impl implicit" in err and "model.safetensors" in err


@pytest.mark.parametrize("impl", ["implicit", "explicit"])
def test_interrupted_then_resumed_equals_uninterrupted(engine, faults, impl):
    """Implicit (the bases come from the checkpoint) and explicit with ``normalized`` (its per-group scales must be
    computed from the checkpoint's bases, not from the model the resume builds before loading it)."""
    root, _, _, cfg = engine
    cfg = {**cfg, "epochs": 2, "init": "default", "refocus_impl": impl, "refocus_precond": "normalized",
           "ema": True, "ema_decay": 0.9}
    ref = run(RunConfig(out=str(root / f"{impl}-ref"), **cfg))
    out = root / f"{impl}-interrupted"
    faults.interrupt_after(8)  # 6 steps per epoch: epoch 2, step 2
    with pytest.raises(RunInterrupted):
        run(RunConfig(out=str(out), **cfg))
    faults.clear()
    resumed = run(RunConfig(out=str(out), **cfg), resume=True)
    assert_same_history(ref.history, resumed.history)
    a, b = load_file(str(ref.weights_path)), load_file(str(resumed.weights_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


def test_implicit_with_grad_clip_warns_that_it_is_no_longer_exact(engine):
    root, _, _, cfg = engine
    out = root / "imp-clip"
    run(RunConfig(out=str(out), refocus_impl="implicit", grad_clip=1.0, **cfg))
    assert "no longer exactly the explicit one" in (out / "log.txt").read_text()


def test_implicit_bad_inputs_are_one_line_cli_errors(engine, capsys):
    from refconv.cli import main

    root, common, base, _ = engine
    argv = ["train", "--model", common["model"], "--data-dir", common["data_dir"], "--epochs", "1", "--batch-size",
            "16", "--progress", "none", "--method", "refconv", "--weights", str(base.run_dir)]
    cases = [
        (["--refocus-impl", "implicit", "--opt", "adamw"], "exact only for the SGD family (sgd, nesterov, momentum)"),
        (["--refocus-precond", "geometry"], "Add --refocus-impl implicit"),
        (["--refocus-precond", "isotropic"], "Add --refocus-impl implicit"),
    ]
    for extra, expected in cases:
        capsys.readouterr()
        assert main([*argv, *extra, "--out", str(root / "refused")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("refconv train: error:") and expected in err, err
    assert not (root / "refused").exists()


@pytest.mark.slow  # torch.compile on CPU: ~2.5 min
def test_implicit_under_compile_and_contiguous_layout_matches_eager(engine):
    root, _, _, cfg = engine
    eager = run(RunConfig(out=str(root / "imp-eager"), refocus_impl="implicit", **cfg))  # channels_last (default)
    compiled = run(RunConfig(out=str(root / "imp-compiled"), refocus_impl="implicit", compile=True,
                             channels_last=False, **cfg))
    a, b = load_file(str(eager.weights_path)), load_file(str(compiled.weights_path))
    assert _global_rel(a, b) < 1e-4


def test_implicit_under_two_gloo_processes_agrees_with_one(tmp_path):
    """DDP: the transform runs on the all-reduced gradient (a step-pre-hook), so 2 processes train what 1 does."""
    data_dir = write_fashion_mnist(tmp_path / "data", n_train=64, n_test=32)
    base = run(RunConfig(model="timm/test_efficientnet_gn", data_dir=str(data_dir), batch_size=16, lr=0.05,
                         warmup_epochs=0, epochs=1, augment=False, progress="none", out=str(tmp_path / "base")))
    flags = dict(model="timm/test_efficientnet_gn", data_dir=str(data_dir), batch_size=16, lr=0.05, warmup_epochs=0,
                 epochs=1, augment=False, method="refconv", weights=str(base.run_dir), refocus_impl="implicit",
                 progress="none")
    single = run(RunConfig(out=str(tmp_path / "single"), **flags))
    proc = torchrun("-m", "refconv.cli", "train", *train_flags(flags), "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(single.weights_path))
    b = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert _global_rel(a, b) < 1e-4


def test_sweep_settings_take_the_refocusing_keys_and_refuse_explicit_geometry():
    import yaml

    from refconv.errors import ConfigError
    from refconv.protocol.sweep_spec import parse_sweep, resolve_sweep_path

    data = yaml.safe_load(resolve_sweep_path("fashion-mnist-small").read_text())
    data["settings"] = [{"name": "iso", "refocus_impl": "implicit", "refocus_precond": "isotropic"},
                        {"name": "norm", "refocus_precond": "normalized"}]
    spec = parse_sweep(data)
    assert [s.overrides for s in spec.settings][0] == {"refocus_impl": "implicit", "refocus_precond": "isotropic"}
    data["settings"] = [{"name": "bad", "refocus_precond": "geometry"}]
    with pytest.raises(ConfigError, match=r"settings\[0\] \(bad\).*Add --refocus-impl implicit"):
        parse_sweep(data)
