"""Fashion-MNIST (Xiao et al. 2017) from the Debian package ``dataset-fashion-mnist``.

70,000 real 28x28 grayscale product photos (60,000 train, 10,000 test), read from the IDX files the
package installs under ``/usr/share/datasets/fashion-mnist``. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ._common import DatasetError, check_split, limit, require_dir
from .images import ImageArrayDataset

PACKAGE = "dataset-fashion-mnist"
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FILES = {"train": "train", "test": "t10k"}


def fashion_mnist_root() -> Path:
    """The folder with the IDX files (``TOKENKIT_FASHION_MNIST`` overrides the Debian path)."""
    return Path(os.environ.get("TOKENKIT_FASHION_MNIST", DEFAULT_ROOT))


def _read_idx(path: Path, offset: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(
            f"Fashion-MNIST file {path} is missing: it comes from the Debian package {PACKAGE}; "
            f"install it with: sudo apt-get install {PACKAGE}"
        )
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset).copy()


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels uint8 (N,))`` for split ``train`` or ``test``."""
    check_split(split, tuple(_FILES))
    root = require_dir(fashion_mnist_root(), PACKAGE, "Fashion-MNIST")
    stem = _FILES[split]
    images = _read_idx(root / f"{stem}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(root / f"{stem}-labels-idx1-ubyte.gz", 8)
    if len(images) != len(labels):
        raise DatasetError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


class FashionMNIST(ImageArrayDataset):
    """Fashion-MNIST as ``(channels, image_size, image_size)`` in [-1, 1].

    Splits: ``train`` (60,000), ``test`` (10,000), ``val`` (the test images: Fashion-MNIST has no
    separate validation set, so never tune on ``val`` and report ``test``), ``all`` (70,000).
    """

    def __init__(
        self, split: str = "train", image_size: int = 28, channels: int = 1, num_items: int | None = None
    ) -> None:
        check_split(split)
        if split == "all":
            parts = [load_fashion_mnist("train"), load_fashion_mnist("test")]
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
        else:
            images, labels = load_fashion_mnist("test" if split == "val" else split)
        keep = limit(list(range(len(images))), num_items)
        self.labels = labels[: len(keep)]
        super().__init__(images[: len(keep)], image_size=image_size, channels=channels)
