"""Write tiny datasets and weights files in the exact on-disk formats, for tests.

Every writer takes the directory to fill and returns the path a caller passes as ``data_dir`` (or as a weights
path). Images are *learnable*: each class is a bright square at its own position on a dark, noisy
background, so a small model trained for a few steps on them beats chance, which engine tests can rely on.

    root = write_fashion_mnist(tmp_path)                    # 4 IDX .gz files; build_dataset(..., data_dir=root)
    root = write_cifar(tmp_path, "cifar10")                 # returns the cifar-10-batches-py directory
    root = write_image_folder(tmp_path)                     # root/train/<class>/*.png, root/val/<class>/*.png
    run = write_run_dir(tmp_path / "run", model.state_dict(), layout="model")  # a finished plain run
"""

from __future__ import annotations

import gzip
import json
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "FASHION_FILES",
    "class_images",
    "write_idx",
    "write_fashion_mnist",
    "write_cifar",
    "write_image_folder",
    "write_run_dir",
    "truncate",
]

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def class_images(
    n: int, num_classes: int, size: int, chans: int = 1, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, chans, size, size), labels int64 (n,))``; labels cycle 0..num_classes-1.

    Class ``c`` is a bright square whose position is ``c``'s cell on a grid, over low-amplitude noise.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % num_classes
    images = rng.integers(0, 60, size=(n, chans, size, size), dtype=np.uint8)
    grid = int(np.ceil(np.sqrt(num_classes)))
    cell = max(1, size // grid)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), grid)
        images[i, :, r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = 230
    return images, labels


def write_idx(path: str | Path, array: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write an IDX file of unsigned bytes; gzip when ``gz`` (default: when the name ends in ``.gz``)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if gz if gz is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_fashion_mnist(
    root: str | Path,
    *,
    n_train: int = 40,
    n_test: int = 20,
    gz: bool = True,
    layout: str = "flat",
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
) -> Path:
    """Write Fashion-MNIST's IDX files (28x28, 10 classes) and return the ``data_dir`` to pass.

    Args:
        layout: ``"flat"`` (the files in ``root``, like Debian's package) or ``"torchvision"``
            (``root/FashionMNIST/raw``).
        gz: ``.gz`` files (as distributed) or raw ones.
        splits: which splits to write.
    """
    root = Path(root)
    d = root if layout == "flat" else root / "FashionMNIST" / "raw"
    for i, split in enumerate(splits):
        n = n_train if split == "train" else n_test
        images, labels = class_images(n, 10, 28, 1, seed=seed + i)
        ext = ".gz" if gz else ""
        write_idx(d / (FASHION_FILES[split][0] + ext), images[:, 0])
        write_idx(d / (FASHION_FILES[split][1] + ext), labels.astype(np.uint8))
    return root


def _pickle(path: Path, obj: object, legacy_names: bool) -> None:
    data = pickle.dumps(obj, protocol=2)
    if legacy_names:  # the real files were written by numpy 1.x: numpy.core, not numpy._core
        data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(data)


def write_cifar(
    root: str | Path,
    variant: str = "cifar10",
    *,
    n_train: int = 50,
    n_test: int = 20,
    legacy_names: bool = True,
    seed: int = 0,
) -> Path:
    """Write a CIFAR "python version" directory and return it (``cifar-10-batches-py`` / ``cifar-100-python``).

    CIFAR-10 gets 5 train batches (``n_train`` split across them), ``test_batch`` and ``batches.meta``; CIFAR-100
    gets ``train``, ``test`` and ``meta`` with fine and coarse labels. Keys and value types follow the real
    files: ``data`` a ``uint8 (N, 3072)`` array (channel-major rows), labels lists of ints.
    """
    root = Path(root)
    n_classes = 10 if variant == "cifar10" else 100
    d = root / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    d.mkdir(parents=True, exist_ok=True)

    def batch(n: int, s: int, label: str) -> dict:
        images, labels = class_images(n, n_classes, 32, 3, seed=s)
        out = {
            "batch_label": label,
            "data": images.reshape(n, 3 * 32 * 32),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        if variant == "cifar10":
            out["labels"] = labels.tolist()
        else:
            out["fine_labels"] = labels.tolist()
            out["coarse_labels"] = (labels // 5).tolist()
        return out

    if variant == "cifar10":
        sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
        for i, n in enumerate(sizes, start=1):
            _pickle(d / f"data_batch_{i}", batch(n, seed + i, f"training batch {i} of 5"), legacy_names)
        _pickle(d / "test_batch", batch(n_test, seed + 99, "testing batch 1 of 1"), legacy_names)
        meta = {"num_cases_per_batch": sizes[0], "label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
        _pickle(d / "batches.meta", meta, legacy_names)
    elif variant == "cifar100":
        _pickle(d / "train", batch(n_train, seed + 1, "training batch 1 of 1"), legacy_names)
        _pickle(d / "test", batch(n_test, seed + 99, "testing batch 1 of 1"), legacy_names)
        meta = {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        }
        _pickle(d / "meta", meta, legacy_names)
    else:
        raise ValueError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
    return d


def write_image_folder(
    root: str | Path,
    *,
    classes: Sequence[str] = ("cat", "dog", "fox"),
    per_class: Mapping[str, int] | None = None,
    size: tuple[int, int] = (40, 30),
    mode: str = "RGB",
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/<i>.png`` and return ``root``.

    Args:
        per_class: images per class for each split directory (default ``{"train": 3, "val": 2}``); a split
            name maps to a directory, so ``{"train": 2, "test": 1}`` writes ``test/``.
        size: ``(width, height)``: deliberately not square, to exercise resize + crop.
        mode: PIL mode (``"RGB"``, ``"L"``).
    """
    from PIL import Image

    root = Path(root)
    per_class = dict(per_class or {"train": 3, "val": 2})
    w, h = size
    for s, (split, n) in enumerate(per_class.items()):
        images, labels = class_images(n * len(classes), len(classes), max(w, h), 3, seed=seed + s)
        for i, (img, lab) in enumerate(zip(images, labels)):
            d = root / split / classes[int(lab)]
            d.mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(np.transpose(img, (1, 2, 0))[:h, :w], "RGB").convert(mode)
            pil.save(d / f"{i}.png")
    return root


def write_run_dir(
    run_dir: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    layout: str = "folded",
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Fake a refconv run directory holding ``state_dict`` and return it.

    Args:
        layout: ``"folded"`` / ``"model"`` -> ``<layout>.safetensors`` and the ``done.json`` naming it (a finished
            refconv / plain run); ``"best"`` / ``"last"`` -> ``checkpoints/<layout>.pt``, a training checkpoint
            ``{"model": state_dict, "epoch": 1, **extra}`` (alone: an unfinished run).
        extra: more checkpoint entries (optimizer state, config...).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    if layout in ("folded", "model"):
        from safetensors.torch import save_file

        save_file(tensors, str(run_dir / f"{layout}.safetensors"))
        (run_dir / "done.json").write_text(json.dumps({"weights_path": str(run_dir / f"{layout}.safetensors")}))
    elif layout in ("best", "last"):
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        torch.save({"model": tensors, "epoch": 1, **dict(extra or {})}, run_dir / "checkpoints" / f"{layout}.pt")
    else:
        raise ValueError(f"layout must be 'folded', 'model', 'best' or 'last', got {layout!r}")
    return run_dir


def truncate(path: str | Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` bytes (int) or that fraction of its size (float): a download that stopped."""
    path = Path(path)
    data = path.read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    path.write_bytes(data[:n])
    return path
