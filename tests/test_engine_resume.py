"""Resume: a run killed mid-epoch, or interrupted, then resumed, ends exactly where an uninterrupted run ends.

Exactness needs every piece of state: model, optimizer momentum, per-step lr schedule, EMA, the epoch's
running train metrics, the sampler position and the torch / numpy / Python RNG streams (augmentation and
dropout draw from them). These tests use augmentation, EMA, label smoothing, channels_last and a depthwise
model converted with RefConv, so a missing piece shows up as a different number.
"""

from __future__ import annotations

import pytest
import torch
from _engine_runs import assert_same_history, base_run
from safetensors.torch import load_file

from refconv.engine import RunConfig, RunInterrupted, run
from refconv.engine.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    common, base = base_run(root)
    return root, common, base


@pytest.mark.parametrize("pipeline", ["resident", "loader"])
def test_killed_mid_epoch_then_resumed_equals_uninterrupted(setup, faults, pipeline):
    root, common, base = setup
    cfg = dict(method="refconv", weights=str(base.run_dir), epochs=2, ema=True, ema_decay=0.9, label_smoothing=0.1,
               channels_last=True, input_pipeline=pipeline, **common)
    ref = run(RunConfig(out=str(root / f"uninterrupted-{pipeline}"), **cfg))

    out = root / f"killed-{pipeline}"
    faults.crash_after(9)  # 6 steps per epoch: dies at epoch 2, step 3
    with pytest.raises(RuntimeError, match="injected failure"):
        run(RunConfig(out=str(out), checkpoint_every_steps=4, **cfg))
    faults.clear()
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 2, 8)  # the mid-epoch save at step 8
    assert not (out / "done.json").exists()

    resumed = run(RunConfig(out=str(out), checkpoint_every_steps=4, **cfg), resume=True)
    assert_same_history(ref.history, resumed.history)
    assert resumed.final == ref.final and resumed.best == ref.best
    a, b = load_file(str(ref.folded_path)), load_file(str(resumed.folded_path))
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical deployable weights


def test_interrupt_saves_a_checkpoint_and_resume_equals_uninterrupted(setup, faults):
    root, common, base = setup
    cfg = dict(method="continue", weights=str(base.run_dir), epochs=2, **common)
    ref = run(RunConfig(out=str(root / "ref-continue"), **cfg))

    out = root / "interrupted"
    faults.interrupt_after(3)  # what Ctrl-C does: stop after the current step, save, exit
    with pytest.raises(RunInterrupted) as info:
        run(RunConfig(out=str(out), **cfg))
    faults.clear()
    assert info.value.checkpoint == out / "checkpoints" / "last.pt"
    assert "--resume" in str(info.value)
    ckpt = load_checkpoint(info.value.checkpoint)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 3)

    resumed = run(RunConfig(out=str(out), **cfg), resume=True)
    assert_same_history(ref.history, resumed.history)
    assert resumed.final == ref.final


def test_finished_run_is_returned_from_cache_and_resume_of_it_too(setup):
    root, common, base = setup
    cfg = RunConfig(epochs=1, out=str(base.run_dir), **common)
    again = run(cfg)
    assert again.cached and again.final == base.final and again.history == base.history
    assert run(cfg, resume=True).cached
