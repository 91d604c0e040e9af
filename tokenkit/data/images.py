"""Image readers. Every item is a float tensor ``(C, H, W)`` in [-1, 1].

``ImageFolder`` is how a user brings FFHQ, CelebA or their own photos: any sizes, png/jpg/...,
resized so the shorter side is ``image_size`` and centre-cropped to a square.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._common import DatasetError, check_split, hash_split, limit

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def uint8_to_float(images: np.ndarray | Tensor) -> Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    t = torch.as_tensor(np.asarray(images))
    if t.dtype != torch.uint8:
        raise DatasetError(f"expected uint8 pixels, got {t.dtype}")
    return t.float().div_(127.5).sub_(1.0)


def float_to_uint8(images: Tensor) -> Tensor:
    """float in [-1, 1] -> uint8 in [0, 255] (values outside are clipped)."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def resize_center_crop(image, size: int):
    """PIL image -> ``size x size``: shorter side resized to ``size`` (bicubic), centre crop."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolder(Dataset):
    """Every image under ``root`` (recursively), as ``(channels, image_size, image_size)``.

    Splits: when ``root/<split>`` exists it is used as is; otherwise files are split by a hash of
    their path relative to ``root`` (``val_fraction``/``test_fraction`` of them held out).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 64,
        channels: int = 3,
        num_items: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
    ) -> None:
        check_split(split)
        if channels not in (1, 3):
            raise DatasetError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        if image_size <= 0:
            raise DatasetError(f"image_size must be positive, got {image_size}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist; pass root=<a folder of images>")
        self.image_size, self.channels = image_size, channels
        if split != "all" and (root / split).is_dir():
            files = list_images(root / split)
        else:
            files = list_images(root)
            names = [p.relative_to(root).as_posix() for p in files]
            files = [files[i] for i in hash_split(names, split, val_fraction, test_fraction)]
        self.files = [files[i] for i in limit(list(range(len(files))), num_items)]
        if not self.files:
            raise DatasetError(
                f"no images for split {split!r} under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB" if self.channels == 3 else "L")
            im = resize_center_crop(im, self.image_size)
            pixels = np.array(im, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return uint8_to_float(pixels).permute(2, 0, 1).contiguous()


class ImageArrayDataset(Dataset):
    """Images held in memory as uint8 ``(N, H, W)`` or ``(N, H, W, C)``, resized on access."""

    def __init__(
        self, images: np.ndarray, image_size: int | None = None, channels: int | None = None
    ) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DatasetError(f"expected uint8 (N, H, W[, C]) images, got {images.dtype} {images.shape}")
        self.images = images if images.ndim == 4 else images[..., None]
        native = self.images.shape[-1]
        self.channels = channels or native
        if self.channels not in (1, 3) or (native == 3 and self.channels == 1):
            raise DatasetError(f"cannot give {self.channels} channels from {native}-channel images")
        self.image_size = image_size or self.images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        x = uint8_to_float(self.images[i]).permute(2, 0, 1)
        if x.shape[0] != self.channels:
            x = x.expand(self.channels, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = torch.nn.functional.interpolate(
                x[None], size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                align_corners=False,
            )[0].clamp_(-1, 1)
        return x.contiguous()
