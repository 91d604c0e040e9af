"""The shipped tokenizer ``pivq-fashion`` behaves like a PI-VQ tokenizer on real images.

Its card and registry entry are checked with every shipped tokenizer in test_pretrained.py. Here, on
the 64 real test images kept in tests/data: 32 distinct codes per image (matching quantization), a
decoder that ignores the order of the codes, and interpolation samples that are new images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tokenkit
from tokenkit import hub
from tokenkit.model_card import read_eval_results
from tokenkit.models.pivq import effective_capacity

NAME = "pivq-fashion"
M, K = 32, 512


@pytest.fixture(scope="module")
def tok():
    return tokenkit.load(NAME)


@pytest.fixture(scope="module")
def test64(fashion_test64):
    return fashion_test64


@pytest.fixture(scope="module")
def tokens(tok, test64, one_thread):
    with torch.inference_mode():
        return tok.encode(test64)


def test_matching_set_tokenizer_with_an_initialised_codebook(tok):
    assert tok.config.num_latents == M and tok.quantizer.initialized


def test_card_reports_distinct_codes_only():
    card = (Path(hub.pretrained_entry(NAME).path) / "README.md").read_text(encoding="utf-8")
    metrics = read_eval_results(card)["metrics"]
    assert metrics["distinct_codes_per_image"] == M  # matching: every code of a set is distinct


def test_token_sets_and_reconstructions(tok, test64, tokens):
    with torch.inference_mode():
        one_by_one = torch.cat([tok.encode(x[None]) for x in test64[:8]])
        x_hat = tok.decode(tokens)
    assert tokens.shape == (64, M) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < K
    assert effective_capacity(tokens) == 1.0  # M distinct codes in every image's set
    assert torch.equal(one_by_one, tokens[:8])
    assert x_hat.shape == test64.shape and torch.isfinite(x_hat).all()
    # a real reconstruction: much closer to its own image than to another test image (at 288 bits a
    # blurred garment may lie closer to a similar neighbour now and then: 63 of 64 here)
    own = (x_hat - test64).abs().mean(dim=(1, 2, 3))
    other = (x_hat - test64.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    assert int((own < other).sum()) >= 60
    assert float(own.mean()) < 0.5 * float(other.mean())


def test_decoder_ignores_the_order_of_the_codes(tok, tokens):
    """The shipped decoder gives the same images for any permutation of each real image's set."""
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([t[torch.randperm(M, generator=g)] for t in tokens])
    assert not torch.equal(shuffled, tokens)
    with torch.inference_mode():
        a, b = tok.decode(tokens), tok.decode(shuffled)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_interpolation_samples_are_new_images(tok, test64, tokens):
    """sample() mixes two real images' sets; the result differs from both parents' reconstructions."""
    refs = tokens[:2]
    with torch.inference_mode():
        parents = tok.decode(refs)
        sample_tokens = tok.sample_tokens(8, refs, parents=2, generator=torch.Generator().manual_seed(1))
        samples = tok.decode(sample_tokens)
        again = tok.sample(8, refs, parents=2, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (8, 1, 28, 28) and torch.equal(samples, again)
    union = set(refs.flatten().tolist())
    for codes, image in zip(sample_tokens, samples, strict=True):
        assert len(set(codes.tolist())) == M and set(codes.tolist()) <= union
        assert set(codes.tolist()) not in (set(refs[0].tolist()), set(refs[1].tolist()))
        for parent in parents:  # a new image: mean |difference| 0.25-0.67 here, parents 0.86 apart
            assert (image - parent).abs().mean() > 0.1


def test_interpolation_walks_from_one_image_to_the_other(tok, test64):
    with torch.inference_mode():
        path = tok.interpolate(test64[0], test64[1], steps=5, generator=torch.Generator().manual_seed(2))
        ends = tok.decode(tok.encode(test64[:2]))
    assert path.shape == (5, 1, 28, 28)
    assert torch.allclose(path[0], ends[0], atol=1e-5) and torch.allclose(path[-1], ends[1], atol=1e-5)
    middle = path[2]
    assert (middle - ends[0]).abs().mean() > 0.1 and (middle - ends[1]).abs().mean() > 0.1
    # each step moves away from a and towards b
    to_a = [float((p - ends[0]).abs().mean()) for p in path]
    to_b = [float((p - ends[1]).abs().mean()) for p in path]
    assert to_a == sorted(to_a) and to_b == sorted(to_b, reverse=True)
