"""VP-VAE vector perturbation: the kNN kernel, the operator T (Eq. 3-9), L_norm, the queue, the
post-training codebook, eta calibration and consistency across ranks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tokenkit.ops.knn import KNNIndex, knn_distances
from tokenkit.quantizers.fsp import FSPQuantizer, uniform_centroids
from tokenkit.quantizers.vp import (
    VPQuantizer,
    acceptance_probability,
    estimate_eta,
    moment_loss,
    neighbours_per_code,
    perturb,
    scale_radius,
    uniform_ball,
)


def sorted_distances(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Reference: all distances by cdist, sorted per row (float64)."""
    return torch.cdist(x.double(), bank.double()).sort(dim=1).values


# -- kNN kernel ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["tiled", "kdtree"])
def test_knn_distances_match_sorted_cdist(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    bank, x = torch.randn(700, 4, generator=g), torch.randn(90, 4, generator=g)
    ranks = [1, 8, 64]
    # tiny tiles force many tiles (and a partial last one) through the tiled path
    got = knn_distances(x, bank, ranks, method=method, tile_bytes=4 * 700 * 7)
    want = sorted_distances(x, bank)[:, [r - 1 for r in ranks]]
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_knn_index_reused_and_rank_order_kept() -> None:
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(300, 3, generator=g)
    index = KNNIndex(bank)
    assert index.method == "kdtree"  # CPU, d <= 16
    x = torch.randn(20, 3, generator=g)
    swapped = index.query(x, [16, 2])
    want = sorted_distances(x, bank)
    torch.testing.assert_close(swapped[:, 0].double(), want[:, 15], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swapped[:, 1].double(), want[:, 1], atol=1e-5, rtol=1e-5)
    # a query point that sits in the bank has distance 0 to its first neighbour
    assert float(index.query(bank[:5], 1).abs().max()) < 1e-6


def test_knn_bad_input_names_the_problem() -> None:
    bank = torch.randn(10, 2)
    with pytest.raises(ValueError, match="11-th nearest neighbour in a bank of 10"):
        knn_distances(torch.randn(3, 2), bank, 11)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        knn_distances(torch.randn(3, 5), bank, 1)
    with pytest.raises(ValueError, match="unknown k-NN method"):
        KNNIndex(bank, method="faiss")


# -- the operator T ------------------------------------------------------------------------------
def test_uniform_ball_fills_the_ball_uniformly() -> None:
    g = torch.Generator().manual_seed(2)
    radius = torch.full((40000,), 2.0)
    u = uniform_ball(radius, 3, generator=g)
    norms = u.norm(dim=1)
    assert float(norms.max()) <= 2.0 + 1e-5
    # uniform in the 3-ball: P(|u| <= r R) = r^3
    assert abs(float((norms <= 1.0).float().mean()) - 0.125) < 0.01
    assert float(u.mean(0).abs().max()) < 0.03


def direct_mh_alpha(z, z_prop, queue, k, m, eta):
    """Eq. 6 from its parts: alpha = min(1, pi(z') g(z|z') / (pi(z) g(z'|z))) with pi = D_k^-d and g the
    uniform density on the ball of radius eta D_M around the current point (zero outside)."""
    d = z.shape[1]
    dist_z, dist_p = sorted_distances(z, queue), sorted_distances(z_prop, queue)
    pi_z, pi_p = dist_z[:, k - 1] ** -d, dist_p[:, k - 1] ** -d
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
    radius_z, radius_p = eta * dist_z[:, m - 1], eta * dist_p[:, m - 1]
    step = (z_prop - z).double().norm(dim=1)
    g_forward = torch.where(step <= radius_z, 1 / (ball * radius_z**d), torch.zeros_like(step))
    g_reverse = torch.where(step <= radius_p, 1 / (ball * radius_p**d), torch.zeros_like(step))
    return torch.clamp(pi_p * g_reverse / (pi_z * g_forward), max=1.0)


def test_acceptance_matches_direct_metropolis_hastings_ratio() -> None:
    g = torch.Generator().manual_seed(3)
    queue = torch.randn(240, 3, generator=g)
    z = torch.cat([torch.randn(300, 3, generator=g), 2.5 + 0.5 * torch.randn(100, 3, generator=g)])
    k, codebook_size, eta = 4, 12, 1.5
    m = neighbours_per_code(len(queue), codebook_size)
    assert m == 20
    t = perturb(z, queue, codebook_size, eta=eta, k_nn=k, generator=g)
    want = direct_mh_alpha(z, z + t.step, queue, k, m, eta)
    torch.testing.assert_close(t.alpha.double(), want, atol=1e-4, rtol=1e-3)
    # all three regimes occur: rejected by the support check, partial and certain acceptance
    assert int((t.alpha == 0).sum()) > 5 and int((t.alpha == 1).sum()) > 5
    assert int(((t.alpha > 0) & (t.alpha < 1)).sum()) > 5
    # z~ = z' where accepted, z elsewhere; rejected proposals never pass
    torch.testing.assert_close(t.delta, torch.where(t.accepted[:, None], t.step, torch.zeros_like(t.step)))
    assert not bool(t.accepted[t.alpha == 0].any())
    radius = eta * sorted_distances(z, queue)[:, m - 1]
    torch.testing.assert_close(t.radius.double(), radius, atol=1e-4, rtol=1e-4)


def test_acceptance_rate_follows_alpha() -> None:
    """The accept draw is Bernoulli(alpha): over many repeats the rate matches the probability."""
    step = torch.full((20000,), 0.1)
    d_k, d_m = torch.full_like(step, 1.0), torch.full_like(step, 1.0)
    alpha = acceptance_probability(step, d_k, d_m, d_k * 2 ** (1 / 3), d_m, eta=1.0, dim=3)
    torch.testing.assert_close(alpha, torch.full_like(step, 0.5))
    out_of_reach = acceptance_probability(step, d_k, d_m, d_k, torch.full_like(step, 0.05), eta=1.0, dim=3)
    assert float(out_of_reach.max()) == 0.0  # ||z - z'|| = 0.1 > R(z') = 0.05


def test_without_metropolis_hastings_every_proposal_is_taken() -> None:
    g = torch.Generator().manual_seed(4)
    queue, z = torch.randn(200, 2, generator=g), torch.randn(50, 2, generator=g)
    t = perturb(z, queue, 10, metropolis_hastings=False, generator=g)
    assert bool(t.accepted.all())
    torch.testing.assert_close(t.delta, t.step)
    assert bool((t.step.norm(dim=1) <= t.radius + 1e-6).all())


def test_radius_shrinks_as_codebook_grows() -> None:
    g = torch.Generator().manual_seed(5)
    queue, z = torch.randn(4096, 4, generator=g), torch.randn(512, 4, generator=g)
    index = KNNIndex(queue)
    radii = [float(scale_radius(z, index, k).mean()) for k in (16, 64, 256, 1024, 4096)]
    assert all(a > b for a, b in zip(radii, radii[1:], strict=False)), radii
    # K = |S| gives M = 1: the radius is the distance to the nearest queue sample
    nearest = sorted_distances(z, queue)[:, 0]
    assert abs(radii[-1] - float(nearest.mean())) < 1e-4
    # in d dimensions the cell radius scales like K^(-1/d): 4x the codes, about 4^(-1/4) the radius
    assert 0.6 < radii[2] / radii[1] < 0.82


# -- L_norm --------------------------------------------------------------------------------------
def test_moment_loss_values() -> None:
    z = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])  # means 2, 4; unbiased variances 4, 13
    mean_term = (4.0 + 16.0) / 2
    var_term = ((4.0 - 1.0) ** 2 + (13.0 - 1.0) ** 2) / 2
    got = moment_loss(z, None, 0.1, 0.07)
    assert abs(float(got) - (0.1 * mean_term + 0.07 * var_term)) < 1e-4
    summed = moment_loss(z, None, 0.1, 0.07, reduction="sum")
    assert abs(float(summed) - 2 * float(got)) < 1e-4
    # padded rows are ignored; a variance target other than 1 (FSP's Eq. 14)
    padded = torch.cat([z, torch.full((2, 2), 100.0)])[None]
    mask = torch.tensor([[True, True, True, False, False]])
    assert abs(float(moment_loss(padded, mask, 0.1, 0.07)) - float(got)) < 1e-4
    assert abs(float(moment_loss(z, None, 0.0, 1.0, target_var=4.0)) - (0 + 81) / 2) < 1e-4


