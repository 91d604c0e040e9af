"""k-nearest-neighbour distances from a bank of vectors (VP-VAE's queue), in bounded memory.

VP-VAE needs, for every latent ``z``, the distances ``D_k(z|S)`` and ``D_M(z|S)`` to its k-th and
M-th nearest neighbours in the queue ``S`` (k a small constant, M = ceil(|S|/K), e.g. 8 and 64).
One top-M query gives both. Two exact backends:

- ``"tiled"``: brute force like :func:`tokenkit.ops.nearest.nearest_code`: query rows in tiles of at
  most ``tile_bytes``, each tile one ``addmm(|s|^2, x, S^T, alpha=-2)`` into a reused buffer, then
  ``topk(M, largest=False)``; ``|x|^2`` is added to the M kept columns only. The GPU path.
- ``"kdtree"``: ``scipy.spatial.cKDTree`` over the bank, queried for ranks ``[k, M]`` on all CPU
  threads. For the low dimensions VP works in (d <= 16) it is about 10x faster than the tiles on
  CPU (65,536 x 4 bank, 6,272 queries, ranks 8 and 64, 2 cores: 54 ms against 500 ms, build
  included; ``python benchmarks/vp_fsp.py --knn-only``).

Build a :class:`KNNIndex` once per bank and query it several times (VP queries ``z`` and ``z'``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from tokenkit.ops.nearest import CPU_TILE_BYTES, CUDA_TILE_BYTES

METHODS = ("auto", "tiled", "kdtree")
KDTREE_MAX_DIM = 16  # above this a kd-tree degrades towards brute force


def _check_ranks(ranks: int | Sequence[int], bank_size: int) -> list[int]:
    ranks = [int(ranks)] if isinstance(ranks, int) else [int(r) for r in ranks]
    if not ranks or min(ranks) < 1:
        raise ValueError(f"neighbour ranks are 1-based and positive, got {ranks}")
    if max(ranks) > bank_size:
        raise ValueError(
            f"cannot find the {max(ranks)}-th nearest neighbour in a bank of {bank_size} vectors; "
            f"use a larger bank (queue) or a smaller rank"
        )
    return ranks


class KNNIndex:
    """Exact k-NN distance queries against a fixed bank ``(S, d)``.

    ``method``: ``"tiled"`` (addmm + topk tiles, any device), ``"kdtree"`` (scipy, CPU) or
    ``"auto"`` (kd-tree for CPU banks with d <= 16, tiles otherwise).
    """

    def __init__(self, bank: Tensor, method: str = "auto", tile_bytes: int | None = None) -> None:
        if bank.dim() != 2 or bank.shape[0] == 0:
            raise ValueError(f"the k-NN bank must be a non-empty (S, d) matrix, got {tuple(bank.shape)}")
        if method not in METHODS:
            raise ValueError(f"unknown k-NN method {method!r}; choose one of {METHODS}")
        if method == "auto":
            cpu_low_dim = bank.device.type == "cpu" and bank.shape[1] <= KDTREE_MAX_DIM
            method = "kdtree" if cpu_low_dim else "tiled"
        self.method = method
        self.bank = bank.detach().float()
        self.tile_bytes = tile_bytes
        if method == "kdtree":
            points = self.bank.cpu().numpy().astype(np.float64)
            self._tree = cKDTree(points, leafsize=32, balanced_tree=False, compact_nodes=False)
        else:
            self._bank_sq = self.bank.square().sum(1)

    def __len__(self) -> int:
        return self.bank.shape[0]

    @torch.no_grad()
    def query(self, x: Tensor, ranks: int | Sequence[int]) -> Tensor:
        """Euclidean distances ``(N, len(ranks))`` from each row of ``x`` to its ``r``-th nearest
        bank vector, for each 1-based rank ``r`` (ties and duplicates count separately)."""
        ranks = _check_ranks(ranks, len(self))
        if x.dim() != 2 or x.shape[1] != self.bank.shape[1]:
            raise ValueError(
                f"k-NN queries must be (N, {self.bank.shape[1]}) to match the bank, got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            return x.new_zeros(0, len(ranks))
        if self.method == "kdtree":
            return self._query_tree(x, ranks)
        return self._query_tiled(x.float(), ranks)

    def _query_tree(self, x: Tensor, ranks: list[int]) -> Tensor:
        queries = x.detach().cpu().numpy().astype(np.float64)
        workers = max(1, torch.get_num_threads())
        dist, _ = self._tree.query(queries, k=sorted(set(ranks)), workers=workers)
        dist = dist.reshape(len(queries), -1)
        columns = [sorted(set(ranks)).index(r) for r in ranks]
        return torch.from_numpy(dist[:, columns]).to(device=x.device, dtype=torch.float32)

    def _query_tiled(self, x: Tensor, ranks: list[int]) -> Tensor:
        n, s = x.shape[0], len(self)
        budget = self.tile_bytes or (CUDA_TILE_BYTES if x.device.type == "cuda" else CPU_TILE_BYTES)
        rows = max(1, min(n, budget // (4 * s)))
        top = max(ranks)
        columns = torch.tensor([r - 1 for r in ranks], device=x.device)
        out = torch.empty(n, len(ranks), device=x.device)
        buf = torch.empty(rows, s, device=x.device)
        bank_t = self.bank.t()
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            tile = buf[: stop - start]
            torch.addmm(self._bank_sq, x[start:stop], bank_t, alpha=-2.0, out=tile)
            kept = torch.topk(tile, top, dim=1, largest=False, sorted=True).values
            out[start:stop] = kept.index_select(1, columns)
        out += x.square().sum(1, keepdim=True)
        return out.clamp_min_(0.0).sqrt_()


def knn_distances(
    x: Tensor,
    bank: Tensor,
    ranks: int | Sequence[int],
    method: str = "auto",
    tile_bytes: int | None = None,
) -> Tensor:
    """One-shot :meth:`KNNIndex.query`: distances ``(N, len(ranks))`` from ``x`` to its
    ``r``-th nearest rows of ``bank`` ``(S, d)`` (Euclidean, exact)."""
    return KNNIndex(bank, method=method, tile_bytes=tile_bytes).query(x, ranks)
