"""Checkpoints that survive a crash at any instant, and the state needed to resume a run exactly.

Every file is written to a temporary name in the same directory, flushed and fsynced, then moved over the
target with ``os.replace`` (atomic on POSIX and Windows), and the directory is fsynced: a reader sees the
old complete file or the new complete file, never half of one. So a run killed while saving keeps its
previous ``last.pt``.

A training checkpoint is a dict with the keys of a timm checkpoint (``state_dict``, ``arch``, ``epoch``,
``optimizer``, ``state_dict_ema``) so timm's and refconv's loaders read it, plus what an exact resume needs:
scheduler, AMP scaler, global step, the position inside the epoch, and every rank's RNG states. It holds
only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, short_reason

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_copy",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "is_run_checkpoint",
]

CHECKPOINT_FORMAT = "refconv-run"
CHECKPOINT_VERSION = 1


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; rename is still atomic there.
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` through ``write(fileobj)`` atomically: temp file in the same dir, fsync, ``os.replace``.

    Raises:
        CheckpointError: the directory is not writable (the message names it and the fix).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"cannot write {path}: it is an existing directory, not a file. Give a file path instead, or remove "
            "the directory."
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write {path}: {exc.strerror or exc}. Choose a writable output directory (--out) or fix its "
            "permissions."
        ) from None
    try:
        _chmod_as_open(fd)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _current_umask() -> int:
    """The process umask. Read from ``/proc`` where possible: ``os.umask`` can only read it by setting it, which
    for an instant gives other threads (data loader threads, a logging thread) a umask of 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_as_open(fd: int) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode ``open()`` would have: ``0o666 & ~umask``.

    Without this every run artefact (weights, config, done.json, checkpoints) was private to its creator while
    ``log.txt`` was not, so other users and containers sharing a results directory could not read a run.
    """
    if not hasattr(os, "fchmod"):  # Windows: no POSIX modes
        return
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    except OSError:
        pass


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (how ``best.pt`` is made from a fresh ``last.pt``, without re-pickling)."""
    with open(src, "rb") as fin:
        return atomic_write(dst, lambda f: shutil.copyfileobj(fin, f, 1 << 20))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` ``state`` atomically, tagged with this module's format and version."""
    state = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (``weights_only``), turning truncation and corruption into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError / UnpicklingError / EOFError / zipfile errors
        if "Weights only load failed" in str(exc):
            reason = ("not loadable with torch.load(weights_only=True): not a PyTorch file, or one holding Python "
                      "objects beyond tensors and plain data")
        else:
            reason = short_reason(exc)
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({reason}). Use another checkpoint of the run "
            "(best.pt / last.pt) or retrain with --overwrite."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint dict.")
    return obj


def is_run_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a checkpoint written by this engine."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and Python, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    random.setstate(_py_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _py_state_to_plain(st: tuple) -> dict[str, Any]:
    version, internal, gauss = st
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _py_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"])
