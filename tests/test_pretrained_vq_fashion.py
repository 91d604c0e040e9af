"""The shipped tokenizer ``vq-fashion`` on real images (its card and registry: test_pretrained.py)."""

from __future__ import annotations

import pytest
import torch

import tokenkit


@pytest.fixture(scope="module")
def tok():
    return tokenkit.load("vq-fashion")


def test_tokens_and_reconstructions(tok, fashion_test64, one_thread):
    test64 = fashion_test64
    with torch.inference_mode():
        tokens = tok.encode(test64)
        one_by_one = torch.cat([tok.encode(x[None]) for x in test64[:8]])
        x_hat = tok.decode(tokens)
    assert tokens.shape == (64, 7, 7) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 512
    assert torch.equal(one_by_one, tokens[:8])
    assert x_hat.shape == test64.shape and torch.isfinite(x_hat).all()
    # a real reconstruction: much closer to its own image than to another test image
    own = (x_hat - test64).abs().mean(dim=(1, 2, 3))
    other = (x_hat - test64.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    assert (own < other).all()
