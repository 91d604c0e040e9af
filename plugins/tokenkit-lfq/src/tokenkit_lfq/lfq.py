"""Lookup-free quantization, LFQ (Yu et al. 2023, "Language Model Beats Diffusion -- Tokenizer is Key
to Visual Generation", MAGVIT-v2, Sec. 3.1).

The codebook is implicit: with ``K = 2^b`` codes, a latent is projected to ``b`` dims and each dim
is quantized on its own to ``{-1, +1}``, so no distance to a code table is ever computed:

- ``q(z)_i = sign(z_i)`` (``-1`` for ``z_i <= 0``, ``+1`` for ``z_i > 0``);
- ``Index(z) = sum_i 2^i [z_i > 0]`` (bit ``i`` of the token is dim ``i``);
- entropy penalty ``L_entropy = E[H(q(z))] - H[E(q(z))]``: low per-sample entropy makes each latent
  pick one code confidently, high entropy of the batch-averaged distribution spreads the batch
  over the whole codebook;
- commitment loss ``||z - sg[q(z)]||^2`` and straight-through gradients, as in VQ-VAE.

The soft assignment behind the entropies is ``p(c | z) ∝ exp(-||z - c||^2 / tau)`` over the codes
``c in {-1, +1}^b``. All codes have the same norm, so it factorises over the dims:
``p(c_i = +1 | z) = sigmoid(4 z_i / tau)``. The per-sample entropy is then a sum of ``b`` binary
entropies. The codebook entropy needs the batch mean of all K joint probabilities; as the joint
factorises over two halves of the bits, that mean is one ``(2^(b/2) x M) @ (M x 2^(b/2))`` matrix
product (``entropy="exact"``: ``O(M K)`` flops, ``O(M sqrt(K) + K)`` memory). ``entropy="bitwise"``
sums the per-bit entropies of the batch-averaged bit probabilities instead: an upper bound on the
exact value (equal when the bits are independent over the batch) that costs ``O(M b)``.

Defaults: entropy weight 0.1 (MAGVIT-v2), commitment weight 0.25 (VQ-VAE), ``diversity_gamma = 1``
(the plain difference of the two entropies). ``tau`` is a free choice here (1.0). When ``dim`` is
not ``b``, a linear map takes latents to ``b`` dims and another brings the codes back to ``dim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenkit.quantizers.base import (
    Quantizer,
    QuantizerConfig,
    QuantizerOutput,
    masked_mean,
    straight_through,
    usage_stats,
)
from torch import Tensor, nn

ENTROPY_MODES = ("exact", "bitwise")


@dataclass
class LFQConfig(QuantizerConfig):
    dim: int = 16
    codebook_size: int = 2**16  # K = 2^b; b = log2(K) binary dims
    entropy_weight: float = 0.1
    commitment_weight: float = 0.25
    diversity_gamma: float = 1.0  # weight of the codebook entropy against the per-sample entropy
    tau: float = 1.0  # temperature of the soft assignment behind the entropies
    entropy: str = "exact"  # "exact" codebook entropy or its cheaper "bitwise" upper bound


class LFQuantizer(Quantizer):
    """MAGVIT-v2 lookup-free quantization: sign bits, entropy penalty, commitment, straight-through."""

    Config = LFQConfig
    description = "LFQ lookup-free quantization: sign bits + entropy penalty (Yu et al. 2023, MAGVIT-v2)"

    def __init__(self, config: LFQConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        c = self.config
        k = c.codebook_size
        if k < 2 or k & (k - 1):
            lower = 2 ** max(1, math.floor(math.log2(max(k, 2))))
            raise ValueError(
                f"LFQ needs codebook_size = 2^b (one binary dim per bit), got {k}; use a power of two "
                f"such as {lower} or {2 * lower}"
            )
        if c.entropy not in ENTROPY_MODES:
            raise ValueError(f"entropy must be one of {ENTROPY_MODES}, got {c.entropy!r}")
        if c.tau <= 0:
            raise ValueError(f"tau must be positive, got {c.tau}")
        self.bits = k.bit_length() - 1
        project = c.dim != self.bits
        self.project_in = nn.Linear(c.dim, self.bits) if project else nn.Identity()
        self.project_out = nn.Linear(self.bits, c.dim) if project else nn.Identity()
        self.register_buffer("powers", 2 ** torch.arange(self.bits), persistent=False)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def dim(self) -> int:
        return self.config.dim

    # -- the quantizer -------------------------------------------------------------------------
    def _bits_to_codes(self, indices: Tensor) -> Tensor:
        """Index -> code in {-1, +1}^b (bit i of the index is dim i)."""
        bits = (indices.unsqueeze(-1) & self.powers).ne(0)
        return bits.float() * 2.0 - 1.0

    def _codes_to_indices(self, h: Tensor) -> Tensor:
        """``Index(z) = sum_i 2^i [z_i > 0]``."""
        return ((h > 0).long() * self.powers).sum(-1)

    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        return self._codes_to_indices(self.project_in(z))

    def _decode(self, indices: Tensor) -> Tensor:
        return self.project_out(self._bits_to_codes(indices))

    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        h = self.project_in(z)
        codes = torch.where(h > 0, 1.0, -1.0)  # q(z)_i = sign(z_i)
        indices = self._codes_to_indices(h)
        commitment = masked_mean((h - codes).square(), mask)
        sample_entropy, codebook_entropy = self._entropies(h, mask)
        entropy_penalty = sample_entropy - self.config.diversity_gamma * codebook_entropy
        stats = usage_stats(indices, self.codebook_size, mask)
        stats.update(
            commitment=commitment.detach(),
            sample_entropy=sample_entropy.detach(),
            codebook_entropy=codebook_entropy.detach(),
        )
        return QuantizerOutput(
            quantized=self.project_out(straight_through(h, codes)),
            indices=indices,
            loss=self.config.commitment_weight * commitment + self.config.entropy_weight * entropy_penalty,
            stats=stats,
        )

    # -- the entropy penalty ------------------------------------------------------------------
    def _entropies(self, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """``E[H(q(z))]`` and ``H[E(q(z))]`` over the valid positions, in nats."""
        logits = (4.0 / self.config.tau) * h.reshape(-1, self.bits)
        if mask is not None:
            logits = logits[mask.reshape(-1)]
        if logits.shape[0] == 0:
            zero = h.sum() * 0.0
            return zero, zero
        log_p1, log_p0 = F.logsigmoid(logits), F.logsigmoid(-logits)
        p1 = log_p1.exp()
        sample = -(p1 * log_p1 + (1 - p1) * log_p0).sum(-1).mean()
        if self.config.entropy == "bitwise":
            mean_p1 = p1.mean(0).clamp(1e-12, 1 - 1e-12)
            codebook = -(mean_p1 * mean_p1.log() + (1 - mean_p1) * (1 - mean_p1).log()).sum()
        else:
            # p(c | z) = p(c_low | z) p(c_high | z) over two halves of the bits, so the batch mean of
            # the K joint probabilities is one (2^b_low x M) @ (M x 2^b_high) product: exact, without
            # an (M, K) tensor.
            low = self.bits // 2
            p_low = _code_probabilities(log_p1[:, :low], log_p0[:, :low])
            p_high = _code_probabilities(log_p1[:, low:], log_p0[:, low:])
            mean_p = (p_low.t() @ p_high) / logits.shape[0]
            codebook = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
        return sample, codebook


def _code_probabilities(log_p1: Tensor, log_p0: Tensor) -> Tensor:
    """``(M, 2^n)`` probabilities of every n-bit code from per-bit log-probabilities ``(M, n)``."""
    n, device = log_p1.shape[1], log_p1.device
    on = ((torch.arange(2**n, device=device)[:, None] >> torch.arange(n, device=device)) & 1).float()
    return (log_p1 @ on.t() + log_p0 @ (1.0 - on).t()).exp()
