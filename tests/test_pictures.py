"""Pictures: layout of the reconstruction grid, plots written atomically with and without matplotlib."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tokenkit import pictures
from tokenkit.pictures import codebook_usage_plot, reconstruction_grid, section_grid, spectrogram_comparison


def test_reconstruction_grid_layout(tmp_path):
    # 3 gray 8x8 images, each a constant: originals -1, 0, 1 -> 0, 128, 255; reconstructions inverted
    values = torch.tensor([-1.0, 0.0, 1.0])
    a = values.view(3, 1, 1, 1).expand(3, 1, 8, 8)
    path = reconstruction_grid(a, -a, tmp_path / "grid.png", nrow=2, pad=2)
    img = np.asarray(Image.open(path))
    scale, side = 8, 64  # 8 px images are enlarged 8x to 64 px
    assert img.shape == (2 * (2 * side + 3 * 2) + 2, 2 * (side + 2) + 2)
    top, left = 2, 2
    assert img[top, left] == 0 and img[top + side - 1, left + side - 1] == 0  # original 0
    assert img[top + side + 2, left] == 255  # its reconstruction, right below
    assert img[top, left + side + 2] == 128 and img[top + side + 2, left + side + 2] == 128
    row2 = top + 2 * side + 3 * 2
    assert img[row2, left] == 255 and img[row2 + side + 2, left] == 0  # image 3 starts the 2nd pair
    assert img[row2, left + side + 2] == 255  # empty slot stays white
    assert scale * 8 == side
    rgb = reconstruction_grid(torch.zeros(2, 3, 70, 70), torch.zeros(2, 3, 70, 70), tmp_path / "rgb.png")
    assert Image.open(rgb).mode == "RGB" and Image.open(rgb).size == (2 * 72 + 2, 2 * 70 + 3 * 2 + 2)
    with pytest.raises(ValueError, match="of one shape"):
        reconstruction_grid(a, a[:2], tmp_path / "bad.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "rgb.png"]  # no temp files left


def test_section_grid_layout(tmp_path):
    # two sections: 3 black 32x32 images in rows of 2, then 1 white one; 32 px is enlarged to 64
    black, white = -torch.ones(3, 1, 32, 32), torch.ones(1, 1, 32, 32)
    path = section_grid([("first", black), ("second", white)], tmp_path / "grid.png", nrow=2, pad=2)
    img = np.asarray(Image.open(path))
    title, side, pad = 14, 64, 2
    first_h = title + 2 * (side + pad) + pad  # 2 rows of images
    second_h = title + (side + pad) + pad
    assert img.shape == (first_h + second_h + pad, 2 * (side + pad) + pad)
    y0 = title + pad
    assert img[y0, pad] == 0 and img[y0 + side - 1, pad + side - 1] == 0  # image 1
    assert img[y0 + side + pad, pad] == 0 and img[y0 + side + pad, 2 * pad + side] == 255  # 3rd, empty slot
    assert img[first_h + title + pad, pad] == 255  # the white image opens the second section
    assert (img[:title, :] < 128).any() and (img[first_h : first_h + title] < 128).any()  # titles drawn
    with pytest.raises(ValueError, match="one C, H, W"):
        section_grid([("a", black), ("b", torch.zeros(1, 1, 8, 8))], tmp_path / "bad.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


@pytest.mark.parametrize("use_matplotlib", [True, False])
def test_codebook_usage_and_spectrogram_pngs(tmp_path, monkeypatch, use_matplotlib):
    if use_matplotlib:
        pytest.importorskip("matplotlib")
    else:
        monkeypatch.setattr(pictures, "pyplot", lambda: None)
    counts = torch.tensor([50, 30, 0, 20, 0, 0, 1, 1])
    usage = codebook_usage_plot(counts, tmp_path / "usage.png")
    t = torch.arange(16000) / 16000
    clip = 0.5 * torch.sin(2 * torch.pi * 440 * t) * (t < 0.5)
    spec = spectrogram_comparison(clip, 0.9 * clip, tmp_path / "spec.png")
    for path in (usage, spec):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
            pixels = np.asarray(im.convert("L"))
            assert pixels.std() > 5  # something was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.png", "usage.png"]
    with pytest.raises(ValueError, match="at least one token"):
        codebook_usage_plot(torch.zeros(4), tmp_path / "empty.png")


def test_log_spectrogram_peak_at_tone_frequency():
    t = np.arange(16000) / 16000
    spec = pictures.log_spectrogram(np.sin(2 * np.pi * 1000 * t))
    assert spec.shape[0] == 257
    assert abs(int(spec.mean(1).argmax()) - 1000 / (16000 / 512)) <= 1
