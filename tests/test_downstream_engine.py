"""Detection and segmentation on the one engine: what ``refconv train`` has, ``refconv detect`` / ``segment`` have
too (AMP, EMA, exact mid-epoch resume, Ctrl-C, NaN as a one-line error, --overwrite, torchrun DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_downstream_train import data_root, fmnist  # noqa: F401  (the same small data, generated per module)

from refconv.cli import main
from refconv.downstream import downstream_config, run_downstream
from refconv.engine import RunInterrupted
from refconv.engine.checkpoint import load_checkpoint
from refconv.engine.distributed import init_distributed
from refconv.engine.progress import Reporter
from refconv.engine.task import task_class
from refconv.errors import CheckpointError

pytestmark = pytest.mark.filterwarnings("ignore::refconv.convert.RefConvWarning")

SMALL = {
    "detection": dict(arch="ssdlite320_mobilenet_v3_large", synthetic_size=48),
    "segmentation": dict(arch="lraspp_mobilenet_v3_large", synthetic_size=32),
}


def _settings(task: str, fmnist: Path, data_root: Path, out: Path, **kw) -> dict:
    base = dict(data_dir=str(data_root / task), fashion_mnist_dir=str(fmnist), synthetic_train=6, synthetic_val=2,
                epochs=1, batch_size=2, onnx=False, method="baseline", progress="none", out=str(out), **SMALL[task])
    return {**base, **kw}


def _flags(task: str, fmnist: Path, data_root: Path, out: Path, **kw) -> list[str]:
    argv = ["detect" if task == "detection" else "segment"]
    for key, value in _settings(task, fmnist, data_root, out, **kw).items():
        flag = "--" + key.replace("_", "-")
        argv += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return argv


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_loss_step_and_metric_under_bf16_autocast(task: str, fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    """The task's step and evaluation run under autocast (here CPU bf16: the engine itself enables AMP on CUDA):
    a float32 loss that back-propagates into the backbone, and metrics from bf16 predictions."""
    cfg = downstream_config(task, **_settings(task, fmnist, data_root, tmp_path / "x"))
    t = task_class(task)(cfg)
    t.build_data(init_distributed("cpu"))
    model = t.build_model(ckpt=None, reporter=Reporter(enabled=False))
    train, test, _ = t.loaders(range(4), range(2), 2, init_distributed("cpu"))
    model.train()
    out = t.step(model, next(iter(train)), device=torch.device("cpu"), amp=torch.bfloat16, channels_last=False)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss) and out.count == 2
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    metrics = t.evaluate(model, test, device=torch.device("cpu"), amp=torch.bfloat16, channels_last=False)
    assert metrics["images"] == 2 and t.score in metrics


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the engine's AMP runs on CUDA")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_run_on_cuda(amp: str, fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    res = run_downstream(downstream_config("detection", **_settings(
        "detection", fmnist, data_root, tmp_path / amp, device="cuda", amp=amp, method="refconv")))
    assert torch.isfinite(torch.tensor(res.history[-1]["train_loss"]))
    assert res.fold["detections"]["unmatched"] == 0


def test_ema_is_evaluated_and_deployed(fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    task = "segmentation"
    res = run_downstream(downstream_config(task, **_settings(task, fmnist, data_root, tmp_path / "ema", epochs=2,
                                                             ema=True, ema_decay=0.5)))
    row = res.history[-1]
    assert {"test_miou", "ema_test_miou", "ema_test_pixel_acc"} <= set(row)
    assert res.final["miou"] == row["ema_test_miou"]  # the EMA model is the result...
    ckpt = load_checkpoint(tmp_path / "ema" / "checkpoints" / "last.pt")
    deployed = _weights(tmp_path / "ema" / "model.safetensors")  # ...and what is deployed
    ema, live = ckpt["state_dict_ema"], ckpt["state_dict"]
    assert all(torch.equal(deployed[k], ema[k]) for k in deployed)
    assert any(not torch.equal(ema[k], live[k]) for k in deployed if ema[k].is_floating_point())


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_mid_epoch_interrupt_then_resume_is_exact(task: str, fmnist: Path, data_root: Path, tmp_path: Path,
                                                  faults) -> None:
    """Ctrl-C after step 4 of 6 (epoch 2, step 1), then --resume: the same weights, bit for bit, as one
    uninterrupted run (RefConv, so the folded weights too), and the same history."""
    kw = dict(epochs=2, method="refconv", checkpoint_every_steps=1)
    whole = run_downstream(downstream_config(task, **_settings(task, fmnist, data_root, tmp_path / "whole", **kw)))
    cfg = downstream_config(task, **_settings(task, fmnist, data_root, tmp_path / "cut", **kw))
    faults.interrupt_after(4)
    with pytest.raises(RunInterrupted, match=f"step 1/3.*refconv {'detect' if task == 'detection' else 'segment'} "
                                              "--resume "):
        run_downstream(cfg)
    faults.clear()
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step_in_epoch"] == 1
    resumed = run_downstream(cfg, resume=True)
    a, b = _weights(whole.weights_path), _weights(resumed.weights_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("images_per_s", "epoch_time_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in whole.history] == \
           [{k: v for k, v in h.items() if k not in drop} for h in resumed.history]
    assert resumed.final == whole.final


def test_nan_loss_and_ctrl_c_through_the_cli(fmnist: Path, data_root: Path, tmp_path: Path, faults,
                                            capsys: pytest.CaptureFixture) -> None:
    argv = _flags("detection", fmnist, data_root, tmp_path / "nan")
    faults.nan_after(1)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("refconv detect: error: training loss became NaN/inf") and "--lr" in err[-1]
    assert not any("Traceback" in line for line in err)
    faults.clear()

    argv = _flags("detection", fmnist, data_root, tmp_path / "cut", epochs=2)
    faults.interrupt_after(2)
    assert main(argv) == 130
    assert f"Resume with: refconv detect --resume {tmp_path / 'cut'}" in capsys.readouterr().err
    faults.clear()
    assert main(argv[:1] + ["--resume", str(tmp_path / "cut")]) == 0  # with its own config.yaml
    done = json.loads((tmp_path / "cut" / "done.json").read_text())
    assert [h["epoch"] for h in done["history"]] == [1, 2] and done["task"] == "detection"


def test_overwrite_and_reruns_follow_refconv_train(fmnist: Path, data_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    task = "segmentation"
    out = tmp_path / "run"
    argv = _flags(task, fmnist, data_root, out)
    assert main(argv) == 0
    (out / "stray.txt").write_text("from an earlier run")
    other = _flags(task, fmnist, data_root, out, lr=0.02)
    assert main(other) == 1  # another config: refused, named
    assert "holds a finished run with a different config (lr: 0.01 -> 0.02)" in capsys.readouterr().err
    assert main(other + ["--overwrite"]) == 0
    assert not (out / "stray.txt").exists()  # --overwrite starts from an empty directory, as refconv train does
    assert load_checkpoint(out / "checkpoints" / "last.pt")["config"]["lr"] == 0.02
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(_flags(task, fmnist, data_root, foreign) + ["--overwrite"]) == 1
    assert "does not look like a refconv run directory" in capsys.readouterr().err
    assert (foreign / "notes.txt").is_file()


def test_classifier_commands_refuse_a_detection_run(fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    from refconv.engine.artifacts import load_model

    run_downstream(downstream_config("detection", **_settings("detection", fmnist, data_root, tmp_path / "d",
                                                              epochs=0)))
    with pytest.raises(CheckpointError, match="is a detection run.*refconv detect --epochs 0 --weights"):
        load_model(tmp_path / "d")
    from refconv.downstream.run import load_checkpoint
    from refconv.runlayout import checkpoint_path

    with pytest.raises(CheckpointError, match="is a detection checkpoint .*not a segmentation one: use `refconv detect`"):
        load_checkpoint(checkpoint_path(tmp_path / "d"), task="segmentation")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_two_gloo_processes(task: str, fmnist: Path, data_root: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes: the steps of one process, every val image evaluated once and the ranks'
    detections (confusion matrices) combined into the metric one process computes for the same model."""
    kw = dict(batch_size=4, synthetic_val=3)
    single = run_downstream(downstream_config(task, **_settings(task, fmnist, data_root, tmp_path / "one", **kw)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "refconv.cli", *_flags(task, fmnist, data_root, tmp_path / "ddp", **kw)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads((tmp_path / "ddp" / "done.json").read_text())
    assert done["extra"]["world_size"] == 2 and done["extra"]["steps_per_epoch"] == single.extra["steps_per_epoch"]
    assert done["final"]["images"] == single.final["images"] == 3
    assert done["history"][0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], rel=0.05)
    # the 2-rank metric equals the metric of the same deployed model evaluated in one process
    from refconv.downstream import build_model
    from refconv.downstream.tasks import build_datasets, evaluate
    from refconv.downstream.transforms import detection_collate, segmentation_collate

    cfg = downstream_config(task, **_settings(task, fmnist, data_root, tmp_path / "x", **kw))
    _, val, _, n_cls = build_datasets(cfg)
    meta = json.loads((tmp_path / "ddp" / "model.json").read_text())
    model = build_model(cfg.model, n_cls, task=task, image_size=tuple(meta["image_size"]))
    model.load_state_dict(_weights(tmp_path / "ddp" / "model.safetensors"))
    collate = detection_collate if task == "detection" else segmentation_collate
    # the ranks' batches, in the order the gathered metric sees them (rank 0: images 0 and 2; rank 1: image 1):
    # an untrained detector's scores nearly tie, so other batches' float rounding could reorder them
    order = torch.utils.data.Subset(val, [0, 2, 1])
    loader = torch.utils.data.DataLoader(order, batch_size=2, collate_fn=collate)
    again = evaluate(model, task, loader, n_cls, torch.device("cpu"))
    key = "map_50" if task == "detection" else "miou"
    assert again[key] == pytest.approx(done["final"][key], abs=1e-6, nan_ok=True)
