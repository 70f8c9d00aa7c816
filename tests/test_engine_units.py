"""Engine parts in isolation: atomic writes, checkpoint/RNG round trips, param groups, schedule, sampler."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from torch import nn

import refconv
from refconv.engine.checkpoint import atomic_write, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from refconv.engine.config import make_config
from refconv.engine.loop import topk_correct
from refconv.engine.optim import build_optimizer, build_scheduler, param_groups
from refconv.engine.progress import Reporter
from refconv.engine.sampling import ResumableSampler, ShardSampler
from refconv.errors import CheckpointError


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"epoch": 1})

    def dies(f):
        f.write(b"half a checkpoint")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, dies)
    assert load_checkpoint(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.randn(100, 100)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write .*--out"):
        save_checkpoint(blocker / "last.pt", {})


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_param_groups_give_refocus_weights_their_own_lr_and_decay():
    model = refconv.convert(_tiny())
    cfg = make_config({"method": "refconv", "refocus_lr_mult": 3.0, "refocus_weight_decay": 0.0, "weight_decay": 1e-4,
                       "lr": 0.2, "warmup_epochs": 0})
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    refocus_ids = {id(m.refocus_weight) for m in refconv.refconv_layers(model).values()}
    assert {id(p) for p in groups["refocus"]["params"]} == refocus_ids
    assert groups["refocus"]["weight_decay"] == 0.0 and groups["refocus"]["lr_scale"] == 3.0
    assert groups["decay"]["weight_decay"] == 1e-4 and groups["no_decay"]["weight_decay"] == 0.0
    all_ids = {id(p) for g in groups.values() for p in g["params"]}
    for layer in refconv.refconv_layers(model).values():
        assert id(layer.basis) not in all_ids  # frozen bases never reach the optimizer
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    sched.step_update(0)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["decay"] == pytest.approx(0.2) and lrs["refocus"] == pytest.approx(0.6)
    assert opt.param_groups[0]["momentum"] == 0.9 and not opt.param_groups[0]["nesterov"]


def test_schedule_is_linear_warmup_then_cosine_per_step():
    model = _tiny()
    cfg = make_config({"lr": 1.0, "epochs": 4, "warmup_epochs": 1, "warmup_lr": 0.0})
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for t in range(40):
        sched.step_update(t)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.0) and lrs[5] == pytest.approx(0.5)  # linear warm-up over 10 steps
    assert max(lrs) <= 1.0 and lrs[-1] < 0.01  # cosine to ~0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_sampler_is_seeded_resumable_and_splits_global_batches():
    full = ResumableSampler(50, batch_size=8, seed=1)
    full.set_epoch(2)
    order = list(full)
    assert len(order) == 48 and len(set(order)) == 48 and full.steps_per_epoch == 6
    again = ResumableSampler(50, batch_size=8, seed=1)
    again.set_epoch(2)
    again.set_start(2)
    assert list(again) == order[16:] and len(again) == 32
    other_epoch = ResumableSampler(50, batch_size=8, seed=1)
    other_epoch.set_epoch(3)
    assert list(other_epoch) != order
    ranks = [ResumableSampler(50, batch_size=4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    r0, r1 = list(ranks[0]), list(ranks[1])
    for step in range(6):  # each optimizer step sees the same 8 images as one process would
        assert sorted(r0[4 * step : 4 * step + 4] + r1[4 * step : 4 * step + 4]) == sorted(order[8 * step : 8 * step + 8])
    shards = [list(ShardSampler(11, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(11))


def test_topk_counts_cap_k_at_the_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    c1, c5 = topk_correct(logits, torch.tensor([1, 2]), (1, 5))
    assert int(c1) == 1 and int(c5) == 2


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_reporter_bars_on_a_terminal_lines_otherwise(tmp_path):
    plain = io.StringIO()
    rep = Reporter(stream=plain)
    assert rep.mode == "plain" and rep.lines
    rep.attach_file(tmp_path / "log.txt")
    rep.log("hello")
    rep.summary("done", [("top-1", "50%")])
    rep.close()
    assert "hello" in plain.getvalue() and "top-1" in plain.getvalue()
    assert "hello" in (tmp_path / "log.txt").read_text()
    tty = _FakeTTY()
    rep = Reporter(stream=tty)
    assert rep.mode == "bar" and not rep.lines
    with rep.bar(100, "epoch 1/1") as bar:
        bar.update(50)
    rep.summary("done", [("top-1", "50%")])
    assert "epoch 1/1" in tty.getvalue() and "50%" in tty.getvalue()
    silent = io.StringIO()
    Reporter(enabled=False, stream=silent).log("x")
    assert silent.getvalue() == ""
