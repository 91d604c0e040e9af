"""Matching quantization: each sample's latents take *distinct* codes by optimal bipartite matching.

From PI-VQ (arXiv 2604.01843), whose public abstract states the idea: the latents of one image form
a set with no position, so nearest-neighbour VQ, which lets several latents of a set take the same
code, loses capacity (a set cannot tell duplicates apart). Matching quantization instead assigns the
N latents ``z_1..z_N`` of a sample to N distinct entries of the codebook ``e_1..e_K`` (N <= K) so
that the total squared distance is minimal. The paper's method section was not available; the
equations below are our design (see docs/pivq.md and DESIGN.md §4).

- Assignment: ``sigma* = argmin_{sigma injective} sum_i ||z_i - e_sigma(i)||^2``. Per row the
  ``||z_i||^2`` term is constant, so the cost matrix is
  ``C_ik = ||e_k||^2 - 2 z_i . e_k`` (GEMMs), solved exactly by
  :func:`tokenkit.ops.assignment.assign_codes` (on CPU: certified candidate lists, tile by tile,
  with lapx for what they cannot certify; on GPU: a certified auction).
- ``z_q,i = e_sigma*(i)``, straight-through gradients (Bengio et al. 2013), and the VQ-VAE loss
  (van den Oord et al. 2017, Eq. 3): ``||sg[z] - z_q||^2 + beta ||z - sg[z_q]||^2``; or, with
  ``codebook_update="ema"``, only the commitment term and the EMA updates of the VQ-VAE appendix
  (``N_k <- g N_k + (1-g) n_k``, ``m_k <- g m_k + (1-g) sum z``, ``e_k = m_k / N_k``), whose batch
  statistics are summed over ranks.
- Delayed initialisation: during the first ``init_steps`` training forwards the latents pass
  through unquantized (the encoder and decoder train as an autoencoder) while a sample of the valid
  latents is kept; the last warm-up forward sets the codebook to k-means centroids of those latents
  (:func:`tokenkit.ops.kmeans.kmeans_consistent`, identical on every rank) and quantizes with it.
  ``init_steps=1`` is k-means on the first training batch; ``init_steps=0`` keeps the N(0, I) start.
- Masks: padded positions get a constant cost row, which leaves the valid rows' optimal assignment
  unchanged (any leftover code serves a padded row at the same cost), then take their nearest code
  as index; they add nothing to the loss, the statistics or the codebook updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tokenkit.ops import distributed
from tokenkit.ops.assignment import BACKENDS, assign_codes
from tokenkit.ops.kmeans import kmeans_consistent
from tokenkit.ops.nearest import nearest_code
from tokenkit.quantizers.base import (
    Quantizer,
    QuantizerConfig,
    QuantizerOutput,
    masked_mean,
    straight_through,
    usage_stats,
)

CODEBOOK_UPDATES = ("loss", "ema")


@dataclass
class MatchingConfig(QuantizerConfig):
    dim: int = 64
    codebook_size: int = 1024
    beta: float = 0.25  # commitment weight (VQ-VAE Eq. 3)
    codebook_update: str = "loss"  # "loss": codebook loss by gradient; "ema": EMA cluster updates
    decay: float = 0.99  # EMA decay gamma (codebook_update="ema")
    epsilon: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    init_steps: int = 1  # delayed init: k-means after this many training forwards (0: no data init)
    init_samples: int = 65536  # latents kept during the warm-up for the k-means
    kmeans_iters: int = 10
    kmeans_seed: int = 0
    solver: str = "auto"  # assignment backend: "auto", "sparse", "lapx", "scipy", "auction"
    solver_threads: int = 0  # host solver threads (0: os.cpu_count())

    def __post_init__(self) -> None:
        if self.dim < 1 or self.codebook_size < 1:
            raise ValueError(f"dim and codebook_size must be positive, got {self.dim}, {self.codebook_size}")
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(
                f"codebook_update must be one of {CODEBOOK_UPDATES}, got {self.codebook_update!r}"
            )
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {self.decay}")
        if self.init_steps < 0 or self.init_samples < 1:
            raise ValueError(
                f"init_steps must be >= 0 and init_samples >= 1, got {self.init_steps}, {self.init_samples}"
            )
        if self.solver_threads < 0:
            raise ValueError(f"solver_threads must be >= 0 (0 = all cores), got {self.solver_threads}")
        if self.solver not in BACKENDS:
            raise ValueError(f"solver must be one of {BACKENDS}, got {self.solver!r}")


class MatchingQuantizer(Quantizer):
    """PI-VQ matching quantization: distinct codes per sample by exact assignment, straight-through."""

    Config = MatchingConfig
    description = (
        "PI-VQ matching quantization: per-sample optimal bipartite matching to distinct codes "
        "(arXiv 2604.01843; exact batched assignment)"
    )

    def __init__(self, config: MatchingConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        c = self.config
        embedding = torch.randn(c.codebook_size, c.dim)
        if c.codebook_update == "loss":
            self.embedding = nn.Parameter(embedding)
        else:
            self.register_buffer("embedding", embedding)  # e_k
            self.register_buffer("cluster_size", torch.ones(c.codebook_size))  # N_k
            self.register_buffer("embed_sum", embedding.clone())  # m_k = N_k e_k
        self.register_buffer("warmup_steps_done", torch.tensor(0, dtype=torch.long))
        self._warmup_latents: list[Tensor] = []  # kept only until the delayed init (not state)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def initialized(self) -> bool:
        """True once the delayed initialisation ran (always true with ``init_steps=0``)."""
        return int(self.warmup_steps_done) >= self.config.init_steps

    def codebook(self) -> Tensor:
        return self.embedding.detach().clone()

    def _decode(self, indices: Tensor) -> Tensor:
        return self.embedding[indices]

    # -- the assignment ------------------------------------------------------------------------
    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        """``sigma*`` for every sample of ``z (..., N, D)``: distinct codes, minimal total distance."""
        n = z.shape[-2]
        if n > self.codebook_size:
            raise ValueError(
                f"matching quantization gives each of the {n} latents of a sample a distinct code, "
                f"so it needs codebook_size >= {n}, got {self.codebook_size}; enlarge the codebook or "
                f"use fewer latents per sample"
            )
        if z.numel() == 0:
            return torch.empty(z.shape[:-1], dtype=torch.long, device=z.device)
        e = self.embedding.detach()
        batch = z.detach().reshape(-1, n, self.dim)
        flat_mask = None if mask is None else mask.reshape(-1, n)
        # C_ik = |e_k|^2 - 2 z_i . e_k; padded rows get a constant cost and take leftover codes
        indices = assign_codes(
            batch, e, flat_mask, self.config.solver, threads=self.config.solver_threads or None
        )
        if flat_mask is not None and not bool(flat_mask.all()):
            padded = ~flat_mask
            indices[padded] = nearest_code(batch[padded], e)
        return indices.reshape(z.shape[:-1])

    # -- forward -------------------------------------------------------------------------------
    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        warming_up = self.training and not self.initialized
        if warming_up:
            self._collect(z, mask)
        indices = self._encode(z, mask)
        if warming_up and not self.initialized:  # still warming up: pass the latents through
            stats = self._stats(indices, mask)
            return QuantizerOutput(quantized=z, indices=indices, loss=z.new_zeros(()), stats=stats)
        e = self.embedding[indices]
        commitment_loss = masked_mean((z - e.detach()).square(), mask)
        if self.config.codebook_update == "loss":
            loss = masked_mean((e - z.detach()).square(), mask) + self.config.beta * commitment_loss
        else:
            loss = self.config.beta * commitment_loss
            if self.training:
                self._ema_update(z, indices, mask)
        stats = self._stats(indices, mask)
        stats["commitment"] = commitment_loss.detach()
        return QuantizerOutput(quantized=straight_through(z, e), indices=indices, loss=loss, stats=stats)

    def _stats(self, indices: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        stats = usage_stats(indices, self.codebook_size, mask)
        stats["distinct_per_sample"] = distinct_per_sample(indices, mask)
        return stats

    # -- delayed initialisation ----------------------------------------------------------------
    @torch.no_grad()
    def _collect(self, z: Tensor, mask: Tensor | None) -> None:
        """Keep a random sample of this batch's valid latents; on the last warm-up step, run k-means."""
        valid = z.detach().reshape(-1, self.dim) if mask is None else z.detach()[mask]
        per_step = -(-self.config.init_samples // max(self.config.init_steps, 1))
        if valid.shape[0] > per_step:
            valid = valid[torch.randperm(valid.shape[0], device=valid.device)[:per_step]]
        self._warmup_latents.append(valid.clone())
        self.warmup_steps_done += 1
        if self.initialized:
            self._kmeans_init(torch.cat(self._warmup_latents))
            self._warmup_latents = []

    @torch.no_grad()
    def _kmeans_init(self, data: Tensor) -> None:
        """Codebook = k-means centroids of the warm-up latents of every rank (identical on all ranks)."""
        rows = torch.tensor([data.shape[0]], dtype=torch.float32, device=data.device)
        n = int(distributed.all_gather_cat(rows).min())  # kmeans_consistent needs equal rows per rank
        if n == 0:
            self.warmup_steps_done -= 1  # no valid latent on some rank yet: try again next step
            return
        c = self.config
        centroids = kmeans_consistent(data[:n], c.codebook_size, iters=c.kmeans_iters, seed=c.kmeans_seed)
        self.embedding.copy_(centroids)
        if c.codebook_update == "ema":
            counts = torch.bincount(nearest_code(data[:n], centroids), minlength=c.codebook_size).float()
            counts = distributed.all_reduce_sum(counts).clamp_min(1.0)
            self.cluster_size.copy_(counts)
            self.embed_sum.copy_(centroids * counts[:, None])

    # -- EMA codebook (codebook_update="ema") ----------------------------------------------------
    @torch.no_grad()
    def _ema_update(self, z: Tensor, indices: Tensor, mask: Tensor | None) -> None:
        k, d = self.codebook_size, self.dim
        valid = z.detach().reshape(-1, d) if mask is None else z.detach()[mask]
        valid_indices = indices.reshape(-1) if mask is None else indices[mask]
        stats = torch.zeros(k, d + 1, device=z.device)  # [sum_i z_k,i | n_k], one all-reduce
        stats[:, :d].index_add_(0, valid_indices, valid)
        stats[:, d] = torch.bincount(valid_indices, minlength=k).float()
        distributed.all_reduce_sum(stats)
        gamma, eps = self.config.decay, self.config.epsilon
        self.cluster_size.mul_(gamma).add_(stats[:, d], alpha=1 - gamma)
        self.embed_sum.mul_(gamma).add_(stats[:, :d], alpha=1 - gamma)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + eps) / (total + k * eps) * total
        self.embedding.copy_(self.embed_sum / smoothed[:, None])


def distinct_per_sample(indices: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over samples of (distinct codes among a sample's valid positions) / (its valid positions).

    ``indices (..., N)``; 1.0 when no sample repeats a code (always, for matching quantization).
    """
    with torch.no_grad():
        n = indices.shape[-1]
        if indices.numel() == 0:
            return torch.ones((), device=indices.device)
        flat = indices.reshape(-1, n)
        valid = torch.ones_like(flat, dtype=torch.bool) if mask is None else mask.reshape(-1, n)
        ordered = torch.where(valid, flat, torch.full_like(flat, -1)).sort(dim=1).values
        new = torch.ones_like(ordered, dtype=torch.bool)
        new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        distinct = (new & (ordered >= 0)).sum(1).float()
        count = valid.sum(1).float()
        has = count > 0
        if not bool(has.any()):
            return torch.ones((), device=indices.device)
        return (distinct[has] / count[has]).mean()
