"""Small structured synthetic data, deterministic from a seed: for tests, smoke runs and CI.

Images: a linear colour gradient with a few rectangles, ellipses and Gaussian blobs on top.
Audio: sums of harmonic tones under attack/decay envelopes, plus linear and exponential chirps.
Item ``i`` of a split depends only on ``(seed, split, i)``, never on the order items are read in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._common import DatasetError, check_split
from .audio import SAMPLE_RATE, AudioClips

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "all": 3}


def _rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_IDS[split], i])


def synthetic_image(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """One float32 ``(channels, size, size)`` image in [-1, 1]: gradient + shapes + blobs."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    c0, c1 = rng.uniform(-1, 1, (2, channels))
    img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
    for _ in range(rng.integers(1, 4)):
        colour = rng.uniform(-1, 1, channels)[:, None, None]
        cy, cx = rng.uniform(-0.6, 0.6, 2)
        ry, rx = rng.uniform(0.15, 0.5, 2)
        kind = rng.integers(3)
        if kind == 0:  # rectangle
            inside = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
            img = np.where(inside[None], colour, img)
        elif kind == 1:  # ellipse
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            img = np.where(inside[None], colour, img)
        else:  # Gaussian blob, blended
            w = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))[None]
            img = img * (1 - w) + colour * w
    return np.clip(img, -1, 1).astype(np.float32)


class SyntheticImages(Dataset):
    """``num_items`` images ``(channels, image_size, image_size)`` in [-1, 1], generated on access."""

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        channels: int = 3,
        num_items: int = 256,
        seed: int = 0,
    ) -> None:
        check_split(split)
        if channels not in (1, 3) or image_size <= 0 or num_items <= 0:
            raise DatasetError(
                f"synthetic-image needs channels in (1, 3), image_size > 0, num_items > 0; got "
                f"channels={channels}, image_size={image_size}, num_items={num_items}"
            )
        self.split, self.image_size, self.channels = split, image_size, channels
        self.num_items, self.seed = num_items, seed

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < self.num_items:
            raise IndexError(f"item {i} out of range for {self.num_items} items")
        rng = _rng(self.seed, self.split, i)
        return torch.from_numpy(synthetic_image(rng, self.image_size, self.channels))


def _envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """Attack then exponential decay, starting at a random point of the clip."""
    start = int(rng.integers(0, max(1, n // 2)))
    attack = max(1, int(rng.uniform(0.005, 0.05) * SAMPLE_RATE))
    decay = rng.uniform(0.1, 0.6) * SAMPLE_RATE
    t = np.arange(n - start, dtype=np.float64)
    env = np.minimum(t / attack, 1.0) * np.exp(-np.maximum(t - attack, 0) / decay)
    return np.concatenate([np.zeros(start), env])


def synthetic_audio(rng: np.random.Generator, n: int) -> np.ndarray:
    """One float32 clip ``(n,)`` at 16 kHz: enveloped harmonic tones and chirps, peak in [0.3, 0.9]."""
    t = np.arange(n) / SAMPLE_RATE
    x = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.6:  # harmonic tone
            f0 = rng.uniform(100, 500)
            tone = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
                       for k in range(1, int(rng.integers(1, 5)) + 1))
        else:  # chirp, linear or exponential in frequency
            f_a, f_b = rng.uniform(150, 3000, 2)
            dur = n / SAMPLE_RATE
            if rng.random() < 0.5:
                phase = 2 * np.pi * (f_a * t + (f_b - f_a) * t**2 / (2 * dur))
            else:
                k = np.log(f_b / f_a) / dur
                phase = 2 * np.pi * f_a * (np.exp(k * t) - 1) / k
            tone = np.sin(phase)
        x += tone * _envelope(rng, n)
    x += 0.003 * rng.standard_normal(n)
    peak = np.abs(x).max()
    return (x / peak * rng.uniform(0.3, 0.9)).astype(np.float32)


class SyntheticAudio(AudioClips):
    """``num_items`` clips whose lengths vary in [min_seconds, max_seconds] (so pad_collate is used)."""

    def __init__(
        self,
        split: str = "train",
        num_items: int = 64,
        seed: int = 0,
        min_seconds: float = 0.5,
        max_seconds: float = 1.5,
        **options,
    ) -> None:
        if num_items <= 0 or not 0 < min_seconds <= max_seconds:
            raise DatasetError(
                f"synthetic-audio needs num_items > 0 and 0 < min_seconds <= max_seconds; got "
                f"num_items={num_items}, min_seconds={min_seconds}, max_seconds={max_seconds}"
            )
        super().__init__(split, **options)
        self.num_items, self.seed = num_items, seed
        self.min_seconds, self.max_seconds = min_seconds, max_seconds

    def _num_clips(self) -> int:
        return self.num_items

    def _load(self, i: int) -> np.ndarray:
        rng = _rng(self.seed, self.split, i)
        n = int(rng.uniform(self.min_seconds, self.max_seconds) * SAMPLE_RATE)
        return synthetic_audio(rng, n)
