"""CIFAR-10 and CIFAR-100 from the standard "python version" pickle directories.

``data_dir`` may be the batches directory itself (``cifar-10-batches-py`` / ``cifar-100-python``) or the folder
holding it (torchvision's ``root``). Also searched: ``$REFCONV_DATA_DIR/<name>`` and the default download
location. The pickles are read with an unpickler that only admits the numpy array reconstructors these files
need, so a tampered file cannot run code.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .base import default_download_root, env_data_dir

__all__ = ["CifarSpec", "SPECS", "NATIVE_SIZE", "candidate_dirs", "find_batches_dir", "read_batch", "load_cifar"]

_log = logging.getLogger(__name__)

NATIVE_SIZE = 32
_PIXELS = 3 * NATIVE_SIZE * NATIVE_SIZE


@dataclass(frozen=True)
class CifarSpec:
    """The on-disk layout and statistics of one CIFAR variant."""

    name: str
    dirname: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_class: str


SPECS = {
    "cifar10": CifarSpec(
        name="cifar10",
        dirname="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        torchvision_class="CIFAR10",
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        dirname="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        torchvision_class="CIFAR100",
    ),
}

# (module, name) pairs a CIFAR pickle may reference: numpy's array reconstruction, and _codecs.encode, which
# protocol-2 pickles written by Python 3 use for bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR batch never holds")
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core.") :]  # the old path still works but warns
        return super().find_class(module, name)


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def read_batch(path: str | os.PathLike) -> dict[str, Any]:
    """Unpickle one CIFAR file (``data_batch_N``, ``test_batch``, ``train``, ``meta``...) with str keys.

    Raises:
        DataError: missing, truncated, not a pickle, or holding anything but plain data; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such CIFAR file.")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: truncated or not a CIFAR python pickle ({e}). Delete it and get it again.") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}.")
    return {_text(k): v for k, v in obj.items()}


def candidate_dirs(spec: CifarSpec, data_dir: str | os.PathLike | None) -> list[Path]:
    """Batches directories to try, in order."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    env = env_data_dir()
    if env is not None:
        roots += [env / spec.name, env]
    roots.append(default_download_root(spec.name))
    dirs: list[Path] = []
    for r in roots:
        for d in (r, r / spec.dirname):
            if d not in dirs:
                dirs.append(d)
    return dirs


def find_batches_dir(spec: CifarSpec, split: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The first candidate directory holding the meta file and every file of ``split``."""
    files = (spec.meta_file, *(spec.train_files if split == "train" else spec.test_files))
    for d in candidate_dirs(spec, data_dir):
        present = [(d / f).is_file() for f in files]
        if all(present):
            return d
        if any(present):
            missing = [f for f, ok in zip(files, present) if not ok]
            _log.warning("%s holds part of %s (missing %s); looking further.", d, spec.name, ", ".join(missing))
    return None


def _missing_message(spec: CifarSpec, split: str, data_dir: str | os.PathLike | None, extra: str = "") -> str:
    files = (spec.meta_file, *(spec.train_files if split == "train" else spec.test_files))
    searched = "\n".join(f"  - {d}" for d in candidate_dirs(spec, data_dir))
    return (
        f"{spec.name} ({split}) not found: no directory holds {', '.join(files)}.{extra}\n"
        f"Searched:\n{searched}\n"
        "Fix it with one of:\n"
        f"  - --data-dir DIR   (python: data_dir=DIR) pointing at '{spec.dirname}' or the folder holding it "
        "(the 'python version' from https://www.cs.toronto.edu/~kriz/cifar.html, extracted)\n"
        f"  - set $REFCONV_DATA_DIR to a folder holding {spec.name}/{spec.dirname}\n"
        "  - --download   (python: download=True) to fetch it with torchvision (needs network)"
    )


def _download(spec: CifarSpec, split: str, data_dir: str | os.PathLike | None) -> None:
    root = Path(data_dir).expanduser() if data_dir is not None else default_download_root(spec.name)
    try:
        import torchvision.datasets as tvd

        getattr(tvd, spec.torchvision_class)(str(root), train=(split == "train"), download=True)
    except Exception as e:  # URLError, RuntimeError (bad checksum), HTTPError...
        raise DataError(_missing_message(spec, split, data_dir, f"\nThe download into {root} failed: {e}")) from e


def load_cifar(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> tuple[Tensor, Tensor, tuple[str, ...], str]:
    """Decoded ``(images uint8 (N, 3, 32, 32), labels int64 (N,), class names, batches dir)`` of one split.

    Raises:
        DataError: not found (listing where it looked and how to get it), or a file that is corrupt, has the
            wrong array shape, label count or label range (naming the file).
    """
    spec = SPECS[name]
    d = find_batches_dir(spec, split, data_dir)
    if d is None and download:
        _download(spec, split, data_dir)
        d = find_batches_dir(spec, split, data_dir)
    if d is None:
        raise DataError(_missing_message(spec, split, data_dir))

    meta_path = d / spec.meta_file
    meta = read_batch(meta_path)
    if spec.names_key not in meta:
        raise DataError(f"{meta_path}: no '{spec.names_key}' entry (keys: {sorted(meta)}); is this {spec.name}?")
    class_names = tuple(_text(n) for n in meta[spec.names_key])
    if len(class_names) != spec.num_classes:
        raise DataError(f"{meta_path}: {len(class_names)} class names, {spec.name} has {spec.num_classes}.")

    images, labels = [], []
    for fname in spec.train_files if split == "train" else spec.test_files:
        path = d / fname
        batch = read_batch(path)
        for key in ("data", spec.label_key):
            if key not in batch:
                raise DataError(f"{path}: no '{key}' entry (keys: {sorted(batch)}); is this {spec.name}?")
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
            shape = getattr(data, "shape", None)
            raise DataError(
                f"{path}: 'data' must be a uint8 array of shape (N, {_PIXELS}), found "
                f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}."
            )
        y = np.asarray(batch[spec.label_key], dtype=np.int64)
        if y.ndim != 1 or y.shape[0] != data.shape[0]:
            raise DataError(f"{path}: {data.shape[0]} images but {y.size} labels.")
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
            raise DataError(f"{path}: labels must be in [0, {spec.num_classes}), found {y.min()}..{y.max()}.")
        images.append(torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE))
        labels.append(torch.from_numpy(y))
    _log.info("%s %s: %d images from %s", spec.name, split, sum(len(y) for y in labels), d)
    return torch.cat(images), torch.cat(labels), class_names, str(d)
