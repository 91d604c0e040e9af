"""Pictures for training and evaluation reports, written atomically (temp file, then rename).

- :func:`reconstruction_grid`: originals above, their reconstructions right below (Pillow only);
- :func:`section_grid`: titled sections of images (originals / reconstructions / samples), Pillow only;
- :func:`codebook_usage_plot`: code usage sorted from most to least used, CVU in the title;
- :func:`spectrogram_comparison`: log-magnitude spectrograms of a clip and its reconstruction.

The plots use matplotlib (Agg backend, no display) when it is installed and fall back to a plain
Pillow rendering without text when it is not.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tokenkit.files import atomic_write
from tokenkit.metrics.codes import cvu, perplexity


def _save_image(array: np.ndarray, path: str | os.PathLike) -> Path:
    from PIL import Image

    image = Image.fromarray(array)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _to_uint8(images: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> ``(N, H, W, C)`` uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _enlarged_tiles(images: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> ``(N, H', W', C)`` uint8, enlarged (nearest) to at least 64 px
    so small images can be seen."""
    scale = max(1, math.ceil(64 / max(images.shape[-2:])))
    tiles = _to_uint8(images)
    return tiles.repeat(scale, 1).repeat(scale, 2) if scale > 1 else tiles


def reconstruction_grid(
    originals: Tensor, reconstructions: Tensor, path: str | os.PathLike, nrow: int = 8, pad: int = 2
) -> Path:
    """PNG of image pairs: each row of up to ``nrow`` originals has its reconstructions below it.

    Images are ``(N, C, H, W)`` in [-1, 1] (C = 1 or 3); small images are enlarged (nearest) to
    at least 64 px so they can be seen. Returns the path written.
    """
    if originals.shape != reconstructions.shape or originals.dim() != 4 or originals.shape[1] not in (1, 3):
        raise ValueError(
            "originals and reconstructions must be image batches (N, 1 or 3, H, W) of one shape, got "
            f"{tuple(originals.shape)} and {tuple(reconstructions.shape)}"
        )
    if nrow < 1 or len(originals) == 0:
        raise ValueError(f"need nrow >= 1 and at least one image, got nrow={nrow}, N={len(originals)}")
    a, b = _enlarged_tiles(originals), _enlarged_tiles(reconstructions)
    n, h, w, c = a.shape
    cols, pairs = min(nrow, n), math.ceil(n / nrow)
    grid = np.full((pairs * (2 * h + 3 * pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        row, col = divmod(i, nrow)
        top, left = pad + row * (2 * h + 3 * pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = a[i]
        grid[top + h + pad : top + 2 * h + pad, left : left + w] = b[i]
    return _save_image(grid[..., 0] if c == 1 else grid, path)


def section_grid(
    sections: list[tuple[str, Tensor]], path: str | os.PathLike, nrow: int = 10, pad: int = 2
) -> Path:
    """PNG of titled sections, each a title line above its images ``(N, C, H, W)`` in [-1, 1] in rows
    of ``nrow``; all images share one size and C (1 or 3). Small images are enlarged to >= 64 px.
    Returns the path written (the demo's originals / reconstructions / samples figure)."""
    from PIL import Image, ImageDraw, ImageFont

    if not sections:
        raise ValueError("section_grid needs at least one (title, images) section")
    shapes = {tuple(images.shape[1:]) for _, images in sections}
    if len(shapes) != 1 or any(images.dim() != 4 or len(images) == 0 for _, images in sections):
        raise ValueError(f"every section must hold images (N, C, H, W) of one C, H, W, got shapes {shapes}")
    c = next(iter(shapes))[0]
    if c not in (1, 3) or nrow < 1:
        raise ValueError(f"need 1 or 3 channels and nrow >= 1, got C={c}, nrow={nrow}")
    sections = [(title, _enlarged_tiles(images)) for title, images in sections]
    (h, w), title_h = sections[0][1].shape[1:3], 14
    cols = min(nrow, max(len(images) for _, images in sections))
    heights = [title_h + math.ceil(len(images) / nrow) * (h + pad) + pad for _, images in sections]
    grid = np.full((sum(heights) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    top = 0
    for (_, tiles), height in zip(sections, heights, strict=True):
        for i, tile in enumerate(tiles):
            row, col = divmod(i, nrow)
            y, x = top + title_h + pad + row * (h + pad), pad + col * (w + pad)
            grid[y : y + h, x : x + w] = tile
        top += height
    image = Image.fromarray(grid[..., 0] if c == 1 else grid)
    draw, font, top = ImageDraw.Draw(image), ImageFont.load_default(), 0
    for (title, _), height in zip(sections, heights, strict=True):
        draw.text((pad + 1, top + 2), title, fill=0 if c == 1 else (0, 0, 0), font=font)
        top += height
    return _save_image(np.asarray(image), path)


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None when matplotlib is not installed
    (the pictures here then fall back to plain PIL images)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG (temp file, then rename) and close it."""
    plt = pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def codebook_usage_plot(counts: Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """PNG of each code's share of all tokens, sorted descending; title: CVU, perplexity, codes used."""
    counts = torch.as_tensor(np.asarray(counts)).double().reshape(-1)
    K = counts.numel()
    if K == 0 or counts.sum() <= 0:
        raise ValueError("codebook_usage_plot needs a non-empty histogram with at least one token")
    share = (counts / counts.sum()).sort(descending=True).values.numpy()
    used = int((counts > 0).sum())
    title = (
        f"CVU {cvu(counts, K, counts=True):.3f}   perplexity {perplexity(counts, K, counts=True):.1f}   "
        f"used {used}/{K} codes"
    )
    plt = pyplot()
    if plt is None:
        return _save_image(_bars(share), path)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    if K <= 2048:
        ax.bar(np.arange(K), share, width=1.0, color="#3b6ea5")
    else:  # tens of thousands of bars are slow to draw: the same outline as a filled step curve
        ax.fill_between(np.arange(K), np.maximum(share, 1e-12), 1e-12, step="post", color="#3b6ea5")
        ax.set_ylim(max(share[share > 0].min() / 2, 1e-9), share.max() * 2)
    ax.axhline(1.0 / K, color="#c0392b", lw=1, ls="--", label="uniform 1/K")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, K - 0.5)
    ax.set_xlabel("codes, most used first")
    ax.set_ylabel("share of tokens")
    ax.set_title(title)
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def _bars(values: np.ndarray, height: int = 200) -> np.ndarray:
    """Plain bar chart (no text) for when matplotlib is missing: one column per value, scaled to max."""
    width = max(len(values), 200)
    img = np.full((height, width), 255, np.uint8)
    xs = np.linspace(0, len(values), width, endpoint=False).astype(int)
    tops = (values[xs] / values.max() * (height - 1)).astype(int)
    for x, top in enumerate(tops):
        img[height - 1 - top :, x] = 60
    return img


def log_spectrogram(x: Tensor | np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """``20 log10 |STFT|`` in dB, ``(n_fft // 2 + 1, frames)``, Hann window, from a mono clip."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(-1)
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
    return (20 * torch.log10(spec.abs().clamp_min(1e-5))).numpy()


def spectrogram_comparison(
    orig: Tensor | np.ndarray, recon: Tensor | np.ndarray, path: str | os.PathLike, sr: int = 16000
) -> Path:
    """PNG with the spectrogram of ``orig`` above that of ``recon`` (mono clips, same colour scale)."""
    a, b = log_spectrogram(orig), log_spectrogram(recon)
    vmax = max(a.max(), b.max())
    vmin = vmax - 90.0
    plt = pyplot()
    if plt is None:
        gray = [((np.clip(s, vmin, vmax) - vmin) / 90.0 * 255).astype(np.uint8)[::-1] for s in (a, b)]
        gap = np.full((4, max(g.shape[1] for g in gray)), 255, np.uint8)
        return _save_image(np.concatenate([gray[0], gap[:, : gray[0].shape[1]], gray[1]]), path)
    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for ax, spec, name in zip(axes, (a, b), ("original", "reconstruction"), strict=True):
        seconds = spec.shape[1] * 128 / sr
        im = ax.imshow(
            spec,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=vmin,
            vmax=vmax,
            extent=(0, seconds, 0, sr / 2000),
        )
        ax.set_ylabel("kHz")
        ax.set_title(name)
    axes[-1].set_xlabel("seconds")
    fig.colorbar(im, ax=axes, label="dB")
    return save_figure(fig, path)