# -- the quantizer -------------------------------------------------------------------------------
def small_vp(**overrides) -> VPQuantizer:
    config = {"dim": 3, "latent_dim": 3, "codebook_size": 16, "queue_size": 512, "k_nn": 4}
    return VPQuantizer(**{**config, **overrides})


def test_training_forward_is_a_detached_bias_with_norm_loss() -> None:
    torch.manual_seed(6)
    q = small_vp(update_probability=0.0)
    z = torch.randn(4, 32, 3, requires_grad=True)
    out = q(z)
    delta = (out.quantized - z).detach()
    assert float(delta.norm(dim=-1).max()) > 0.05  # some latents moved
    moved = delta.norm(dim=-1) > 0
    assert 0.2 < float(moved.float().mean()) < 1.0  # ... not all: MH rejects some
    assert abs(float(out.stats["accept_rate"]) - float(moved.float().mean())) < 1e-6
    out.quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight through: no codebook/commitment
    torch.testing.assert_close(out.loss, moment_loss(z, None, 0.1, 0.07))


def test_queue_is_fifo_and_ignores_padding() -> None:
    q = small_vp(queue_size=10, update_probability=1.0, k_nn=2)
    batches = [torch.full((1, 4, 3), float(i)) + torch.arange(4.0)[None, :, None] / 10 for i in range(3)]
    for b in batches:
        q(b)
    pushed = torch.cat([b.reshape(-1, 3) for b in batches])  # 12 rows into 10 slots
    assert int(q.queue_ptr) == 2
    torch.testing.assert_close(q.queue[:2], pushed[10:])
    torch.testing.assert_close(q.queue[2:], pushed[2:10])
    mask = torch.tensor([[True, False, True, False]])
    q(torch.full((1, 4, 3), 7.0), mask)
    assert int(q.queue_ptr) == 4
    torch.testing.assert_close(q.queue[2:4], torch.full((2, 3), 7.0))


