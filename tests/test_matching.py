"""Matching quantization: distinct codes per sample at the optimal total distance, masks, delayed
initialisation, EMA updates, and the ``distinct_per_sample`` statistic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.optimize import linear_sum_assignment

from tokenkit.ops.kmeans import kmeans_consistent
from tokenkit.ops.nearest import nearest_code
from tokenkit.quantizers import create
from tokenkit.quantizers.matching import MatchingConfig, MatchingQuantizer, distinct_per_sample

REGIMES = {"well-spread": 1.0, "contended": 0.1}


def make(**kw) -> MatchingQuantizer:
    torch.manual_seed(0)
    return MatchingQuantizer(**{"dim": 8, "codebook_size": 40, "init_steps": 0, **kw})


def latents(*shape: int, spread: float = 1.0, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * spread


def optimal_distance(z: torch.Tensor, codebook: torch.Tensor) -> np.ndarray:
    """Per sample, scipy's minimal total squared distance over injective assignments."""
    out = []
    for sample in z.reshape(-1, z.shape[-2], z.shape[-1]).double():
        d = torch.cdist(sample, codebook.double()).square().numpy()
        rows, cols = linear_sum_assignment(d)
        out.append(d[rows, cols].sum())
    return np.array(out)


def achieved_distance(z: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
    diff = z.double() - codebook.double()[indices]
    return diff.square().sum(-1).reshape(-1, z.shape[-2]).sum(1).numpy()


@pytest.mark.parametrize("solver", ["lapx", "scipy", "auction"])
@pytest.mark.parametrize("regime", list(REGIMES))
def test_distinct_codes_at_the_optimal_total_distance(solver: str, regime: str) -> None:
    q = make(solver=solver).eval()
    z = latents(2, 3, 20, 8, spread=REGIMES[regime])  # two leading dims: 6 samples of 20 latents
    with torch.no_grad():
        out = q(z)
    assert tuple(out.indices.shape) == (2, 3, 20)
    for sample in out.indices.reshape(6, 20):
        assert sample.unique().numel() == 20, "a sample's latents must take distinct codes"
    codebook = q.codebook()
    np.testing.assert_allclose(achieved_distance(z, codebook, out.indices), optimal_distance(z, codebook),
                               rtol=1e-5)
    torch.testing.assert_close(out.quantized, codebook[out.indices])
    assert float(out.stats["distinct_per_sample"]) == 1.0
    assert torch.equal(q.encode(z), out.indices)


def test_matching_differs_from_nearest_when_latents_compete() -> None:
    q = make().eval()
    z = latents(4, 20, 8, spread=0.1)
    codebook = q.codebook()
    nearest = nearest_code(z.reshape(-1, 8), codebook).reshape(4, 20)
    assert float(distinct_per_sample(nearest)) < 0.5  # contended latents all want the same few codes
    indices = q.encode(z)
    assert float(distinct_per_sample(indices)) == 1.0
    # and matching pays more distance than the (infeasible) nearest choice, never less
    assert (achieved_distance(z, codebook, indices) >= achieved_distance(z, codebook, nearest) - 1e-6).all()


def test_more_latents_than_codes_is_a_clear_error() -> None:
    q = make(codebook_size=16)
    with pytest.raises(ValueError, match="codebook_size >= 20"):
        q(latents(2, 20, 8))
    with pytest.raises(ValueError, match="codebook_size >= 20"):
        q.encode(latents(2, 20, 8))


def test_bad_config_errors() -> None:
    with pytest.raises(ValueError, match="codebook_update"):
        MatchingConfig(codebook_update="adam")
    with pytest.raises(ValueError, match="solver"):
        MatchingConfig(solver="greedy")


def test_mask_assigns_only_valid_rows_and_gives_padding_its_nearest_code() -> None:
    q = make().eval()
    z = latents(3, 20, 8, spread=0.1, seed=2)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[0, 12:] = False
    mask[2, 5:] = False
    with torch.no_grad():
        out = q(z, mask)
    codebook = q.codebook()
    for b in range(3):
        valid = int(mask[b].sum())
        alone = q.encode(z[b : b + 1, :valid])
        assert torch.equal(out.indices[b, :valid], alone[0]), "valid rows: the optimum of the cut problem"
        assert out.indices[b, :valid].unique().numel() == valid
        padded = z[b, valid:]
        assert torch.equal(out.indices[b, valid:], nearest_code(padded, codebook))
    # padded positions add nothing to the loss
    with torch.no_grad():
        shifted = z.clone()
        shifted[~mask] += 5.0
        assert torch.allclose(q(shifted, mask).loss, out.loss)


def test_straight_through_and_vq_vae_losses() -> None:
    q = make(beta=0.25).train()
    z = latents(2, 10, 8).requires_grad_(True)
    out = q(z)
    e = q.codebook()[out.indices]
    mse = (z.detach() - e).square().mean()
    torch.testing.assert_close(out.loss.detach(), 1.25 * mse)  # codebook + beta * commitment
    w = torch.randn(2, 10, 8)
    (out.quantized * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # identity gradient through the quantizer
    q.zero_grad()
    z.grad = None
    out = q(z)
    out.loss.backward()
    assert q.embedding.grad is not None and q.embedding.grad.abs().sum() > 0


def test_delayed_initialisation_passes_through_then_fits_kmeans() -> None:
    q = make(init_steps=3, codebook_size=32, kmeans_iters=5).train()
    batches = [latents(4, 16, 8, seed=10 + i) * 3.0 + 5.0 for i in range(3)]  # far from the N(0, I) start
    start = q.codebook()
    for batch in batches[:2]:
        out = q(batch)
        assert torch.equal(out.quantized, batch), "warm-up forwards pass the latents through"
        assert float(out.loss) == 0.0
        assert torch.equal(q.codebook(), start)
    assert not q.initialized
    out = q(batches[2])
    assert q.initialized and int(q.warmup_steps_done) == 3
    expected = kmeans_consistent(torch.cat([b.reshape(-1, 8) for b in batches]), 32, iters=5, seed=0)
    torch.testing.assert_close(q.codebook(), expected)
    assert not torch.equal(out.quantized, batches[2])
    # the fitted codes sit among the latents: far closer than the N(0, I) start codebook
    before = (batches[2].reshape(-1, 1, 8) - start).square().sum(-1).amin(1).mean()
    assert float(out.stats["commitment"]) * 8 < 0.25 * float(before)
    # the state survives a state_dict round trip: a fresh instance does not warm up again
    fresh = make(init_steps=3, codebook_size=32).train()
    fresh.load_state_dict(q.state_dict())
    assert fresh.initialized and torch.equal(fresh.codebook(), q.codebook())


def test_ema_codebook_moves_to_its_assigned_latents() -> None:
    q = make(codebook_update="ema", decay=0.0, codebook_size=24).train()
    z = latents(3, 24, 8, seed=4)  # N == K: every code gets exactly one latent per sample
    out = q(z)
    assert not any(p.requires_grad for p in q.parameters())
    flat_z, flat_i = z.reshape(-1, 8), out.indices.reshape(-1)
    for k in range(24):
        torch.testing.assert_close(q.embedding[k], flat_z[flat_i == k].mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss, 0.25 * out.stats["commitment"])


def test_distinct_per_sample_statistic() -> None:
    indices = torch.tensor([[1, 1, 2, 3], [4, 4, 4, 4]])
    assert float(distinct_per_sample(indices)) == pytest.approx((3 / 4 + 1 / 4) / 2)
    mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
    assert float(distinct_per_sample(indices, mask)) == pytest.approx((1.0 + 0.5) / 2)


def test_registered_and_built_by_name() -> None:
    q = create("matching", dim=4, codebook_size=8, solver="scipy")
    assert isinstance(q, MatchingQuantizer) and q.codebook_size == 8 and q.dim == 4


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # identical start on both ranks, as DDP would broadcast
        q = MatchingQuantizer(dim=4, codebook_size=16, init_steps=2, codebook_update="ema", kmeans_iters=3)
        q.train()
        for step in range(4):
            z = latents(3, 8, 4, seed=100 * rank + step) + rank  # different data on each rank
            mask = torch.ones(3, 8, dtype=torch.bool)
            mask[0, 8 - 2 * rank - 1 :] = False  # and different numbers of valid latents
            q(z, mask)
        state = {"codebook": q.codebook(), "cluster_size": q.cluster_size.clone()}
        save_file(state, f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_with_identical_codebooks(tmp_path) -> None:
    """Delayed k-means init and EMA updates agree across ranks that see different data."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])
    assert torch.equal(ranks[0]["cluster_size"], ranks[1]["cluster_size"])
    start = MatchingQuantizer(dim=4, codebook_size=16).codebook()
    assert not torch.allclose(ranks[0]["codebook"], start), "the codebook was fitted and updated"


def test_empty_batches() -> None:
    q = make().eval()
    assert tuple(q(torch.zeros(0, 3, 8)).indices.shape) == (0, 3)
    assert tuple(q.encode(torch.zeros(2, 0, 8)).shape) == (2, 0)


@pytest.mark.parametrize("regime", list(REGIMES))
def test_large_codebooks_take_the_sparse_path_with_the_same_optimum_and_masks(regime: str) -> None:
    # K >= 256: the default solver makes cost tiles and certifies candidate lists (tokenkit.ops.
    # sparse_assignment); it must give the dense solver's optimum, masks included, and train
    q = make(codebook_size=300).train()
    dense = make(codebook_size=300, solver="lapx").train()
    z = latents(5, 48, 8, spread=REGIMES[regime]).requires_grad_(True)
    mask = torch.ones(5, 48, dtype=torch.bool)
    mask[2, 30:] = False
    out, ref = q(z, mask=mask), dense(z.detach(), mask=mask)
    for row, valid in zip(out.indices, mask, strict=True):
        assert row[valid].unique().numel() == int(valid.sum())
    valid_z = z.detach()
    np.testing.assert_allclose(
        achieved_distance(valid_z[[0, 1, 3, 4]], q.codebook(), out.indices[[0, 1, 3, 4]]),
        optimal_distance(valid_z[[0, 1, 3, 4]], q.codebook()),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        achieved_distance(valid_z[2:3, :30], q.codebook(), out.indices[2:3, :30]),
        achieved_distance(valid_z[2:3, :30], q.codebook(), ref.indices[2:3, :30]),
        rtol=1e-5,
    )
    (out.quantized.sum() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert float(out.stats["distinct_per_sample"]) == 1.0
