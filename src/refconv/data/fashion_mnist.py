"""Fashion-MNIST from its IDX files, found where they already are before anything is downloaded.

Search order for a split's two files (``*-images-idx3-ubyte`` and ``*-labels-idx1-ubyte``, raw or ``.gz``):

1. ``data_dir`` itself, then its torchvision layout ``data_dir/FashionMNIST/raw`` and ``data_dir/fashion-mnist``.
   An explicit directory is the only place looked at: when it lacks the files, that is an error, never a
   silent switch to other data;
2. ``$REFCONV_DATA_DIR/fashion-mnist`` (and its ``FashionMNIST/raw``);
3. Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``;
4. the default download location (:func:`~refconv.data.base.default_download_root`).

``download=True`` fetches with ``torchvision.datasets.FashionMNIST`` only when none of these has the files.
Decoding is validated (magic number, dimensions, sizes, label range) and cached per process, so building
the train and test datasets several times in one run reads each file once.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import zlib
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError
from ..normalization import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from .base import default_download_root, env_data_dir

__all__ = [
    "CLASSES",
    "MEAN",
    "STD",
    "NATIVE_SIZE",
    "SYSTEM_DIR",
    "FILES",
    "read_idx",
    "candidate_dirs",
    "find_files",
    "load_fashion_mnist",
]

_log = logging.getLogger(__name__)

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MEAN, STD = FASHION_MNIST_MEAN, FASHION_MNIST_STD
NATIVE_SIZE = 28
# Debian/Ubuntu `dataset-fashion-mnist` installs the four .gz files here. Module-level so tests can point it
# elsewhere.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: truncated or corrupt gzip file ({e}). Delete it and get it again.") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e}).") from e


@functools.lru_cache(maxsize=8)
def _decode_idx(path_str: str, mtime_ns: int, size: int) -> Tensor:
    """Decode one IDX file (cached on path, mtime and size, so an edited file is read again)."""
    path = Path(path_str)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, the header alone is at least 8).")
    zero1, zero2, dtype, ndim = data[0], data[1], data[2], data[3]
    if zero1 or zero2 or dtype != _IDX_UBYTE or ndim < 1:
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes (magic number 0x{data[:4].hex()}, expected 0x000008NN)."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dims need {header}).")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = 1
    for d in dims:
        count *= d
    got = len(data) - header
    if got != count:
        what = "truncated" if got < count else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: dims {dims} need {count} bytes of data, the file holds {got}. Delete it and get it again."
        )
    if count == 0:
        return torch.zeros(dims, dtype=torch.uint8)
    # One copy into a writable buffer (torch warns on read-only ones), then a zero-copy view past the header.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read an IDX file of unsigned bytes (raw or gzip) into a ``uint8`` tensor shaped by its header.

    Raises:
        DataError: the file is missing, not IDX (wrong magic), truncated, or has extra bytes; the message
            names the file.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"{path}: no such IDX file.") from e
    return _decode_idx(str(path.resolve()), st.st_mtime_ns, st.st_size)


def candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for the IDX files, in order (see the module docstring)."""
    dirs: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        # An explicit directory is the user's intent: no fallback to other copies.
        return [d, d / "FashionMNIST" / "raw", d / "fashion-mnist", d / "fashion-mnist" / "FashionMNIST" / "raw"]
    env = env_data_dir()
    if env is not None:
        dirs += [env / "fashion-mnist", env / "fashion-mnist" / "FashionMNIST" / "raw"]
    dirs.append(SYSTEM_DIR)
    dirs.append(default_download_root("fashion-mnist") / "FashionMNIST" / "raw")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _file_in(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # raw first: torchvision's raw/ holds both, raw reads faster
        p = directory / name
        if p.is_file():
            return p
    return None


def find_files(split: str, data_dir: str | os.PathLike | None = None) -> tuple[Path, Path] | None:
    """The (images, labels) files of ``split`` in the first directory that holds both, or None."""
    for d in candidate_dirs(data_dir):
        images, labels = (_file_in(d, stem) for stem in FILES[split])
        if images is not None and labels is not None:
            return images, labels
        if images is not None or labels is not None:
            _log.warning("%s holds only part of Fashion-MNIST's %s split; looking further.", d, split)
    return None


def _missing_message(split: str, data_dir: str | os.PathLike | None, extra: str = "") -> str:
    searched = "\n".join(f"  - {d}" for d in candidate_dirs(data_dir))
    images, labels = FILES[split]
    return (
        f"Fashion-MNIST ({split}) not found: no directory holds both {images}[.gz] and {labels}[.gz].{extra}\n"
        f"Searched:\n{searched}\n"
        "Fix it with one of:\n"
        "  - sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu package, installs /usr/share/datasets/fashion-mnist)\n"
        "  - --data-dir DIR   (python: data_dir=DIR) with the 4 IDX files: train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz\n"
        "  - --download   (python: download=True) to fetch them with torchvision (needs network)"
    )


def _download(split: str, data_dir: str | os.PathLike | None) -> Path:
    root = Path(data_dir).expanduser() if data_dir is not None else default_download_root("fashion-mnist")
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=(split == "train"), download=True)
    except Exception as e:  # network errors come as URLError, RuntimeError, HTTPError...
        raise DataError(_missing_message(split, data_dir, f"\nThe download into {root} failed: {e}")) from e
    return root / "FashionMNIST" / "raw"


def load_fashion_mnist(
    split: str, data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> tuple[Tensor, Tensor, str]:
    """Decoded ``(images uint8 (N, 1, 28, 28), labels int64 (N,), source directory)`` of one split.

    Raises:
        DataError: files not found anywhere (listing where it looked and the three ways to get them), or a
            found file is corrupt (naming it). A corrupt file is never skipped for another copy: silently
            training on different data is worse than stopping.
    """
    found = find_files(split, data_dir)
    if found is None and download:
        _download(split, data_dir)
        found = find_files(split, data_dir)
    if found is None:
        raise DataError(_missing_message(split, data_dir))
    images_path, labels_path = found
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or tuple(images.shape[1:]) != (NATIVE_SIZE, NATIVE_SIZE):
        raise DataError(
            f"{images_path}: expected images of shape (N, {NATIVE_SIZE}, {NATIVE_SIZE}), the header says "
            f"{tuple(images.shape)}."
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label file, the header says shape {tuple(labels.shape)}.")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels: "
            "the files come from different splits or one is damaged."
        )
    if labels.numel() and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range (Fashion-MNIST has 10 classes).")
    _log.info("Fashion-MNIST %s: %d images from %s", split, images.shape[0], images_path.parent)
    return images.unsqueeze(1), labels.to(torch.int64), str(images_path.parent)
