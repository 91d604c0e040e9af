"""EMAQuantizer against hand computations: EMA update (Eqs. 6-8), Laplace smoothing, dead codes, k-means."""

import pytest
import torch

from tokenkit.quantizers.ema import EMAConfig, EMAQuantizer


def make(codebook: list[list[float]], **config) -> EMAQuantizer:
    """An EMA quantizer with a given codebook, N_k = 1 and m_k = e_k (what a fresh one starts with)."""
    cb = torch.tensor(codebook)
    defaults = dict(dim=cb.shape[1], codebook_size=cb.shape[0], kmeans_init=False, dead_code_threshold=0.0)
    vq = EMAQuantizer(**{**defaults, **config})
    vq.embedding.copy_(cb)
    vq.embed_sum.copy_(cb)
    return vq


def smoothed(n: torch.Tensor, eps: float) -> torch.Tensor:
    total = n.sum()
    return (n + eps) / (total + len(n) * eps) * total


def test_one_update_matches_hand_computation():
    vq = make([[0.0, 0.0], [10.0, 10.0]], decay=0.9, epsilon=1e-5)
    z = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [9.0, 12.0]]])  # 3 vectors to code 0, 1 to code 1
    vq.train()
    out = vq(z)
    assert out.indices.tolist() == [[0, 0, 0, 1]]
    # Eq. 6: N = 0.9 * 1 + 0.1 * n ; Eq. 7: m = 0.9 * e + 0.1 * sum(z)
    n_expected = torch.tensor([0.9 + 0.1 * 3, 0.9 + 0.1 * 1])
    m_expected = torch.tensor([[0.1 * 4.0, 0.1 * 3.0], [0.9 * 10 + 0.1 * 9, 0.9 * 10 + 0.1 * 12]])
    assert torch.allclose(vq.cluster_size, n_expected)
    assert torch.allclose(vq.embed_sum, m_expected)
    e_expected = m_expected / smoothed(n_expected, 1e-5)[:, None]  # Eq. 8 with Laplace smoothing
    assert torch.allclose(vq.embedding, e_expected)
    assert vq.embedding[0].tolist() == pytest.approx([0.4 / 1.2, 0.3 / 1.2], rel=1e-4)
    # the quantized output and the loss use the codebook the indices were chosen with
    assert torch.allclose(out.quantized, torch.tensor([[[0.0, 0.0]] * 3 + [[10.0, 10.0]]]))
    commitment = (1 + 4 + 9 + 1 + 1 + 4) / 8
    assert out.loss.item() == pytest.approx(0.25 * commitment)
    assert out.stats["commitment"].item() == pytest.approx(commitment)


def test_codes_move_to_the_means_of_their_vectors():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-5.0, 0.0, 1.0], [5.0, 2.0, -1.0]])
    vq = make((centers + 1.5).tolist(), decay=0.8)
    z = (centers.repeat_interleave(64, 0) + 0.3 * torch.randn(128, 3, generator=g))[None]
    means = torch.stack([z[0, :64].mean(0), z[0, 64:].mean(0)])
    distances = [(vq.embedding - means).norm(dim=1)]
    for _ in range(30):
        vq(z)
        distances.append((vq.embedding - means).norm(dim=1))
    distances = torch.stack(distances)
    assert torch.all(distances[1:] < distances[:-1])  # every step brings each code closer
    assert torch.allclose(vq.embedding, means, atol=1e-2)  # gamma^30 of the start is left


def test_laplace_smoothing_formula():
    vq = make([[0.0], [1.0], [2.0]], epsilon=0.5)
    vq.cluster_size.copy_(torch.tensor([0.0, 2.0, 8.0]))
    # n = 10, K eps = 1.5: N' = (N + 0.5) / 11.5 * 10
    expected = torch.tensor([0.5, 2.5, 8.5]) / 11.5 * 10
    assert torch.allclose(vq.smoothed_cluster_size(), expected)
    assert vq.smoothed_cluster_size().sum().item() == pytest.approx(10.0)  # smoothing keeps the total


