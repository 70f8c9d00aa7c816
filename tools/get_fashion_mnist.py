"""Make sure Fashion-MNIST is where refconv finds it without options (``make data``, run by ``make demo`` and
``make test``): report the directory that holds it, else download it with torchvision into the default location
(``$REFCONV_DATA_DIR/fashion-mnist``, else ``~/.cache/refconv/data/fashion-mnist``). Exit code 1, with the
places searched and the ways to get it, when neither works (no copy, no network)."""

from __future__ import annotations

import sys

from refconv.data.fashion_mnist import load_fashion_mnist
from refconv.errors import DataError


def main() -> int:
    try:
        for split in ("train", "test"):
            images, _, source = load_fashion_mnist(split, download=True)
            print(f"Fashion-MNIST {split}: {images.shape[0]:,} images in {source}")
    except DataError as exc:
        print(f"make data: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
