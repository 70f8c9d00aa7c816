"""Scale-out on CPU: ``torchrun --nproc-per-node 2`` with gloo completes and agrees with one process.

Both runs use the same global batch, and the sampler gives every optimizer step the same images in both
(split over the two ranks). With a GroupNorm model (per-image statistics) and no augmentation (whose random
draws come from per-rank RNG streams) the two runs then compute the same thing up to the order of
floating-point sums in the gradient all-reduce: agreement to ~1e-6. With BatchNorm, per-rank batch
statistics make them close but not equal.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from _artifacts import reevaluate
from _datagen import write_fashion_mnist
from _engine_runs import torchrun, train_flags
from safetensors.torch import load_file

from refconv.engine import RunConfig, run


def test_two_gloo_processes_agree_with_one(tmp_path):
    data_dir = write_fashion_mnist(tmp_path / "data", n_train=96, n_test=40)
    flags = dict(model="timm/test_efficientnet_gn", data_dir=str(data_dir), batch_size=16, lr=0.05, warmup_epochs=0, epochs=2, augment=False, method="refconv",
                 progress="plain", log_every_steps=3)
    single = run(RunConfig(out=str(tmp_path / "single"), **flags))

    proc = torchrun("-m", "refconv.cli", "train", *train_flags(flags), "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    done = json.loads((tmp_path / "ddp" / "done.json").read_text())
    assert done["extra"]["world_size"] == 2 and done["extra"]["steps_per_epoch"] == single.extra["steps_per_epoch"]
    assert proc.stderr.count("epoch 2/2:") == 1  # rank 0 logs, rank 1 stays quiet
    assert done["history"][-1]["test_images"] == 40  # every test image evaluated exactly once across ranks
    for a, b in zip(single.history, done["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4, abs=1e-5)
        assert a["test_correct"] == b["test_correct"]
    # RefConv under DDP (frozen bases, RT trained) folds on every rank to an ordinary stock-model file
    assert done["folded_metrics"]["correct1"] == done["final"]["correct1"]
    assert done["fold_max_abs_err"] < 1e-4 and (tmp_path / "ddp" / "folded.safetensors").is_file()
    # the deployable weights of both runs are the same network: same keys, every tensor equal up to the float
    # noise of the all-reduce summation order compounded over 12 steps (measured ~7e-5 of the tensor's max)...
    a = load_file(str(single.run_dir / "folded.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "folded.safetensors"))
    assert a.keys() == b.keys()
    rel = {k: float((b[k].double() - a[k].double()).abs().max() / a[k].double().abs().max().clamp_min(1e-12))
           for k in a if a[k].is_floating_point()}
    assert max(rel.values()) < 1e-3, sorted(rel.items(), key=lambda kv: -kv[1])[:8]
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())
    # ...and the DDP file, loaded strict into a fresh stock model and scored in this process, gets exactly the
    # correct count both runs recorded
    again = reevaluate(tmp_path / "ddp", "folded.safetensors")
    assert again["images"] == 40
    assert again["correct1"] == done["final"]["correct1"] == single.final["correct1"]


def test_ddp_mid_epoch_resume_keeps_every_ranks_share_of_the_epoch(tmp_path):
    """Interrupted in epoch 2 under 2 processes and resumed: the epoch's train loss/top-1 must count the steps
    both ranks did before the interrupt (once only rank 0's meter was saved, and rank 1's share was lost)."""
    data_dir = write_fashion_mnist(tmp_path / "data", n_train=96, n_test=40)
    flags = dict(model="timm/test_efficientnet_gn", data_dir=str(data_dir), batch_size=16, lr=0.05, warmup_epochs=0,
                 epochs=2, augment=False, progress="plain", log_every_steps=3)
    single = run(RunConfig(out=str(tmp_path / "single"), **flags))

    argv = train_flags(flags)
    out = tmp_path / "ddp"
    # every rank installs the interrupt hook, then runs the CLI: what Ctrl-C does, after global step 8
    script = tmp_path / "train_interrupted.py"
    script.write_text(f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\nimport _faults\n"
                      "_faults.interrupt_after(8)\nfrom refconv.cli import main\nsys.exit(main())\n")
    # 6 steps per epoch: stop requested after global step 8 (epoch 2, step 2), taken at the next sync (step 3)
    proc = torchrun(str(script), "train", *argv, "--out", str(out))
    assert "interrupted at epoch 2, step 3/6" in proc.stderr, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["meters"]) == 2 and all(m["images"] == 24 for m in ckpt["meters"])  # 3 steps x 8 per rank
    proc = torchrun("-m", "refconv.cli", "train", "--resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads((out / "done.json").read_text())
    for a, b in zip(single.history, done["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["train_top1"] == pytest.approx(b["train_top1"], abs=1e-9)
