"""The shipped tokenizer ``fsp-fashion`` on real images (its card and registry: test_pretrained.py).

FSP's codes are points of a fixed 8 x 8 x 8 grid of Lloyd-Max centroids: a token is the mixed-radix
index of three per-dimension levels, and decoding a token first maps it back to those centroids.
"""

from __future__ import annotations

import pytest
import torch

import tokenkit


@pytest.fixture(scope="module")
def tok():
    return tokenkit.load("fsp-fashion")


def test_tokens_and_reconstructions(tok, fashion_test64, one_thread):
    with torch.inference_mode():
        tokens = tok.encode(fashion_test64)
        x_hat = tok.decode(tokens)
    assert tokens.shape == (64, 7, 7) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 512
    own = (x_hat - fashion_test64).abs().mean(dim=(1, 2, 3))
    other = (x_hat - fashion_test64.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    assert (own < other).all()  # a real reconstruction, not an average image


def test_codes_are_the_centroid_grid(tok):
    q = tok.quantizer
    assert q.config.levels == [8, 8, 8] and q.codebook_size == 512
    digits = torch.tensor([[0, 0, 0], [7, 0, 0], [0, 1, 0], [3, 5, 7]])
    indices = (digits * torch.tensor([1, 8, 64])).sum(1)  # first dimension least significant
    centroids = (digits + 0.5) / 8  # Eq. 15, the uniform-prior Lloyd-Max centroids (not refitted)
    with torch.inference_mode():
        codes = q.decode(indices)
        # the pre-activation whose tanh CDF lands on a centroid quantizes to that centroid's code
        again = q.encode(torch.atanh(2 * centroids - 1))
    assert torch.allclose(codes, (centroids - 0.5) * 12**0.5, atol=1e-6)  # output "standardize"
    assert torch.equal(again, indices)
