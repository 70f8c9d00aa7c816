"""Bad input: each gives an error that names the problem and the fix, and no work is lost."""

from __future__ import annotations

import json

import pytest
import torch
from _datagen import truncate, write_fashion_mnist

from refconv.engine import NonFiniteLossError, RunConfig, run
from refconv.engine.artifacts import fold_checkpoint
from refconv.engine.checkpoint import load_checkpoint
from refconv.errors import CheckpointError, ConfigError, DataError, ModelError, StateDictFormatError


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    data_dir = write_fashion_mnist(root / "data", n_train=64, n_test=16)
    common = dict(model="timm/test_resnet", data_dir=str(data_dir), batch_size=16, lr=0.05, warmup_epochs=0,
                  epochs=1, progress="none")
    base = run(RunConfig(out=str(root / "base"), **common))
    ref = run(RunConfig(method="refconv", weights=str(base.run_dir), out=str(root / "ref"), **common))
    return root, common, base, ref


def _cfg(env, name, **kw):
    root, common, _, _ = env
    return RunConfig(**{**common, "out": str(root / name), **kw})


def test_unknown_model_suggests_close_matches(env):
    with pytest.raises(ModelError, match=r"test_resnet"):
        run(_cfg(env, "m", model="timm/test_resnett"))


def test_missing_data(env, tmp_path, monkeypatch):
    monkeypatch.setenv("REFCONV_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"(?s)cifar10 \(train\) not found.*Fix it.*--data-dir"):  # the message lists the ways out
        run(_cfg(env, "d1", data="cifar10", data_dir=str(tmp_path / "empty")))


def test_truncated_data_file_is_named(env, tmp_path):
    data_dir = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    truncate(data_dir / "train-images-idx3-ubyte.gz", 0.5)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte"):
        run(_cfg(env, "d2", data_dir=str(data_dir)))
    root = env[0]
    assert not (root / "d2" / "config.yaml").exists()  # nothing half-written: fixing the data and rerunning works


def test_unknown_dataset(env):
    with pytest.raises(ConfigError, match=r"fashion-mnist"):
        run(_cfg(env, "d3", data="fashion-mnsit"))


def test_weights_with_other_classes_say_which_flag(env):
    _, _, base, _ = env
    with pytest.raises(CheckpointError, match=r"10 classes.*--num-classes 10"):
        run(_cfg(env, "w1", method="continue", weights=str(base.run_dir), num_classes=12))


def test_weights_of_another_architecture(env):
    _, _, base, _ = env
    with pytest.raises(CheckpointError, match=r"does not (fit|match)"):
        run(_cfg(env, "w2", method="continue", model="timm/test_efficientnet", weights=str(base.run_dir)))


def test_refconv_checkpoint_where_plain_weights_are_needed(env):
    _, _, _, ref = env
    with pytest.raises(StateDictFormatError, match=r"RefConv \(unfolded\).*refconv fold"):
        run(_cfg(env, "w3", method="continue", weights=str(ref.run_dir / "checkpoints" / "last.pt")))


def test_folded_weights_where_a_refconv_checkpoint_is_needed(env):
    _, _, base, ref = env
    with pytest.raises(StateDictFormatError, match=r"nothing to fold"):
        fold_checkpoint(base.run_dir)
    with pytest.raises(StateDictFormatError, match=r"nothing to fold"):
        fold_checkpoint(ref.folded_path)


def test_existing_run_directory_is_refused_unless_overwrite(env):
    root, common, base, _ = env
    with pytest.raises(CheckpointError, match=r"different config \(epochs: 1 -> 2\).*--overwrite"):
        run(_cfg(env, "base", epochs=2))
    partial = root / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "last.pt").write_bytes(b"x")
    (partial / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(CheckpointError, match=r"--resume .*partial.*--overwrite"):
        run(_cfg(env, "partial"))
    res = run(_cfg(env, "partial", overwrite=True))
    assert not res.cached and (partial / "done.json").is_file()
    stranger = root / "not-a-run"
    stranger.mkdir()
    (stranger / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"does not look like a refconv run"):
        run(_cfg(env, "not-a-run", overwrite=True))
    assert (stranger / "precious.txt").read_text() == "keep me"


def test_unwritable_output_path(env):
    root = env[0]
    blocker = root / "a-file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match=r"not writable.*--out"):
        run(_cfg(env, "a-file/run"))


def test_resume_with_a_different_config_is_refused(env):
    _, _, base, _ = env
    with pytest.raises(CheckpointError, match=r"cannot resume .*lr: 0.05 -> 0.1"):
        run(_cfg(env, "base", lr=0.1), resume=True)
    with pytest.raises(CheckpointError, match=r"not a run directory"):
        run(_cfg(env, "nowhere"), resume=True)


def test_resume_from_a_corrupt_checkpoint(env, faults):
    root, _, _, _ = env
    faults.crash_after(3)
    with pytest.raises(RuntimeError, match="injected failure"):  # after step 3, leaving the step-2 last.pt
        run(_cfg(env, "corrupt", epochs=2, checkpoint_every_steps=2))
    faults.clear()
    last = root / "corrupt" / "checkpoints" / "last.pt"
    truncate(last, 0.5)
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*--overwrite"):
        run(_cfg(env, "corrupt", epochs=2), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(env, faults):
    root = env[0]
    faults.nan_after(5)  # 4 steps per epoch: the weights, then the loss, turn NaN in epoch 2
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf.*last good checkpoint .*last\.pt \(epoch 1\).*--lr"):
        run(_cfg(env, "nan", epochs=3))
    out = root / "nan"
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 0
    assert all(v.isfinite().all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (out / "done.json").exists()
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_batch_larger_than_the_data(env):
    with pytest.raises(ConfigError, match=r"batch_size=512 is larger than the 64 training images"):
        run(_cfg(env, "b", batch_size=512))


def test_fewer_classes_than_the_data(env):
    with pytest.raises(ConfigError, match=r"num_classes=5 is smaller than the 10 classes"):
        run(_cfg(env, "c", num_classes=5))


@pytest.mark.parametrize("fmt", ["pth", "timm-checkpoint", "engine-checkpoint", "safetensors", "run-dir"])
def test_start_weights_in_every_format(env, fmt, tmp_path):
    from safetensors.torch import load_file

    from refconv.engine.modeling import load_start_weights
    from refconv.models import create_model

    _, _, base, _ = env
    sd = load_file(str(base.weights_path))
    source = sd  # the tensors the file holds
    if fmt == "pth":
        weights = tmp_path / "w.pth"
        torch.save(sd, weights)
    elif fmt == "timm-checkpoint":
        weights = tmp_path / "checkpoint.pth.tar"
        torch.save({"epoch": 3, "arch": "test_resnet", "state_dict": sd}, weights)
    elif fmt == "engine-checkpoint":
        weights = base.run_dir / "checkpoints" / "last.pt"
        source = torch.load(weights, weights_only=True)["state_dict"]
    elif fmt == "safetensors":
        weights = base.weights_path
    else:
        weights = base.run_dir
    assert source.keys() == sd.keys() and all(torch.equal(source[k], sd[k]) for k in sd)  # last.pt = deployed (no EMA)

    # the loader puts exactly the file's tensors into a fresh model (every key, every value)
    model = create_model("timm/test_resnet", num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_start_weights(model, weights)
    got = model.state_dict()
    assert got.keys() == source.keys()
    for k in source:
        assert torch.equal(got[k], source[k]), k
    assert any(not torch.equal(before[k], source[k]) for k in source)  # the fresh init differed: a real load

    # and a run started from it trains from those weights: with a negligible lr the saved parameters are the
    # file's (BatchNorm running statistics do move in one epoch of training, so buffers are not compared)
    res = run(_cfg(env, f"fmt-{fmt}", method="continue", weights=str(weights), epochs=1, lr=1e-12, min_lr=0.0,
                   warmup_lr=0.0))
    assert res.history[0]["epoch"] == 1
    out = load_file(str(res.weights_path))
    params = {name for name, _ in model.named_parameters()}
    assert out.keys() == source.keys()
    for k in params:
        torch.testing.assert_close(out[k], source[k], rtol=0, atol=1e-6, msg=k)
