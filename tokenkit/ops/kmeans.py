"""k-means++ seeding (Arthur & Vassilvitskii 2007) and Lloyd iterations, batched with the NN kernel.

Used for EMA's k-means codebook initialisation, VP-VAE's post-training codebook, and matching
quantization's delayed initialisation. Under torch.distributed the result is computed on rank 0 and
broadcast, so every rank ends with the same codebook.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenkit.ops import distributed
from tokenkit.ops.nearest import nearest_code


@torch.no_grad()
def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Pick ``k`` rows of ``x`` ``(N, D)``: the first uniformly, each next with probability ∝ D(x)^2."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means++ needs at least one data point")
    x = x.float()
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    centers = [x[first]]
    closest = (x - x[first]).square().sum(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: repeat with uniform picks
            idx = int(torch.randint(n, (1,), generator=generator, device="cpu"))
        else:
            idx = int(torch.multinomial((closest / total).cpu(), 1, generator=generator))
        centers.append(x[idx])
        closest = torch.minimum(closest, (x - x[idx]).square().sum(1))
    return torch.stack(centers)


@torch.no_grad()
def kmeans(
    x: Tensor,
    k: int,
    iters: int = 10,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on ``x`` ``(N, D)``. Returns ``(centroids (k, D), assignments (N,))``.

    Empty clusters keep their previous centroid. Seeded by k-means++ unless ``init`` is given.
    """
    x = x.float()
    centroids = kmeans_plusplus(x, k, generator) if init is None else init.float().clone()
    assign = nearest_code(x, centroids)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
        new_assign = nearest_code(x, centroids)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centroids, assign


@torch.no_grad()
def kmeans_consistent(x: Tensor, k: int, iters: int = 10, seed: int = 0) -> Tensor:
    """k-means over the data of *all* ranks, identical on every rank (gather, fit on rank 0, broadcast).

    Every rank must pass the same number of rows.
    """
    data = distributed.all_gather_cat(x.float())
    g = torch.Generator().manual_seed(seed)
    centroids, _ = kmeans(data, k, iters=iters, generator=g)
    return distributed.broadcast(centroids.contiguous())
