"""NearestQuantizer (VQ-VAE) against hand computations: nearest code, Eq. 3 loss, straight-through."""

import pytest
import torch

from tokenkit.quantizers.nearest import NearestQuantizer

CORNERS = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])


def make_corners(beta: float = 0.25) -> NearestQuantizer:
    vq = NearestQuantizer(dim=2, codebook_size=4, beta=beta)
    with torch.no_grad():
        vq.embedding.copy_(CORNERS)
    return vq


def test_picks_the_code_nearest_to_each_input():
    vq = make_corners()
    z = torch.tensor([[[0.3, -0.2], [3.6, 0.1], [0.4, 4.4], [3.9, 3.8], [2.1, 3.9]]])
    assert vq.encode(z).tolist() == [[0, 1, 2, 3, 3]]


def test_matches_brute_force_cdist_on_random_codebook():
    g = torch.Generator().manual_seed(0)
    vq = NearestQuantizer(dim=16, codebook_size=64)
    with torch.no_grad():
        vq.embedding.copy_(torch.randn(64, 16, generator=g))
    z = torch.randn(3, 100, 16, generator=g)
    expected = torch.cdist(z.reshape(-1, 16), vq.embedding.detach()).argmin(1).reshape(3, 100)
    assert torch.equal(vq.encode(z), expected)
    out = vq(z)
    assert torch.equal(out.indices, expected)
    assert torch.allclose(out.quantized, vq.embedding.detach()[expected], atol=1e-6)


def test_loss_is_codebook_plus_beta_commitment():
    vq = make_corners(beta=0.25)
    z = torch.tensor([[[1.0, 0.0], [4.0, 3.0]]])  # nearest codes (0, 0) and (4, 4): squared errors 1 and 1
    out = vq(z)
    # codebook term = commitment term = mean over the 4 scalars of (e - z)^2 = (1 + 0 + 0 + 1) / 4
    assert out.loss.item() == pytest.approx(0.5 + 0.25 * 0.5)
    assert out.stats["commitment"].item() == pytest.approx(0.5)


def test_gradient_reaches_z_as_identity_and_codebook_through_the_loss():
    vq = make_corners()
    z = torch.tensor([[[1.0, 0.0], [4.0, 3.0]]], requires_grad=True)
    upstream = torch.tensor([[[0.5, -1.0], [2.0, 3.0]]])
    out = vq(z)
    (out.quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # straight through: d quantized / d z = identity
    assert vq.embedding.grad is None or torch.all(vq.embedding.grad == 0)
    z.grad = None
    vq(z).loss.backward()
    # d/dz beta * mean((z - sg e)^2) = 2 beta (z - e) / 4 ; d/de mean((e - sg z)^2) = 2 (e - z) / 4
    diff = z.detach() - torch.tensor([[[0.0, 0.0], [4.0, 4.0]]])
    assert torch.allclose(z.grad, 2 * 0.25 * diff / 4)
    expected_codebook_grad = torch.zeros(4, 2)
    expected_codebook_grad[0] = -2 * diff[0, 0] / 4
    expected_codebook_grad[3] = -2 * diff[0, 1] / 4
    assert torch.allclose(vq.embedding.grad, expected_codebook_grad)


def test_masked_positions_change_neither_loss_nor_stats():
    vq = make_corners()
    z = torch.tensor([[[1.0, 0.0], [4.0, 3.0], [0.2, 3.0]]])
    mask = torch.tensor([[True, True, False]])
    out = vq(z, mask)
    z_other = z.clone()
    z_other[0, 2] = torch.tensor([100.0, -50.0])
    out_other = vq(z_other, mask)
    assert out.loss.item() == pytest.approx(0.5 + 0.25 * 0.5)  # the valid part alone, as above
    assert torch.equal(out.loss, out_other.loss)
    for key in out.stats:
        assert torch.equal(out.stats[key], out_other.stats[key]), key
    assert out.stats["usage"].item() == pytest.approx(2 / 4)  # codes 0 and 3 only
    assert out.stats["perplexity"].item() == pytest.approx(2.0)
    assert out.indices[0, 2].item() == 2  # padded positions still get an index


def test_wrong_last_dimension_is_explained():
    vq = make_corners()
    with pytest.raises(ValueError, match=r"shape \(\.\.\., N, 2\).*got \(1, 3, 5\).*to_channel_last"):
        vq(torch.zeros(1, 3, 5))


def test_nan_input_is_explained():
    vq = make_corners()
    z = torch.zeros(1, 3, 2)
    z[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/inf values"):
        vq(z)
    with pytest.raises(ValueError, match="NaN"):
        vq.encode(z)


def test_out_of_range_indices_are_explained():
    vq = make_corners()
    with pytest.raises(IndexError, match=r"\[0, 4\).*got values in \[0, 4\]"):
        vq.decode(torch.tensor([[0, 4]]))
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        vq.decode(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError, match="integer"):
        vq.decode(torch.tensor([[0.0, 1.0]]))
    assert torch.equal(vq.decode(torch.tensor([[3, 1]])), CORNERS[[3, 1]][None])


def test_all_finite_is_exact_when_the_sum_overflows() -> None:
    from tokenkit.ops import all_finite

    assert all_finite(torch.randn(100))
    assert all_finite(torch.full((4,), 3e38))  # finite values whose sum overflows to inf
    assert all_finite(torch.ones(100_000, dtype=torch.float16))  # fp16 sum overflows too
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf"), -float("inf")]))  # sum is NaN
    assert not all_finite(torch.tensor([2.0, -float("inf")]))