def test_eval_returns_codebook_vectors_after_fit_codebook() -> None:
    torch.manual_seed(7)
    q = VPQuantizer(dim=6, latent_dim=2, codebook_size=8, queue_size=256, k_nn=4)
    q(torch.randn(8, 16, 6))
    # the paper's codebook: K-means on encoder outputs of the "training set" (3 separated blobs + noise)
    centres = torch.tensor([[4.0, 0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, -4.0]])
    latents = centres[torch.arange(600) % 3] + 0.3 * torch.randn(600, 6)
    codebook_low = q.fit_codebook(latents)
    assert codebook_low.shape == (8, 2) and q.has_codebook
    q.eval()
    z = torch.randn(2, 10, 6)
    out = q(z)
    table = q.codebook()
    torch.testing.assert_close(out.quantized, table[out.indices], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # Eq. 12: nearest code in the low-dimensional space
        low = q.project_in(z).reshape(-1, 2)
    brute = torch.cdist(low, codebook_low).argmin(1).reshape(2, 10)
    assert torch.equal(out.indices, brute)
    torch.testing.assert_close(q.decode(out.indices), out.quantized, atol=1e-5, rtol=1e-5)
    # every code came from the fitted data: each is near one of the projected blob centres
    with torch.no_grad():
        blob_low = q.project_in(centres)
    assert float(torch.cdist(codebook_low, blob_low).min(1).values.max()) < 1.5


def test_fit_codebook_recovers_clusters() -> None:
    q = small_vp(codebook_size=4)
    centres = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0], [0, 3.0, 0], [0, 0, -3.0]])
    g = torch.Generator().manual_seed(8)
    latents = centres.repeat(100, 1) + 0.1 * torch.randn(400, 3, generator=g)
    codebook = q.fit_codebook(latents.reshape(4, 100, 3))
    assert float(torch.cdist(centres, codebook).min(1).values.max()) < 0.05
    with pytest.raises(ValueError, match="at least K=4 latents"):
        q.fit_codebook(latents[:3])
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        q.fit_codebook(torch.randn(10, 5))


