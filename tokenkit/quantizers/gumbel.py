"""Gumbel-softmax vector quantization (Jang et al. 2017, "Categorical Reparameterization with
Gumbel-Softmax"; Maddison et al. 2017; as used in DALL-E's dVAE, Ramesh et al. 2021).

A linear projection of the latent gives logits over the K codes, ``l = W z + b`` (D -> K). Training
draws a relaxed one-hot sample (Jang et al. Eq. 2)

    y_k = exp((l_k + g_k) / tau) / sum_j exp((l_j + g_j) / tau),   g_k = -log(-log u_k), u_k ~ U(0, 1)

and the quantized vector is the mixture of code embeddings ``z_q = sum_k y_k e_k = y @ E``. As ``tau``
goes to 0 the sample becomes one-hot; DALL-E anneals ``tau`` from 1 to 1/16 (set ``self.temperature``).
With ``hard=True`` the forward value is the code of ``argmax_k y_k`` while gradients follow the soft
sample (straight-through Gumbel-softmax, Jang et al. section 2.2).

The auxiliary loss is the KL divergence from the posterior ``q = softmax(l)`` to the uniform prior
over the K codes (the dVAE's ELBO term), ``KL(q || U) = sum_k q_k log(q_k K)``, averaged over valid
positions and weighted by ``kl_weight``.

In eval mode there is no noise: the code is ``argmax_k l_k`` and the quantized vector is exactly its
embedding, so ``forward`` equals ``decode(encode(z))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenkit.quantizers.base import Quantizer, QuantizerConfig, QuantizerOutput, masked_mean, usage_stats


@dataclass
class GumbelConfig(QuantizerConfig):
    dim: int = 64
    codebook_size: int = 1024
    temperature: float = 1.0  # tau at the start; anneal by setting quantizer.temperature
    hard: bool = False  # straight-through: forward exact code rows, gradients of the soft sample
    kl_weight: float = 5e-4  # weight of KL(q || uniform); taming-transformers' GumbelQuantize default

    def __post_init__(self) -> None:
        if self.dim < 1 or self.codebook_size < 2:
            raise ValueError(
                f"dim must be >= 1 and codebook_size >= 2, got {self.dim}, {self.codebook_size}"
            )
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.kl_weight < 0.0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")


class GumbelQuantizer(Quantizer):
    """Gumbel-softmax VQ: logits from a linear map, relaxed one-hot sample @ codebook, KL to uniform."""

    Config = GumbelConfig
    description = "Gumbel-softmax VQ with KL to a uniform prior, as in DALL-E's dVAE (Jang 2017)"

    def __init__(self, config: GumbelConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        k, d = self.config.codebook_size, self.config.dim
        self.proj = nn.Linear(d, k)  # logits l = W z + b
        self.embedding = nn.Parameter(torch.randn(k, d))  # E, one row per code
        #: tau of the current step; a training loop anneals it (DALL-E: 1 -> 1/16)
        self.temperature = self.config.temperature

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def dim(self) -> int:
        return self.config.dim

    def codebook(self) -> Tensor:
        return self.embedding.detach()

    def logits(self, z: Tensor) -> Tensor:
        """``l = W z + b``, shape ``(..., N, K)``."""
        return self.proj(z)

    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        return self.logits(z).argmax(-1)

    def _decode(self, indices: Tensor) -> Tensor:
        return self.embedding[indices]

    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        logits = self.logits(z)
        if self.training:
            y = self.relaxed_one_hot(logits)  # Eq. 2
            indices = y.argmax(-1)
            mixture = y @ self.embedding
            quantized = self._straight_through(indices, mixture) if self.config.hard else mixture
        else:
            indices = logits.argmax(-1)
            quantized = self.embedding[indices]
            if torch.is_grad_enabled():  # no noise; gradients as in hard mode
                soft = F.softmax(logits / self.temperature, dim=-1)
                quantized = self._straight_through(indices, soft @ self.embedding)
        kl = self.kl_to_uniform(logits, mask)
        stats = usage_stats(indices, self.codebook_size, mask)
        stats["kl"] = kl.detach()
        stats["temperature"] = torch.tensor(float(self.temperature), device=z.device)
        return QuantizerOutput(
            quantized=quantized, indices=indices, loss=self.config.kl_weight * kl, stats=stats
        )

    def relaxed_one_hot(self, logits: Tensor) -> Tensor:
        """A Gumbel-softmax sample ``softmax((l + g) / tau)`` over the last dimension."""
        u = torch.rand_like(logits).clamp(torch.finfo(logits.dtype).tiny, 1.0)
        g = -torch.log(-torch.log(u))
        return F.softmax((logits + g) / self.temperature, dim=-1)

    def _straight_through(self, indices: Tensor, soft: Tensor) -> Tensor:
        """Forward value exactly ``E[indices]``; gradient of ``soft`` (the ``y @ E`` mixture)."""
        return self.embedding[indices] + (soft - soft.detach())

    def kl_to_uniform(self, logits: Tensor, mask: Tensor | None) -> Tensor:
        """``KL(softmax(l) || U(K)) = sum_k q_k (log q_k + log K)``, mean over valid positions."""
        log_q = F.log_softmax(logits, dim=-1)
        kl = (log_q.exp() * (log_q + math.log(self.codebook_size))).sum(-1)
        return masked_mean(kl, mask)
