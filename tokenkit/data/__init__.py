"""Dataset readers behind one call: ``build_dataset({"name": ..., **options}, split)``.

Image datasets give float tensors ``(C, H, W)`` in [-1, 1]; audio datasets give ``(1, T)`` in
[-1, 1] at 16 kHz (random fixed-length crops for ``train``, whole clips otherwise: batch those
with :func:`pad_collate`). Names:

==================  ========  ==============================================================
name                modality  source and options
==================  ========  ==============================================================
fashion-mnist       image     Debian dataset-fashion-mnist; image_size (28), channels (1)
image-folder        image     root; image_size (64), channels (3), val/test_fraction
synthetic-image     image     image_size (32), channels (3), num_items (256), seed (0)
audio-folder        audio     root (wav/ogg/flac); segment_seconds, crop, val/test_fraction
fillets-speech      audio     Debian fillets-ng-data-cs (+ -nl); languages, val_fraction
librivox-test       audio     Debian pocketsphinx-testdata: 5 transcribed clips, test only
synthetic-audio     audio     num_items (64), seed (0), min/max_seconds, segment_seconds
==================  ========  ==============================================================

Every reader also takes ``num_items`` (the first N items of the split). Audio readers take
``segment_seconds`` (1.0), ``crop`` ("random" for train, else "none"; or "center") and ``cache``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch.utils.data import Dataset

from ._common import SPLITS, DatasetError, hash_split
from .audio import (
    SAMPLE_RATE,
    AudioClips,
    AudioFolder,
    FilletsSpeech,
    LibriVoxTest,
    load_audio,
    pad_collate,
)
from .fashion_mnist import FashionMNIST, load_fashion_mnist
from .images import ImageFolder, float_to_uint8, uint8_to_float
from .synthetic import SyntheticAudio, SyntheticImages

#: name -> (reader class, modality)
DATASETS: dict[str, tuple[type, str]] = {
    "fashion-mnist": (FashionMNIST, "image"),
    "image-folder": (ImageFolder, "image"),
    "synthetic-image": (SyntheticImages, "image"),
    "audio-folder": (AudioFolder, "audio"),
    "fillets-speech": (FilletsSpeech, "audio"),
    "librivox-test": (LibriVoxTest, "audio"),
    "synthetic-audio": (SyntheticAudio, "audio"),
}


def available_datasets() -> list[str]:
    return sorted(DATASETS)


def dataset_modality(name: str) -> str:
    """``"image"`` or ``"audio"`` for a dataset name."""
    return _lookup(name)[1]


def _lookup(name: Any) -> tuple[type, str]:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return DATASETS[name]


def _options(cls: type) -> set[str]:
    """Keyword options of a reader: its ``__init__`` parameters, following ``**options`` upward."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - {"split", "files"}


def dataset_options(name: str) -> set[str]:
    """The option keys the reader ``name`` accepts (besides ``name``)."""
    return _options(_lookup(name)[0])


def build_dataset(cfg: dict[str, Any], split: str) -> Dataset:
    """The dataset ``cfg["name"]`` for ``split`` (train/val/test/all); other keys are its options."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise DatasetError(f'a dataset config is a dict with a "name" key, got {cfg!r}')
    options = {k: v for k, v in cfg.items() if k != "name"}
    cls, _ = _lookup(cfg["name"])
    unknown = set(options) - _options(cls)
    if unknown:
        raise DatasetError(
            f"dataset {cfg['name']!r} has no option(s) {', '.join(sorted(unknown))}; "
            f"it takes: {', '.join(sorted(_options(cls)))}"
        )
    return cls(split=split, **options)


__all__ = [
    "DATASETS",
    "SAMPLE_RATE",
    "SPLITS",
    "AudioClips",
    "AudioFolder",
    "DatasetError",
    "FashionMNIST",
    "FilletsSpeech",
    "ImageFolder",
    "LibriVoxTest",
    "SyntheticAudio",
    "SyntheticImages",
    "available_datasets",
    "build_dataset",
    "dataset_modality",
    "dataset_options",
    "float_to_uint8",
    "hash_split",
    "load_audio",
    "load_fashion_mnist",
    "pad_collate",
    "uint8_to_float",
]
