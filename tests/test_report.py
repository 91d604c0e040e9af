"""benchmarks/report.py end to end at a tiny size: comparison, capacity, AR prior, PRDC, markdown, PNGs.

Inception features cost about 0.2 s per image on one thread, too slow here: the PRDC path runs on
flattened pixels through the same ``run_prdc`` / ``prdc`` code (the full run uses Inception).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ar_prior  # noqa: E402
import report  # noqa: E402

import tokenkit  # noqa: E402


def pixels(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).double()


@pytest.fixture(scope="module")
def tiny_report(fashion_test64, one_thread, tmp_path_factory) -> tuple[report.Report, Path]:
    images = fashion_test64
    args = report.comparison_args(20, fit_images=32)
    comparison = report.run_comparison(["nearest", "fsq"], args, images, images[:32], progress=False)

    pivq = tokenkit.load("pivq-fashion")
    cap = report.run_capacity(pivq, images[:32])
    sets = report.capacity.interpolation_sets(pivq, images, 24, 2, 0)
    vq = tokenkit.load("vq-fashion")
    ar, ar_images = report.run_ar_prior(
        vq, images, images[48:], 24, 30, {"depth": 1, "width": 32}, progress=False
    )
    sets["ar_samples"] = ar_images
    prdc = report.run_prdc(sets, pixels, progress=False)

    out = tmp_path_factory.mktemp("report")
    result = report.Report(
        machine=report.machine_info(),
        command="pytest tests/test_report.py",
        comparison=comparison,
        comparison_setup={"steps": 20, "batch": args.batch, "test_images": 32},
        capacity=cap,
        capacity_setup={"name": "pivq-fashion", "images": 32, "num_latents": 32, "codebook_size": 512},
        prdc=prdc,
        prdc_setup={"num": 24, "parents": 2},
        ar=ar,
        seconds={"total": 1.0},
        figures=["images/report.png", "images/report-samples.png"],
    )
    report.plot_report(result, out / "images" / "report.png")
    groups = {"real": sets["held_out"], "PI-VQ": sets["samples"], "AR": sets["ar_samples"]}
    report.plot_samples(groups, out / "images" / "report-samples.png")
    report.write_markdown(result, out / "report.md")
    return result, out


def test_numbers_in_range(tiny_report):
    result, _ = tiny_report
    assert [r["quantizer"] for r in result.comparison] == ["nearest", "fsq"]
    for row in result.comparison:
        assert math.isfinite(row["psnr"]) and row["psnr"] > 0
        assert 0 < row["cvu"] <= 1
        assert 1 <= row["perplexity"] <= row["codes"] + 1e-6
        assert row["ms"] > 0
    assert result.capacity["matching"]["capacity"] == pytest.approx(1.0)
    assert result.capacity["ratio"]["capacity"] >= 1.0
    assert set(result.prdc) == {"references", "reconstructions", "samples", "ar_samples"}
    for row in result.prdc.values():
        assert all(row[k] >= 0 for k in report.PRDC_KEYS)
    assert result.prdc["references"]["coverage"] > 0  # real vs real covers something
    assert 0 < result.ar["train_bits"] < result.ar["first_bits"]


def test_markdown_has_tables(tiny_report):
    result, out = tiny_report
    text = (out / "report.md").read_text()
    assert text.startswith("# tokenkit benchmark report")
    assert f"- Date: {result.machine['date']}" in text
    assert "1 torch thread(s)" in text
    for heading in ("## 1. Quantizers", "## 2. Effective capacity", "## 3. Precision / recall"):
        assert heading in text
    assert re.search(r"^\| nearest \| 1024 \| 10\.00 \| \d+\.\d\d \|", text, re.M)
    assert re.search(r"^\| fsq \| 1000 \| 9\.97 \|", text, re.M)
    assert "**ratio matching / nearest**" in text
    assert "| VQ + AR prior samples |" in text
    assert "nan" not in text.lower()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_pngs_decode(tiny_report):
    from PIL import Image

    _, out = tiny_report
    for name in ("report.png", "report-samples.png"):
        with Image.open(out / "images" / name) as im:
            im.load()
            assert im.format == "PNG" and im.width > 100 and im.height > 50


def test_ar_prior_loss_falls(one_thread):
    g = torch.Generator().manual_seed(0)
    # sequences with structure to learn: each token repeats the previous one plus one (mod K)
    start = torch.randint(16, (256, 1), generator=g)
    tokens = (start + torch.arange(10)) % 16
    prior = ar_prior.TokenPrior(ar_prior.PriorConfig(vocab_size=16, seq_len=10, width=32, depth=1, heads=2))
    before = ar_prior.nll_bits(prior, tokens)
    losses = ar_prior.train_prior(prior, tokens, steps=60, batch_size=32, lr=3e-3, progress=False)
    after = ar_prior.nll_bits(prior, tokens)
    assert after < before - 1.0 and losses[-1] < losses[0]
    samples = prior.sample(5, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (5, 10) and samples.dtype == torch.long
    assert 0 <= int(samples.min()) and int(samples.max()) < 16


def test_tile_layout():
    images = torch.linspace(-1, 1, 3).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    grid = report.tile(images, cols=2)
    assert grid.shape == (4, 4)
    assert float(grid[0, 0]) == 0.0 and float(grid[0, 2]) == 0.5 and float(grid[2, 0]) == 1.0
    assert float(grid[2, 2]) == 1.0  # empty cell: white
