"""The process-wide torch settings a run changes, set for the run and put back as found when it ends.

A run is a function called from notebooks, sweeps and tests: leaving ``cudnn.benchmark`` off or deterministic
algorithms on after it returns (or raises, or is interrupted) would change whatever the caller does next.
:func:`run_globals` captures every setting below on entry and restores all of them on exit, whatever the exit;
:func:`apply_run_settings` is the only place a run changes them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils.deterministic

__all__ = ["capture", "restore", "run_globals", "apply_run_settings"]

_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


def capture() -> dict[str, Any]:
    """The current values of every global a run may set (comparable with ``==``)."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "default_dtype": torch.get_default_dtype(),
        "num_threads": torch.get_num_threads(),
        "env_" + _CUBLAS: os.environ.get(_CUBLAS),
    }


def restore(state: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned (only what differs, so nothing is touched needlessly)."""
    now = capture()
    if (now["deterministic_algorithms"], now["deterministic_warn_only"]) != (
            state["deterministic_algorithms"], state["deterministic_warn_only"]):
        torch.use_deterministic_algorithms(state["deterministic_algorithms"], warn_only=state["deterministic_warn_only"])
    torch.utils.deterministic.fill_uninitialized_memory = state["fill_uninitialized_memory"]
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = state["cudnn_deterministic"]
    torch.backends.cudnn.allow_tf32 = state["cudnn_allow_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = state["matmul_allow_tf32"]
    if now["float32_matmul_precision"] != state["float32_matmul_precision"]:
        torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    if now["default_dtype"] != state["default_dtype"]:
        torch.set_default_dtype(state["default_dtype"])
    if now["num_threads"] != state["num_threads"]:
        torch.set_num_threads(state["num_threads"])
    cublas = state["env_" + _CUBLAS]
    if cublas is None:
        os.environ.pop(_CUBLAS, None)
    else:
        os.environ[_CUBLAS] = cublas


@contextlib.contextmanager
def run_globals() -> Iterator[None]:
    """Restore on exit (normal, error, Ctrl-C) every torch global as it was on entry."""
    state = capture()
    try:
        yield
    finally:
        restore(state)


def apply_run_settings(deterministic: bool) -> None:
    """What a run sets: with ``deterministic``, deterministic algorithms (warn only), no NaN-filling of new
    tensors and no cuDNN autotuning (inside :func:`run_globals`, so the caller gets its own settings back)."""
    if not deterministic:
        return
    os.environ.setdefault(_CUBLAS, ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also NaN-fills every new uninitialised tensor (a debugging aid that changes no
    # result of correct code): 1,200 fills per step of a converted MobileNetV3-Small, ~8 % of its time.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