def test_codebook_from_queue_and_auto_fit_on_eval() -> None:
    torch.manual_seed(9)
    q = small_vp(update_probability=0.5)
    q(torch.randn(4, 32, 3))
    with pytest.warns(UserWarning, match="fit_codebook"):
        q.eval()
    auto = q.codebook_low.clone()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(2, 8, 3))
    q.encode(torch.randn(2, 8, 3))
    for key, value in q.state_dict().items():  # eval and encode leave the state alone
        assert torch.equal(value, state[key]), key
    # training moves the queue: the automatic codebook is refitted at the next eval()
    q.train()
    q(torch.randn(4, 32, 3) + 5.0)
    with pytest.warns(UserWarning, match="fit_codebook"):
        q.eval()
    refitted = q.codebook_low.clone()
    assert float((refitted - auto).abs().max()) > 0.1
    # the automatic codebook is the code's variant: k-means on the queue
    assert torch.equal(refitted, q.fit_codebook_from_queue())
    # an explicitly fitted codebook stays through more training
    q.train()
    q(torch.randn(4, 32, 3) - 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.eval()
    assert torch.equal(q.codebook_low, refitted)


def test_without_auto_fit_eval_tells_to_call_fit_codebook() -> None:
    q = small_vp(auto_fit=False)
    q(torch.randn(2, 8, 3))
    q.eval()
    with pytest.raises(RuntimeError, match="fit_codebook"):
        q(torch.randn(2, 8, 3))
    with pytest.raises(RuntimeError, match="fit_codebook"):
        q.encode(torch.randn(2, 8, 3))


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="eta"):
        VPQuantizer(eta=0.0)
    with pytest.raises(ValueError, match="k_nn"):
        VPQuantizer(latent_dim=2, codebook_size=2, queue_size=4, k_nn=8)
    with pytest.raises(ValueError, match="knn_method"):
        VPQuantizer(knn_method="annoy")


def test_estimate_eta_matches_proposal_length_to_quantization_error() -> None:
    eta = estimate_eta(latent_dim=2, codebook_size=16, queue_size=1024, num_queries=4000)
    assert 0.7 < eta < 1.5  # D_M is about a cell's radius (Eq. 3), so eta is near 1
    # at that eta, T's proposals are as long on average as the K-means codebook's error
    g = torch.Generator().manual_seed(10)
    queue, z = torch.randn(1024, 2, generator=g), torch.randn(4000, 2, generator=g)
    from tokenkit.ops.kmeans import kmeans

    codebook, _ = kmeans(queue, 16, iters=20, generator=g)
    error = float(torch.cdist(z, codebook).min(1).values.mean())
    proposed = float(perturb(z, queue, 16, eta=eta, k_nn=4, generator=g).step.norm(dim=1).mean())
    assert abs(proposed / error - 1) < 0.05


# -- torch.distributed: 2 CPU processes (gloo) ----------------------------------------------------
def _ddp_worker(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # different data and Bernoulli draws on each rank
        q = small_vp(update_probability=0.5)
        q(torch.randn(2, 16, 3) + 10 * rank)
        latents = torch.randn(40 + 10 * rank, 3) + 3 * rank  # ranks hold different numbers of rows
        codebook = q.fit_codebook(latents)
        q2 = small_vp()
        q2.eval()  # auto fit on the (initial) queue
        # FSP's Lloyd-Max refit sums bins over ranks (checked here to share the process group)
        fsp = FSPQuantizer(levels=[4, 3], output="unit")
        fsp.fit_centroids(torch.randn(100 + 50 * rank, 2) + rank)
        results[rank] = (q.queue.clone(), int(q.queue_ptr), codebook, q2.codebook_low.clone(),
                         fsp.centroids.clone())
    finally:
        dist.destroy_process_group()


def test_queue_codebook_and_fsp_centroids_agree_across_ranks(tmp_path) -> None:
    manager = mp.Manager()
    results = manager.dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    (queue0, ptr0, cb0, auto0, fsp0), (queue1, ptr1, cb1, auto1, fsp1) = results[0], results[1]
    assert torch.equal(queue0, queue1) and ptr0 == ptr1
    assert ptr0 > 16  # both ranks' samples went in (about 16 of 64 tokens)
    pushed = queue0[:ptr0]
    assert bool((pushed[:, 0] > 5).any()) and bool((pushed[:, 0] < 5).any())  # rank 1's are shifted by 10
    assert torch.equal(cb0, cb1) and torch.equal(auto0, auto1)
    assert bool((cb0.mean(1) > 1.5).any()) and bool((cb0.mean(1) < 1.5).any())  # fitted on both ranks' data
    assert torch.equal(fsp0, fsp1)
    assert not torch.equal(fsp0, uniform_centroids([4, 3]))
