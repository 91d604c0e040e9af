"""Finite scalar quantization, FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple").

The latent is projected to ``d = len(levels)`` channels (a linear map, only when ``dim != d``); channel
``i`` is bounded to ``L_i`` values and rounded, so the implied codebook is the grid of
``K = prod_i L_i`` points and there is no codebook to learn and no auxiliary loss:

- bound (section 3): ``f(z) = floor(L/2) tanh(z)``. For even ``L`` the grid is shifted by a half
  step so that rounding still yields exactly ``L`` integers; as in the paper's reference code
  (appendix A.1): ``f(z) = h tanh(z + s) - o`` with ``h = (L - 1)(1 - 1e-3) / 2``, ``o = 1/2`` for even
  ``L`` and ``0`` for odd ``L``, ``s = tan(o / h)``. Its range rounds to ``{-floor(L/2), ..., L - 1 -
  floor(L/2)}``;
- round with the straight-through estimator, ``z_hat = f(z) + sg[round(f(z)) - f(z)]``;
- normalise to ``[-1, 1]`` by dividing by ``floor(L/2)``;
- index (mixed radix): digit ``q_i = round(f(z))_i + floor(L_i/2)`` in ``[0, L_i)``,
  ``index = sum_i q_i prod_{j<i} L_j``; the inverse is ``q_i = (index // prod_{j<i} L_j) mod L_i``;
- project back to ``dim`` channels (again only when ``dim != d``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tokenkit.quantizers.base import (
    Quantizer,
    QuantizerConfig,
    QuantizerOutput,
    mixed_radix_basis,
    straight_through,
    usage_stats,
)

BOUND_EPS = 1e-3  # keeps tanh's range strictly inside the outermost rounding bins


@dataclass
class FSQConfig(QuantizerConfig):
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # L_i per channel, K = prod(levels)
    dim: int | None = None  # input size D; None means len(levels) (no projection)

    def __post_init__(self) -> None:
        self.levels = [int(level) for level in self.levels]
        if not self.levels or min(self.levels) < 2:
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {self.levels}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be positive (or None for len(levels)), got {self.dim}")


class FSQuantizer(Quantizer):
    """FSQ: bound each channel with tanh, round (straight-through), mixed-radix index; no loss."""

    Config = FSQConfig
    description = "Finite scalar quantization: tanh bound, per-channel rounding, implied grid (Mentzer 2023)"

    def __init__(self, config: FSQConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        levels = torch.tensor(self.config.levels, dtype=torch.long)
        d = len(self.config.levels)
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("half_width", levels // 2, persistent=False)  # floor(L/2)
        self.register_buffer("basis", mixed_radix_basis(self.config.levels), persistent=False)
        half_l = (levels.double() - 1) * (1 - BOUND_EPS) / 2
        offset = (levels % 2 == 0).double() * 0.5
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.tan(offset / half_l).float(), persistent=False)
        project = self.dim != d
        self.project_in = nn.Linear(self.dim, d) if project else nn.Identity()
        self.project_out = nn.Linear(d, self.dim) if project else nn.Identity()

    @property
    def codebook_size(self) -> int:
        return math.prod(self.config.levels)

    @property
    def dim(self) -> int:
        return self.config.dim if self.config.dim is not None else len(self.config.levels)

    def codebook(self) -> Tensor:
        """The whole implied grid, ``(K, dim)``, after the output projection; row k is ``decode(k)``."""
        return self.decode(torch.arange(self.codebook_size, device=self.levels.device))

    # -- the algorithm ---------------------------------------------------------------------------
    def bound(self, z: Tensor) -> Tensor:
        """``f(z) = h tanh(z + s) - o`` per channel (``floor(L/2) tanh(z)`` for odd L)."""
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def _round(self, z: Tensor) -> Tensor:
        """Bounded and rounded integer-valued channels (straight-through), before normalisation."""
        bounded = self.bound(self.project_in(z))
        return straight_through(bounded, torch.round(bounded))

    def _digits_to_indices(self, rounded: Tensor) -> Tensor:
        digits = rounded.detach().long() + self.half_width  # q_i in [0, L_i)
        return (digits * self.basis).sum(-1)

    def indices_to_grid(self, indices: Tensor) -> Tensor:
        """Inverse of the mixed-radix index: normalised grid points ``(..., d)`` in ``[-1, 1]``."""
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        return (digits - self.half_width).float() / self.half_width

    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        return self._digits_to_indices(self._round(z))

    def _decode(self, indices: Tensor) -> Tensor:
        return self.project_out(self.indices_to_grid(indices))

    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        rounded = self._round(z)
        indices = self._digits_to_indices(rounded)
        quantized = self.project_out(rounded / self.half_width)
        return QuantizerOutput(
            quantized=quantized,
            indices=indices,
            loss=torch.zeros((), device=z.device),
            stats=usage_stats(indices, self.codebook_size, mask),
        )
