"""Small helpers shared by the dataset readers: splits, Debian package lookup, errors."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

SPLITS = ("train", "val", "test", "all")


class DatasetError(ValueError):
    """A dataset could not be built: bad option, unknown split, missing files or package."""


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    if split not in allowed:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(allowed)}")
    return split


def hash_fraction(name: str) -> float:
    """A stable number in [0, 1) from a file name (the same on every machine and Python run)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(names: Sequence[str], split: str, val_fraction: float, test_fraction: float) -> list[int]:
    """Indices of ``names`` that fall in ``split``, decided by a hash of each name.

    A name's split never changes when files are added or removed, so val/test stay held out.
    """
    check_split(split)
    if not (0.0 <= val_fraction and 0.0 <= test_fraction and val_fraction + test_fraction < 1.0):
        raise DatasetError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum to < 1"
        )
    if split == "all":
        return list(range(len(names)))
    keep = []
    for i, name in enumerate(names):
        u = hash_fraction(name)
        which = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        if which == split:
            keep.append(i)
    return keep


def apt_hint(package: str) -> str:
    return f"install it with: sudo apt-get install {package}"


def require_dir(path: str | Path, package: str, what: str) -> Path:
    """``path`` as a Path, or a DatasetError that gives the Debian install command."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(
            f"{what} not found at {path}: it comes from the Debian package {package}; {apt_hint(package)}"
        )
    return path


def limit(indices: list[int], num_items: int | None) -> list[int]:
    """The first ``num_items`` of ``indices`` (all of them when None)."""
    if num_items is None:
        return indices
    if num_items <= 0:
        raise DatasetError(f"num_items must be positive, got {num_items}")
    return indices[:num_items]
