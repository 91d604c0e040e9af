"""Nearest-neighbour code search: ``argmin_k ||x - c_k||^2`` without an N x K allocation per call.

``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``; the ``||x||^2`` term does not change the argmin. The
other two terms come out of ONE plain GEMM on augmented operands, ``[x, 1] @ [-2c, |c|^2]^T``, which
costs the same as ``x @ c^T`` (an ``addmm`` with a broadcast bias costs ~35% more on CPU). The row
minimum is taken with ``torch.min(..., dim=1)``, whose CPU kernel is ~3x faster than ``argmin``.
Rows are processed in tiles of at most ``tile_bytes`` (2 MB on CPU: large fresh allocations
page-fault and halve throughput, see shared/reference/performance-measurements.md B.4, and small
tiles keep the min pass in cache), written into one reused buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor

CPU_TILE_BYTES = 2 * 2**20
CUDA_TILE_BYTES = 512 * 2**20


def _rows_per_tile(num_codes: int, device: torch.device, tile_bytes: int | None) -> int:
    budget = tile_bytes or (CUDA_TILE_BYTES if device.type == "cuda" else CPU_TILE_BYTES)
    return max(1, budget // (4 * num_codes))


@torch.no_grad()
def nearest_code(
    x: Tensor,
    codebook: Tensor,
    codebook_sq: Tensor | None = None,
    tile_bytes: int | None = None,
) -> Tensor:
    """Index of the nearest code (squared Euclidean) for each row of ``x``.

    x: ``(N, D)`` float32; codebook: ``(K, D)``; codebook_sq: optional precomputed ``|c|^2`` ``(K,)``.
    Returns a ``LongTensor (N,)``.
    """
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"nearest_code expects (N, D) and (K, D), got {tuple(x.shape)}, {tuple(codebook.shape)}"
        )
    x = x.float()
    codebook = codebook.float()
    n, k = x.shape[0], codebook.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    codes_aug = augmented_codebook(codebook, codebook_sq)
    rows = min(_rows_per_tile(k, x.device, tile_bytes), n)
    x_aug = torch.ones(rows, x.shape[1] + 1, dtype=torch.float32, device=x.device)
    scores = torch.empty(rows, k, dtype=torch.float32, device=x.device)
    best = torch.empty(rows, dtype=torch.float32, device=x.device)
    for start in range(0, n, rows):
        m = min(rows, n - start)
        x_aug[:m, :-1].copy_(x[start : start + m])
        torch.mm(x_aug[:m], codes_aug, out=scores[:m])
        torch.min(scores[:m], dim=1, out=(best[:m], out[start : start + m]))
    return out


def augmented_codebook(codebook: Tensor, codebook_sq: Tensor | None = None) -> Tensor:
    """``[-2c, |c|^2]^T``, ``(D + 1, K)`` float32, so that ``[x, 1] @`` it is ``|c_k|^2 - 2 x . c_k``
    (``codebook_sq``: a precomputed ``|c|^2``)."""
    codebook = codebook.float()
    if codebook_sq is None:
        codebook_sq = codebook.square().sum(1)
    return torch.cat([codebook * -2.0, codebook_sq[:, None].float()], dim=1).t().contiguous()


def squared_distances_to(x: Tensor, codebook: Tensor) -> Tensor:
    """Full ``(N, K)`` squared distances (for small problems, soft assignments and tests)."""
    x = x.float()
    codebook = codebook.float()
    d = torch.addmm(codebook.square().sum(1), x, codebook.t(), alpha=-2.0)
    return (d + x.square().sum(1, keepdim=True)).clamp_min(0.0)
