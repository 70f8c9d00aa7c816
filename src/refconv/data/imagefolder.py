"""ImageNet-style image folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Labels are the sorted class-folder names (torchvision's rule). Because a label index means "the i-th folder",
train and val must hold the same class folders or every label after the first difference is shifted: that is
checked up front and reported by name, rather than discovered as a mysteriously low accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets import ImageFolder

from ..errors import CorruptImageError, DataError
from .base import env_data_dir

__all__ = ["CorruptImageError", "HiddenSkippingImageFolder", "SPLIT_DIRS", "resolve_root", "split_dir", "class_dirs", "load_imagefolder"]

# Directory names tried for each split, in order.
SPLIT_DIRS = {"train": ("train",), "test": ("val", "test", "validation")}

_LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"


def resolve_root(name: str, data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$REFCONV_DATA_DIR/<name>``; an image folder has no default location."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = env_data_dir()
    if env is not None:
        return env / name
    raise DataError(
        f"dataset '{name}' needs --data-dir DIR (python: data_dir=DIR) laid out as {_LAYOUT}, "
        "or $REFCONV_DATA_DIR/" + name + " in that layout."
    )


def split_dir(root: Path, split: str) -> Path | None:
    """The directory of ``split`` under ``root`` (``val`` then ``test`` for the test split), or None."""
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def class_dirs(directory: Path) -> list[str]:
    """Sorted class-folder names, exactly what ``ImageFolder`` will index (hidden entries skipped)."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


class HiddenSkippingImageFolder(ImageFolder):
    """``ImageFolder`` whose classes are :func:`class_dirs`: hidden folders (``.ipynb_checkpoints``, ``.git``)
    are not classes. Keeps what is checked for consistency identical to what is indexed."""

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        classes = class_dirs(Path(directory))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}

    def __getitem__(self, index: int) -> tuple:
        try:
            return super().__getitem__(index)
        except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError (an OSError), truncation
            path = self.samples[index][0]
            raise CorruptImageError(
                f"image {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                "). Replace that file (e.g. re-extract it from the dataset archive) or delete it, and run again."
            ) from None


def _check_consistent(train_dir: Path, test_dir: Path) -> None:
    train, test = class_dirs(train_dir), class_dirs(test_dir)
    if train == test:
        return
    only_train = sorted(set(train) - set(test))
    only_test = sorted(set(test) - set(train))
    parts = []
    if only_train:
        parts.append(
            f"missing from {test_dir}: {', '.join(only_train[:10])}" + (" ..." if len(only_train) > 10 else "")
        )
    if only_test:
        parts.append(f"missing from {train_dir}: {', '.join(only_test[:10])}" + (" ..." if len(only_test) > 10 else ""))
    raise DataError(
        f"class folders differ between {train_dir} ({len(train)} classes) and {test_dir} ({len(test)} classes); "
        f"{'; '.join(parts)}. Labels are folder indices, so both splits need the same class folders "
        "(an empty folder is not enough: ImageFolder needs at least one image per class)."
    )


def load_imagefolder(
    name: str, split: str, data_dir: str | os.PathLike | None, transform: Callable | None
) -> tuple[ImageFolder, str]:
    """``(torchvision ImageFolder, split directory)`` after checking layout and class consistency.

    Raises:
        DataError: no root, no split directory, no class folders, a class without images, or class folders
            that differ between the splits.
    """
    root = resolve_root(name, data_dir)
    if not root.is_dir():
        raise DataError(f"image folder root {root} does not exist; expected {_LAYOUT}.")
    here = split_dir(root, split)
    if here is None:
        wanted = " or ".join(f"{root / n}" for n in SPLIT_DIRS[split])
        raise DataError(f"no {split} split in {root}: expected a directory {wanted} ({_LAYOUT}).")
    if not class_dirs(here):
        raise DataError(f"{here} holds no class folders; expected {_LAYOUT}.")
    other = split_dir(root, "test" if split == "train" else "train")
    if other is not None:
        train_dir, test_dir = (here, other) if split == "train" else (other, here)
        _check_consistent(train_dir, test_dir)
    try:
        dataset = HiddenSkippingImageFolder(str(here), transform=transform)
    except FileNotFoundError as e:  # "Found no valid file for the classes ..."
        raise DataError(f"{here}: {e}") from e
    return dataset, str(here)
