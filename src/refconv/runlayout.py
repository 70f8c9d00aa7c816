"""The layout of a run directory and what it means: the facts every room asks, in one place below them all.

A run directory (``refconv train``, ``detect``, ``segment``, a sweep or demo cell) holds::

    config.yaml            the resolved config (detect/segment runs of earlier versions: config.json)
    metrics.jsonl, log.txt
    checkpoints/last.pt    full training state (what --resume continues); best.pt, epoch-N.pt
    model.safetensors      deployable weights of a plain run    } one of the two, with a .json sidecar
    folded.safetensors     deployable weights of a refconv run  }
    done.json              the result; written last: its presence marks a finished run

**Which weights a run means** has one answer, whoever asks (``refconv train --weights RUN``,
``create_model(weights=RUN)`` / ``load_weights``, the detection/segmentation backbone loader, a sweep's
baseline fingerprint, ``refconv eval RUN``): the deployable file ``done.json`` names, i.e.
``model.safetensors`` or ``folded.safetensors``. It loads ``strict=True`` into the stock model. An
unfinished run means no weights: the error names ``--resume`` and the checkpoint to pass explicitly. A
training checkpoint is only used when asked for by path (or ``refconv eval --checkpoint last|best``).

This module is plain ``pathlib`` and JSON (no torch, no engine), so ``refconv.models`` can ask it without
depending on the engine; the engine's :mod:`refconv.engine.rundir` adds ownership (the lock) and the
rerun / resume / ``--overwrite`` decisions on top of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = ["CONFIG_FILE", "DONE_FILE", "METRICS_FILE", "CHECKPOINT_DIR", "DEPLOY_FILES", "RUN_FILES",
           "checkpoint_path", "done_record", "is_finished", "looks_like_run", "deployable_weights"]

CONFIG_FILE = "config.yaml"
DONE_FILE = "done.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
DEPLOY_FILES = ("folded.safetensors", "model.safetensors")  # refconv runs / plain runs
RUN_FILES = (CONFIG_FILE, "config.json", DONE_FILE, CHECKPOINT_DIR, METRICS_FILE)  # any of them: a run's directory


def checkpoint_path(run_dir: str | os.PathLike, which: str = "last") -> Path:
    """``RUN_DIR/checkpoints/<which>.pt`` (it may not exist)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"


def done_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The finished run's ``done.json``, or None when the run is unfinished (or the file unreadable)."""
    path = Path(run_dir) / DONE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a finished run (a readable ``done.json``)."""
    return done_record(run_dir) is not None


def looks_like_run(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds any file a run writes (what ``--overwrite`` may delete)."""
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def deployable_weights(run_dir: str | os.PathLike) -> Path:
    """The weights a run directory means: its finished run's deployable ``.safetensors``.

    Raises:
        CheckpointError: an unfinished run (naming its ``last.pt`` and how to finish it), a finished run
            whose weights file is gone, or a directory that is not a run.
    """
    run_dir = Path(run_dir)
    record = done_record(run_dir)
    if record is not None:
        named = record.get("weights_path")
        for name in ([Path(named).name] if named else []) + list(DEPLOY_FILES):
            if (run_dir / name).is_file():
                return run_dir / name
        raise CheckpointError(f"run {run_dir} is finished but its weights file {named!r} is missing. Rerun it with "
                              "--overwrite, or pass a checkpoint explicitly.")
    if (run_dir / DONE_FILE).is_file():
        raise CheckpointError(f"{run_dir / DONE_FILE} is unreadable; rerun with --overwrite.")
    last = checkpoint_path(run_dir)
    if last.is_file():
        raise CheckpointError(
            f"run {run_dir} is unfinished (no {DONE_FILE}). Finish it with `refconv train --resume {run_dir}`, or "
            f"point at its checkpoint explicitly ({last})."
        )
    raise CheckpointError(f"{run_dir} is a directory but not a refconv run (no {DONE_FILE} naming "
                          f"{' or '.join(DEPLOY_FILES)}).")
