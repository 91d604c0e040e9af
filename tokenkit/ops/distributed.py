"""torch.distributed helpers that are no-ops in a single process.

Quantizer statistics that must agree across ranks (EMA sums, k-means initialisation, VP queues) go
through these, so one code path serves one process, DDP on CPU (gloo) and on GPU (nccl).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: Tensor) -> Tensor:
    """Average ``t`` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def broadcast(t: Tensor, src: int = 0) -> Tensor:
    """Copy rank ``src``'s ``t`` to every rank in place and return it."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate ``t`` (same shape on every rank) along dim 0 across ranks."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)
