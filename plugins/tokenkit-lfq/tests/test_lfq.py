"""Tests of the LFQ plugin: tokenkit's conformance kit, then LFQ's own equations on known values."""

from __future__ import annotations

import math

import pytest
import torch
from tokenkit.testing import check_quantizer, quantizer_checks

from tokenkit_lfq import LFQuantizer

CONFIGS = {
    "projected": dict(dim=8, codebook_size=32),
    "unprojected": dict(dim=5, codebook_size=32),
    "bitwise-entropy": dict(dim=8, codebook_size=256, entropy="bitwise"),
}


# -- 1. the conformance kit: what every tokenkit plugin should run -----------------------------
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_conforms_to_the_tokenkit_contract(config: dict) -> None:
    check_quantizer(lambda: LFQuantizer(**config))


@pytest.mark.parametrize("name, check", list(quantizer_checks()))
def test_each_conformance_check(name: str, check) -> None:  # one test per check: clearer failures
    check(lambda: LFQuantizer(dim=6, codebook_size=16), n_tokens=12, batch=3)


def test_registered_under_its_entry_point_when_installed() -> None:
    import importlib.metadata

    import tokenkit.quantizers as tq

    try:
        importlib.metadata.distribution("tokenkit-lfq")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tokenkit-lfq is not installed (pip install ./plugins/tokenkit-lfq)")
    tq.registry.refresh()
    assert "lfq" in tq.available()
    assert tq.get("lfq").__name__ == "LFQuantizer"
    assert tq.create("lfq", dim=4, codebook_size=16).codebook_size == 16


# -- 2. LFQ itself ------------------------------------------------------------------------------
def all_codes(bits: int) -> torch.Tensor:
    """Every code of {-1, +1}^bits, row k the code of index k."""
    k = torch.arange(2**bits)
    return ((k[:, None] >> torch.arange(bits)) & 1).float() * 2 - 1


def test_index_is_sum_of_powers_of_two_over_positive_dims() -> None:
    q = LFQuantizer(dim=4, codebook_size=16).eval()  # dim == log2(K): no projection
    z = torch.tensor([[[0.3, -2.0, 0.1, -0.5], [-1.0, -1.0, -1.0, -1.0], [1.0, 2.0, 3.0, 4.0]]])
    assert q.encode(z).tolist() == [[1 + 4, 0, 15]]
    out = q(z)
    assert torch.equal(out.quantized, torch.sign(z))
    assert torch.equal(q.decode(torch.arange(16)), all_codes(4))
    assert torch.equal(q.encode(all_codes(4)[None]), torch.arange(16)[None])


def test_loss_on_known_latents() -> None:
    """Confident latents covering every code once: sample entropy ~0, codebook entropy = b ln 2."""
    bits = 4
    q = LFQuantizer(dim=bits, codebook_size=2**bits).train()
    z = 5.0 * all_codes(bits)[None]  # (1, 16, 4), one latent per code
    out = q(z)
    assert out.stats["sample_entropy"] < 1e-6
    assert math.isclose(float(out.stats["codebook_entropy"]), bits * math.log(2), rel_tol=1e-5)
    assert math.isclose(float(out.stats["commitment"]), 16.0, rel_tol=1e-6)  # (5 - 1)^2
    expected = 0.25 * 16.0 + 0.1 * (0.0 - bits * math.log(2))
    assert math.isclose(float(out.loss), expected, rel_tol=1e-5)
    assert float(out.stats["usage"]) == 1.0
    assert math.isclose(float(out.stats["perplexity"]), 16.0, rel_tol=1e-5)


