"""How a tokenizer uses its codebook, measured over ALL tokens of a set.

With ``n_k`` the number of tokens that took code ``k`` and ``p_k = n_k / sum_j n_j``:

- entropy          ``H = -sum_k p_k ln p_k`` (nats; ``0 ln 0 = 0``)
- perplexity       ``PPL = exp(H)``: the number of equally used codes with the same entropy
- CVU              ``exp(H) / K``: codebook usage in (0, 1]; 1 = all K codes used equally,
                   1/K = one code only (DESIGN.md 7)
- distinct codes   per item (image or clip): how many different codes its tokens use

Accumulate a whole evaluation set with :class:`CodeUsage`; per-batch numbers are biased low.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..ops.distributed import all_reduce_sum


def _counts(indices_or_counts, K: int, counts: bool | None) -> Tensor:
    if isinstance(indices_or_counts, CodeUsage):
        return indices_or_counts.counts.double()
    t = torch.as_tensor(indices_or_counts)
    as_counts = t.is_floating_point() if counts is None else counts
    if as_counts:
        if t.dim() != 1 or t.numel() != K:
            raise ValueError(f"code counts must be a 1-D tensor of length K={K}, got shape {tuple(t.shape)}")
        if (t < 0).any():
            raise ValueError("code counts must be non-negative")
        return t.double()
    if t.is_floating_point():
        raise ValueError("code indices must be integers; pass counts=True for a histogram of counts")
    return code_counts(t, K).double()


def code_counts(indices: Tensor, K: int, mask: Tensor | None = None) -> Tensor:
    """Histogram ``(K,)`` (int64) of the codes in ``indices``, counting only ``mask``-True positions."""
    if K <= 0:
        raise ValueError(f"codebook size K must be positive, got {K}")
    flat = indices.reshape(-1) if mask is None else indices[mask.expand_as(indices)]
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= K):
        raise ValueError(f"code indices must lie in [0, {K}), got [{int(flat.min())}, {int(flat.max())}]")
    return torch.bincount(flat.long(), minlength=K)


def entropy(indices_or_counts, K: int, counts: bool | None = None) -> float:
    """Entropy (nats) of the code distribution; arguments as in :func:`cvu`."""
    n = _counts(indices_or_counts, K, counts)
    total = n.sum()
    if total <= 0:
        raise ValueError("no tokens to measure code usage on")
    p = n[n > 0] / total
    return float(-(p * p.log()).sum())


def perplexity(indices_or_counts, K: int, counts: bool | None = None) -> float:
    """``exp(entropy)`` of the code distribution: 1 (one code) to K (all codes equally)."""
    return math.exp(entropy(indices_or_counts, K, counts))


def cvu(indices_or_counts, K: int, counts: bool | None = None) -> float:
    """Codebook usage ``exp(H) / K`` in [1/K, 1], over all tokens given.

    ``indices_or_counts``: an integer tensor of code indices (any shape), a float tensor ``(K,)`` of
    counts (or an integer one with ``counts=True``), or a :class:`CodeUsage`.
    """
    return perplexity(indices_or_counts, K, counts) / K


def distinct_codes(indices: Tensor, mask: Tensor | None = None) -> Tensor:
    """Number of distinct codes per item: ``indices`` ``(B, ...)`` -> ``(B,)`` int64."""
    if indices.dim() < 2:
        raise ValueError(f"indices must be (B, ...) with a batch dimension, got shape {tuple(indices.shape)}")
    flat = indices.reshape(indices.shape[0], -1)
    valid = None if mask is None else mask.expand_as(indices).reshape(flat.shape)
    out = []
    for i in range(flat.shape[0]):
        row = flat[i] if valid is None else flat[i][valid[i]]
        out.append(torch.unique(row).numel())
    return torch.tensor(out, dtype=torch.long)


class CodeUsage:
    """Accumulates code counts and distinct-codes-per-item over batches of indices.

    ``usage.add(indices, mask)`` per batch (indices ``(B, ...)``, optional bool mask broadcastable
    to it), then ``usage.cvu()``, ``usage.perplexity()``, ``usage.distinct_per_item()``. Under
    ``torch.distributed`` call ``usage.sync()`` once at the end to sum over ranks.
    """

    def __init__(self, K: int) -> None:
        if K <= 0:
            raise ValueError(f"codebook size K must be positive, got {K}")
        self.K = K
        self.counts = torch.zeros(K, dtype=torch.long)
        self.items = 0
        self.distinct_sum = 0
        self.tokens = 0

    def add(self, indices: Tensor, mask: Tensor | None = None) -> None:
        indices = indices.detach().cpu()
        mask = None if mask is None else mask.detach().cpu().bool()
        batch = code_counts(indices, self.K, mask)
        self.counts += batch
        self.tokens += int(batch.sum())
        self.items += indices.shape[0]
        self.distinct_sum += int(distinct_codes(indices, mask).sum())

    def sync(self) -> None:
        """Sum the accumulated numbers over ranks (a no-op in one process)."""
        packed = torch.cat([self.counts, torch.tensor([self.items, self.distinct_sum, self.tokens])])
        packed = all_reduce_sum(packed)
        self.counts = packed[: self.K].clone()
        self.items, self.distinct_sum, self.tokens = (int(v) for v in packed[self.K :])

    def entropy(self) -> float:
        return entropy(self.counts, self.K, counts=True)

    def perplexity(self) -> float:
        return perplexity(self.counts, self.K, counts=True)

    def cvu(self) -> float:
        return cvu(self.counts, self.K, counts=True)

    def used_fraction(self) -> float:
        """Fraction of the K codes used at least once."""
        return float((self.counts > 0).sum()) / self.K

    def distinct_per_item(self) -> float:
        """Mean number of distinct codes per item (image or clip)."""
        if self.items == 0:
            raise ValueError("no items added to CodeUsage")
        return self.distinct_sum / self.items

    def tokens_per_item(self) -> float:
        if self.items == 0:
            raise ValueError("no items added to CodeUsage")
        return self.tokens / self.items

    def summary(self) -> dict[str, float]:
        return {
            "cvu": self.cvu(),
            "perplexity": self.perplexity(),
            "entropy_nats": self.entropy(),
            "codes_used_fraction": self.used_fraction(),
            "distinct_codes_per_item": self.distinct_per_item(),
            "tokens_per_item": self.tokens_per_item(),
        }
