"""Nearest-neighbour vector quantization, VQ-VAE (van den Oord et al. 2017, "Neural Discrete
Representation Learning").

For a latent ``z_e(x)`` and codebook ``e_1..e_K``:

- Eq. 1: ``k = argmin_j ||z_e(x) - e_j||_2``, ``z_q(x) = e_k``;
- straight-through estimator: the decoder's gradient at ``z_q`` is copied to ``z_e``;
- Eq. 3: ``L = ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2`` (codebook loss + commitment loss;
  the reconstruction term belongs to the caller). ``beta = 0.25`` in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
class NearestConfig(QuantizerConfig):
    dim: int = 64
    codebook_size: int = 1024
    beta: float = 0.25  # commitment weight (Eq. 3)


class NearestQuantizer(Quantizer):
    """VQ-VAE: nearest code, codebook + commitment losses, straight-through gradients."""

    Config = NearestConfig
    description = "VQ-VAE: nearest code, codebook + commitment loss, straight-through (van den Oord 2017)"

    def __init__(self, config: NearestConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        k = self.config.codebook_size
        self.embedding = nn.Parameter(torch.empty(k, self.config.dim).uniform_(-1.0 / k, 1.0 / k))

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def dim(self) -> int:
        return self.config.dim

    def codebook(self) -> Tensor:
        return self.embedding.detach()

    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        flat = z.reshape(-1, self.dim)
        return nearest_code(flat, self.embedding.detach()).reshape(z.shape[:-1])

    def _decode(self, indices: Tensor) -> Tensor:
        return self.embedding[indices]

    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        indices = self._encode(z, mask)  # Eq. 1
        e = self.embedding[indices]
        codebook_loss = masked_mean((e - z.detach()).square(), mask)
        commitment_loss = masked_mean((z - e.detach()).square(), mask)
        stats = usage_stats(indices, self.codebook_size, mask)
        stats["commitment"] = commitment_loss.detach()
        return QuantizerOutput(
            quantized=straight_through(z, e),
            indices=indices,
            loss=codebook_loss + self.config.beta * commitment_loss,  # Eq. 3
            stats=stats,
        )
