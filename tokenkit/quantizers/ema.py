"""VQ-VAE with exponential-moving-average codebook updates (van den Oord et al. 2017, "Neural Discrete
Representation Learning", appendix A.1; Razavi et al. 2019, "Generating Diverse High-Fidelity Images
with VQ-VAE-2").

Encoding is the nearest code, ``k = argmin_j ||z - e_j||_2`` (Eq. 1), with straight-through gradients.
The codebook is not learned by gradient: for each code ``k``, with ``n_k`` the number of (valid)
latents assigned to it in the batch and ``{z_k,i}`` those latents, every training step does

- Eq. 6: ``N_k <- gamma N_k + (1 - gamma) n_k``                  (EMA cluster size)
- Eq. 7: ``m_k <- gamma m_k + (1 - gamma) sum_i z_k,i``          (EMA cluster sum)
- Eq. 8: ``e_k  = m_k / N_k``

with decay ``gamma = 0.99``. The cluster sizes used in Eq. 8 are Laplace-smoothed so that no code
divides by zero, ``N_k' = (N_k + eps) / (n + K eps) * n`` with ``n = sum_k N_k`` and ``eps = 1e-5``, as
in the authors' Sonnet implementation (the smoothed value is used for the division only; ``N_k``
itself keeps its plain EMA, and there is no zero-debiasing because ``N_k`` and ``m_k`` start non-zero).
The only loss is the commitment term ``beta ||z - sg[e]||^2`` with ``beta = 0.25``. A step's
output and loss use the codebook its indices were chosen with (the update comes after). Without
k-means initialisation the codebook starts small and random with ``N_k = 1``, ``m_k = e_k``.

Two practical additions, both options:

- k-means initialisation: the first training batch is clustered with k-means over the data of every
  rank (:func:`tokenkit.ops.kmeans.kmeans_consistent`); the codebook starts at the centroids, ``N_k``
  at the cluster counts and ``m_k = N_k e_k`` so that Eq. 8 holds from the start.
- dead-code replacement (as in Jukebox, Dhariwal et al. 2020): after the update, a code whose EMA
  cluster size ``N_k`` is below ``dead_code_threshold`` is re-seeded with a random latent of the
  current batch (picked on rank 0 and broadcast), starting from ``N_k = threshold``.

Under torch.distributed the batch statistics ``n_k`` and ``sum_i z_k,i`` are summed over ranks before
Eqs. 6-7, so every rank applies the same update and the codebooks stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenkit.ops import distributed
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


@dataclass
class EMAConfig(QuantizerConfig):
    dim: int = 64
    codebook_size: int = 1024
    beta: float = 0.25  # commitment weight
    decay: float = 0.99  # gamma in Eqs. 6-7
    epsilon: float = 1e-5  # Laplace smoothing of the cluster sizes
    kmeans_init: bool = True  # codebook from k-means on the first training batch
    kmeans_iters: int = 10
    kmeans_seed: int = 0
    dead_code_threshold: float = 1.0  # re-seed codes with N_k below this (0 disables)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.codebook_size < 1:
            raise ValueError(f"dim and codebook_size must be positive, got {self.dim}, {self.codebook_size}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {self.decay}")
        if self.epsilon <= 0.0:
            raise ValueError(f"epsilon (Laplace smoothing) must be positive, got {self.epsilon}")
        if self.dead_code_threshold < 0.0:
            raise ValueError(
                f"dead_code_threshold must be >= 0 (0 disables dead-code replacement), "
                f"got {self.dead_code_threshold}"
            )


class EMAQuantizer(Quantizer):
    """VQ-VAE with an EMA codebook: nearest code, commitment loss, EMA cluster updates (buffers)."""

    Config = EMAConfig
    description = (
        "VQ-VAE with EMA codebook updates, k-means init and dead-code replacement "
        "(van den Oord 2017, Razavi 2019)"
    )

    def __init__(self, config: EMAConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        k, d = self.config.codebook_size, self.config.dim
        embedding = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)
        self.register_buffer("embedding", embedding)  # e_k
        self.register_buffer("cluster_size", torch.ones(k))  # N_k
        self.register_buffer("embed_sum", embedding.clone())  # m_k = N_k e_k
        self.register_buffer("initialized", torch.tensor(not self.config.kmeans_init))

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def dim(self) -> int:
        return self.config.dim

    def codebook(self) -> Tensor:
        return self.embedding.clone()

    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        flat = z.reshape(-1, self.dim)
        return nearest_code(flat, self.embedding).reshape(z.shape[:-1])

    def _decode(self, indices: Tensor) -> Tensor:
        return self.embedding[indices]

    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        valid = self._valid_latents(z, mask)
        if self.training and not bool(self.initialized):
            self._kmeans_init(valid)
        indices = self._encode(z, mask)  # Eq. 1
        e = self.embedding[indices]  # a copy: the update below does not touch it
        commitment_loss = masked_mean((z - e).square(), mask)
        replaced = 0
        if self.training:
            valid_indices = indices.reshape(-1) if mask is None else indices[mask]
            self._ema_update(valid, valid_indices)
            replaced = self._replace_dead_codes(valid)
        stats = usage_stats(indices, self.codebook_size, mask)
        stats["commitment"] = commitment_loss.detach()
        stats["replaced"] = torch.tensor(float(replaced), device=z.device)
        return QuantizerOutput(
            quantized=straight_through(z, e),
            indices=indices,
            loss=self.config.beta * commitment_loss,
            stats=stats,
        )

    # -- the EMA codebook ----------------------------------------------------------------------
    def _valid_latents(self, z: Tensor, mask: Tensor | None) -> Tensor:
        """The ``(n, D)`` detached latents at valid positions: the only ones that update the codebook."""
        z = z.detach()
        return z.reshape(-1, self.dim) if mask is None else z[mask]

    @torch.no_grad()
    def _kmeans_init(self, valid: Tensor) -> None:
        """Codebook = k-means centroids of the batch of every rank; N_k = global cluster counts."""
        rows = torch.tensor([valid.shape[0]], dtype=torch.float32, device=valid.device)
        n = int(distributed.all_gather_cat(rows).min())  # kmeans_consistent needs equal rows per rank
        if n == 0:
            return  # no valid latent on some rank: wait for the next batch
        c = self.config
        centroids = kmeans_consistent(valid[:n], c.codebook_size, iters=c.kmeans_iters, seed=c.kmeans_seed)
        counts = torch.bincount(nearest_code(valid, centroids), minlength=c.codebook_size).float()
        counts = distributed.all_reduce_sum(counts).clamp_min(1.0)  # >= 1 keeps e_k = m_k / N_k defined
        self.embedding.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, valid: Tensor, indices: Tensor) -> None:
        """Eqs. 6-8 with batch statistics summed over ranks first."""
        k, d = self.codebook_size, self.dim
        stats = torch.zeros(k, d + 1, device=valid.device)  # [sum_i z_k,i | n_k], one all-reduce
        stats[:, :d].index_add_(0, indices, valid)
        stats[:, d] = torch.bincount(indices, minlength=k).float()
        distributed.all_reduce_sum(stats)
        gamma = self.config.decay
        self.cluster_size.mul_(gamma).add_(stats[:, d], alpha=1 - gamma)  # Eq. 6
        self.embed_sum.mul_(gamma).add_(stats[:, :d], alpha=1 - gamma)  # Eq. 7
        self.embedding.copy_(self.embed_sum / self.smoothed_cluster_size()[:, None])  # Eq. 8

    def smoothed_cluster_size(self) -> Tensor:
        """Laplace smoothing: ``N_k' = (N_k + eps) / (n + K eps) * n``, ``n = sum_k N_k``."""
        eps, n = self.config.epsilon, self.cluster_size.sum()
        return (self.cluster_size + eps) / (n + self.codebook_size * eps) * n

    @torch.no_grad()
    def _replace_dead_codes(self, valid: Tensor) -> int:
        """Re-seed codes with ``N_k < threshold`` from random latents of rank 0's batch (broadcast)."""
        threshold = self.config.dead_code_threshold
        dead = self.cluster_size < threshold  # identical on every rank: so are the cluster sizes
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        seeds = torch.zeros(n_dead, self.dim + 1, device=valid.device)  # [latent | picked?]
        if distributed.rank() == 0 and valid.shape[0] > 0:
            picks = torch.randint(valid.shape[0], (n_dead,), device=valid.device)
            seeds[:, : self.dim] = valid[picks]
            seeds[:, self.dim] = 1.0
        distributed.broadcast(seeds)
        if seeds[0, self.dim] == 0:
            return 0  # rank 0 had no valid latent in this batch
        self.embedding[dead] = seeds[:, : self.dim]
        self.cluster_size[dead] = threshold
        self.embed_sum[dead] = seeds[:, : self.dim] * threshold
        return n_dead
