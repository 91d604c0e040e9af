"""Nearest-neighbour code search: ``argmin_k ||x - c_k||^2`` without an N x K allocation per call.

``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``; the ``||x||^2`` term does not change the argmin, so
each row tile is one ``addmm(|c|^2, x, c^T, alpha=-2)`` followed by ``argmin``. Rows are processed
in tiles of at most ``tile_bytes`` (16 MB on CPU, where large fresh allocations page-fault and halve
throughput; see shared/reference/performance-measurements.md B.4), written into one reused buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor

CPU_TILE_BYTES = 16 * 2**20
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
        raise ValueError(f"nearest_code expects (N, D) and (K, D), got {tuple(x.shape)}, {tuple(codebook.shape)}")
    x = x.float()
    codebook = codebook.float()
    if codebook_sq is None:
        codebook_sq = codebook.square().sum(1)
    n, k = x.shape[0], codebook.shape[0]
    rows = _rows_per_tile(k, x.device, tile_bytes)
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    buf = torch.empty(min(rows, n), k, dtype=torch.float32, device=x.device)
    codes_t = codebook.t()
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        tile = buf[: stop - start]
        torch.addmm(codebook_sq, x[start:stop], codes_t, beta=1.0, alpha=-2.0, out=tile)
        torch.argmin(tile, dim=1, out=out[start:stop])
    return out


def squared_distances_to(x: Tensor, codebook: Tensor) -> Tensor:
    """Full ``(N, K)`` squared distances (for small problems, soft assignments and tests)."""
    x = x.float()
    codebook = codebook.float()
    d = torch.addmm(codebook.square().sum(1), x, codebook.t(), alpha=-2.0)
    return (d + x.square().sum(1, keepdim=True)).clamp_min(0.0)