def test_exact_codebook_entropy_matches_the_full_joint_distribution() -> None:
    torch.manual_seed(1)
    bits, tau = 5, 2.0
    q = LFQuantizer(dim=bits, codebook_size=2**bits, tau=tau)
    z = torch.randn(3, 7, bits)
    # brute force: p(c | z) ∝ exp(-||z - c||^2 / tau) over all 32 codes, averaged over the batch
    distances = torch.cdist(z.reshape(-1, bits).double(), all_codes(bits).double()).square()
    mean_p = torch.softmax(-distances / tau, dim=1).mean(0)
    expected = -(mean_p * mean_p.log()).sum()
    per_sample = -(torch.softmax(-distances / tau, 1) * torch.log_softmax(-distances / tau, 1)).sum(1).mean()
    stats = q(z).stats
    assert math.isclose(float(stats["codebook_entropy"]), float(expected), rel_tol=1e-5)
    assert math.isclose(float(stats["sample_entropy"]), float(per_sample), rel_tol=1e-5)


def test_exact_entropy_scales_to_a_large_codebook() -> None:
    """K = 2^18 (MAGVIT-v2's size) without an (M, K) tensor: the two halves are (M, 512) each."""
    bits = 18
    q = LFQuantizer(dim=bits, codebook_size=2**bits)
    picked = torch.randperm(2**bits, generator=torch.Generator().manual_seed(0))[:64]
    z = 5.0 * (((picked[:, None] >> torch.arange(bits)) & 1) * 2.0 - 1.0)[None]  # 64 distinct codes
    out = q(z)
    assert torch.equal(out.indices[0], picked)
    assert math.isclose(float(out.stats["codebook_entropy"]), math.log(64), rel_tol=1e-5)
    assert float(out.stats["usage"]) == 64 / 2**bits


def test_undecided_latents_have_maximal_sample_entropy() -> None:
    q = LFQuantizer(dim=3, codebook_size=8).train()
    out = q(torch.zeros(2, 5, 3))
    assert math.isclose(float(out.stats["sample_entropy"]), 3 * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(out.stats["codebook_entropy"]), 3 * math.log(2), rel_tol=1e-6)


def test_bitwise_entropy_bounds_the_exact_one() -> None:
    torch.manual_seed(0)
    z = torch.randn(4, 16, 5) + torch.tensor([0.5, -0.2, 0.0, 0.3, 0.0])
    z[..., 1] = z[..., 0]  # two perfectly dependent bits: the bound is strict
    exact = LFQuantizer(dim=5, codebook_size=32, entropy="exact")(z).stats
    bitwise = LFQuantizer(dim=5, codebook_size=32, entropy="bitwise")(z).stats
    assert torch.allclose(exact["sample_entropy"], bitwise["sample_entropy"])
    assert exact["codebook_entropy"] < bitwise["codebook_entropy"] - 0.1


def test_entropy_penalty_spreads_a_collapsed_batch() -> None:
    """Gradient descent on the entropy penalty alone takes latents stuck on one code to many codes."""
    torch.manual_seed(0)
    q = LFQuantizer(dim=4, codebook_size=16, commitment_weight=0.0, entropy_weight=1.0).train()
    z = (0.5 + 0.05 * torch.randn(1, 64, 4)).requires_grad_(True)
    start = q(z).stats
    assert float(start["usage"]) == 1 / 16  # every latent on code 15
    opt = torch.optim.SGD([z], lr=2.0)
    for _ in range(80):
        opt.zero_grad()
        q(z).loss.backward()
        opt.step()
    end = q(z).stats
    assert float(end["usage"]) >= 0.75
    assert float(end["codebook_entropy"]) > float(start["codebook_entropy"]) + 0.5


def test_mask_excludes_padding_from_the_penalty() -> None:
    q = LFQuantizer(dim=4, codebook_size=16).train()
    z = 5.0 * all_codes(4)[None]
    padded = torch.cat([z, torch.full((1, 16, 4), 3.0)], dim=1)  # padding all on one code
    mask = torch.arange(32)[None] < 16
    a, b = q(z), q(padded, mask)
    assert torch.allclose(a.loss, b.loss)
    assert torch.allclose(a.stats["codebook_entropy"], b.stats["codebook_entropy"])


def test_bad_config_names_the_fix() -> None:
    with pytest.raises(ValueError, match="power of two such as 16 or 32"):
        LFQuantizer(dim=8, codebook_size=30)
    with pytest.raises(ValueError, match="entropy must be one of"):
        LFQuantizer(dim=8, codebook_size=32, entropy="approx")