def test_dead_code_is_reseeded_from_the_batch():
    torch.manual_seed(0)
    codebook = [[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [1000.0, 1000.0]]  # the last code is never used
    vq = make(codebook, dead_code_threshold=1.0)
    g = torch.Generator().manual_seed(1)
    z = (torch.tensor(codebook[:3]).repeat(10, 1) + 0.1 * torch.randn(30, 2, generator=g))[None]
    out = vq(z)
    # N = 0.99 * 1 + 0.01 * 10 >= 1 for the used codes; 0.99 < 1 for the unused one
    assert out.stats["replaced"].item() == 1.0
    assert (z[0] == vq.embedding[3]).all(dim=1).any()  # re-seeded with one of the batch's latents
    assert vq.cluster_size[3].item() == 1.0  # restarts at the threshold
    assert torch.equal(vq.embed_sum[3], vq.embedding[3])
    assert out.indices.max().item() < 3


def test_no_replacement_when_disabled():
    vq = make([[0.0, 0.0], [1000.0, 1000.0]], dead_code_threshold=0.0)
    for _ in range(5):
        out = vq(torch.randn(1, 20, 2))
    assert out.stats["replaced"].item() == 0.0
    assert vq.cluster_size[1].item() == pytest.approx(0.99**5)
    # e_1 = m_1 / N_1' only shrinks by the smoothing; it is not re-seeded
    assert vq.embedding[1, 0].item() > 900.0


def test_eval_mode_changes_no_buffer():
    vq = EMAQuantizer(dim=4, codebook_size=8, dead_code_threshold=5.0)  # k-means init on, would re-seed
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()
    z = torch.randn(2, 16, 4)
    out = vq(z)
    vq.encode(z)
    for key, value in vq.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not vq.initialized.item()
    assert out.stats["replaced"].item() == 0.0
    assert torch.allclose(out.quantized, vq.decode(vq.encode(z)), atol=1e-6)


def test_kmeans_init_puts_codes_on_cluster_centres():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, -10.0]])
    z = centres.repeat_interleave(100, 0) + 0.1 * torch.randn(400, 2, generator=g)
    z = z[torch.randperm(400, generator=g)].reshape(4, 100, 2)
    vq = EMAQuantizer(dim=2, codebook_size=4)
    assert not vq.initialized.item()
    out = vq(z)
    assert vq.initialized.item()
    distances = torch.cdist(centres, vq.embedding)
    assert distances.min(dim=1).values.max().item() < 0.05  # a code on every centre
    assert sorted(out.indices.flatten().bincount(minlength=4).tolist()) == [100, 100, 100, 100]
    assert torch.allclose(vq.cluster_size, torch.full((4,), 100.0))  # N_k starts at the cluster counts
    assert out.stats["perplexity"].item() == pytest.approx(4.0)
    assert out.stats["replaced"].item() == 0.0


def test_masked_positions_do_not_update_the_codebook():
    cb = [[0.0, 0.0], [4.0, 4.0]]
    z = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [50.0, 50.0], [-9.0, 0.0]]])
    mask = torch.tensor([[True, True, False, False]])
    masked, plain = make(cb), make(cb)
    out_masked = masked(z, mask)
    out_plain = plain(z[:, :2])
    for name in ("embedding", "cluster_size", "embed_sum"):
        assert torch.equal(getattr(masked, name), getattr(plain, name)), name
    assert out_masked.loss.item() == pytest.approx(out_plain.loss.item())
    assert out_masked.stats["usage"].item() == out_plain.stats["usage"].item() == 1.0


def test_gradient_is_straight_through_and_codebook_is_buffers():
    vq = make([[0.0, 0.0], [4.0, 4.0]])
    assert list(vq.parameters()) == []
    assert set(vq.state_dict()) == {"embedding", "cluster_size", "embed_sum", "initialized"}
    z = torch.tensor([[[1.0, 0.0], [3.0, 4.0]]], requires_grad=True)
    upstream = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    (vq(z).quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="decay"):
        EMAConfig(decay=1.0)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        EMAConfig(dead_code_threshold=-1.0)
