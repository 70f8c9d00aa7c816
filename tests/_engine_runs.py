"""Runs the engine tests share: a small Fashion-MNIST base run, its history without timings, and ``refconv
train`` under ``torchrun`` with two CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _datagen import write_fashion_mnist

from refconv.engine import RunConfig, run

#: History fields that measure time, not training: they differ between any two runs.
TIMING = {"images_per_s", "epoch_time_s", "eval_images_per_s"}
#: ``torchrun`` with two processes on this machine.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def base_run(root: Path) -> tuple[dict[str, Any], Any]:
    """``(common settings, result)`` of a one-epoch ``timm/test_efficientnet`` run on 96 + 32 generated images
    under ``root``; ``common`` (model, data, batch 16, lr 0.05, half an epoch of warm-up) is for the runs that
    continue from it."""
    data_dir = write_fashion_mnist(root / "data", n_train=96, n_test=32)
    common = dict(model="timm/test_efficientnet", data_dir=str(data_dir), batch_size=16, lr=0.05, warmup_epochs=0.5,
                  progress="none")
    return common, run(RunConfig(epochs=1, out=str(root / "base"), **common))


def assert_same_history(a: list[dict], b: list[dict]) -> None:
    """Two runs' histories are equal but for the timings."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}


def train_flags(config: dict[str, Any]) -> list[str]:
    """``RunConfig`` keyword values as ``refconv train`` flags (``--batch-size 16``, ``--augment`` /
    ``--no-augment``)."""
    argv: list[str] = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        argv += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return argv


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``torchrun ... *args`` (two processes, one thread each), capturing its output."""
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
