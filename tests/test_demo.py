"""The README's main job: examples/demo.py on the shipped pivq-fashion and the sample images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_demo(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_demo_pivq_fashion(tmp_path):
    out = run_demo("--out", str(tmp_path))
    assert "pivq-fashion: PIVQTokenizer + matching (K = 512)" in out
    assert "tokens per image    32" in out and "log2 C(512, 32)" in out
    assert "distinct codes      32.0 per image" in out  # matching: every code of a set is distinct
    psnr = float(re.search(r"PSNR\s+([\d.]+) dB", out).group(1))
    assert 17.0 < psnr < 21.0  # the card's 1000-image PSNR is 18.78 dB
    novelty = float(re.search(r"([\d.]+) mean L1 to the closest original", out).group(1))
    assert novelty > 0.05  # samples are new images, not copies of an original
    image = np.asarray(Image.open(tmp_path / "demo.png"))
    # 4 titled sections: 20 originals, 20 reconstructions, 20 samples (2 rows of 10 each), 1 row of 10
    assert image.shape == (4 * 14 + 7 * 86 + 4 * 2 + 2, 10 * 86 + 2)  # 28 px shown at 84 px


def test_demo_other_tokenizer_has_no_samples(tmp_path):
    out = run_demo("--model", "vq-fashion", "--out", str(tmp_path))
    assert "tokens per image    49 (grid (7, 7)), 441 bits per image" in out and "samples" not in out
    image = np.asarray(Image.open(tmp_path / "demo.png"))
    assert image.shape == (2 * 14 + 4 * 86 + 2 * 2 + 2, 10 * 86 + 2)
