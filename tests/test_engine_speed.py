"""The engine's speed options are exact: channels_last, the fused optimizer, the resident input path, compile.

Speed itself is measured by benchmarks/bench_throughput.py, never by a timed test; these tests pin down that
each faster path computes what the plain path computes, and that RefConv keeps its fast layout under them.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from safetensors.torch import load_file

import refconv
from _datagen import write_fashion_mnist, write_image_folder
from refconv.engine import RunConfig, run
from refconv.engine.optim import build_optimizer
from refconv.errors import ConfigError


def _converted(name: str = "mobilenetv3_small_050") -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    refconv.convert(model)
    return model


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, fused: bool, steps: int = 1) -> None:
    opt = build_optimizer(model, RunConfig(method="refconv", weights="w", lr=0.05, fused_optimizer=fused))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_refconv_under_channels_last_keeps_wt_in_the_basis_layout_and_wr_in_nchw():
    model = _converted().to(memory_format=torch.channels_last)
    layers = list(refconv.refconv_layers(model).items())
    assert layers
    for _, layer in layers:
        assert layer.refocus_weight.is_contiguous()  # read as a matrix by the transform: no copy per step
        assert layer.transformed_weight().stride() == layer.conv.weight.stride()
        assert layer.fuse().weight.stride() == layer.conv.weight.stride()


def test_channels_last_and_fused_training_equal_the_plain_path():
    """One step (training a random net at batch 8 is chaotic: later steps amplify rounding, plain nets alike)."""
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    ref = _converted()
    fast = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    _train(ref, x, y, fused=False)
    _train(fast, x.contiguous(memory_format=torch.channels_last), y, fused=True)
    a, b = ref.state_dict(), fast.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("train", [True, False])
def test_converted_model_compiles_without_graph_breaks(train):
    """The eval cache and version checks of the RefConv layer must not break Dynamo's graph."""
    model = _converted().to(memory_format=torch.channels_last).train(train)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(train):
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_fashion_mnist(tmp_path_factory.mktemp("speed") / "fm", n_train=64, n_test=32))


def test_old_and_new_defaults_both_train_and_say_which_input_path(data, tmp_path):
    # no augmentation: its draws differ between the paths; everything else must not
    common = dict(model="timm/test_efficientnet", data_dir=data, batch_size=16, epochs=2, warmup_epochs=0,
                  augment=False, progress="none")
    new = run(RunConfig(out=str(tmp_path / "new"), **common))
    old = run(RunConfig(out=str(tmp_path / "old"), channels_last=False, input_pipeline="loader",
                        fused_optimizer=False, **common))
    assert new.extra["input_pipeline"] == "resident" and old.extra["input_pipeline"] == "loader"
    log = (tmp_path / "new" / "log.txt").read_text()
    assert "input: resident" in log and "channels_last" in log
    # same data order, same recipe, same images: the runs differ only in rounding
    for a, b in zip(new.history, old.history, strict=True):
        assert a["test_images"] == b["test_images"] == 32 and a["global_step"] == b["global_step"]
        for key in ("train_loss", "test_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["epoch"], key)
        assert abs(a["test_top1"] - b["test_top1"]) <= 100 / 32 and abs(a["train_top1"] - b["train_top1"]) <= 100 / 64
    wa = load_file(str(new.run_dir / "model.safetensors"))
    wb = load_file(str(old.run_dir / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5, msg=k)


def test_resident_input_refuses_an_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class={"train": 4, "val": 2})
    cfg = RunConfig(model="timm/test_efficientnet", data="imagefolder", data_dir=str(root), image_size=32,
                    batch_size=4, epochs=1, input_pipeline="resident", progress="none", out=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="input_pipeline='resident' needs a tensor dataset"):
        run(cfg)


def test_unknown_input_pipeline_is_a_config_error():
    with pytest.raises(ConfigError, match="input_pipeline must be one of auto, resident, loader"):
        RunConfig(input_pipeline="fast").validate()


@pytest.mark.slow
def test_compiled_run_trains_and_folds(data, tmp_path):
    """torch.compile end to end (minutes of compilation on a small CPU: slow suite)."""
    base = run(RunConfig(model="timm/test_efficientnet", data_dir=data, batch_size=16, epochs=1, warmup_epochs=0,
                         progress="none", out=str(tmp_path / "b")))
    res = run(RunConfig(model="timm/test_efficientnet", data_dir=data, batch_size=16, epochs=1, warmup_epochs=0,
                        method="refconv", weights=str(base.run_dir), compile=True, progress="none",
                        out=str(tmp_path / "c")))
    assert res.folded_metrics["correct1"] == res.final["correct1"]


def test_a_run_leaves_the_determinism_settings_as_found(data, tmp_path):
    import torch.utils.deterministic as det

    before = (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
    run(RunConfig(model="timm/test_efficientnet", data_dir=data, batch_size=16, epochs=1, warmup_epochs=0,
                  progress="none", out=str(tmp_path / "d")))
    assert (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory) == before
