"""The quantizer contract every tokenkit quantizer (built-in or plugin) keeps.

Input ``z`` is channel-last, shape ``(..., N, D)``; an optional boolean ``mask`` of shape
``(..., N)`` marks the *valid* positions (``True``) against padding (``False``). Padded positions
still get an index and a quantized vector, but add nothing to the loss, the statistics or any
codebook update.

Subclasses implement three methods on float32 tensors that were already validated:

- ``_quantize(z, mask) -> QuantizerOutput`` (training and eval forward),
- ``_encode(z, mask) -> LongTensor`` (indices, no side effects),
- ``_decode(indices) -> Tensor`` (the vectors ``forward`` returns in eval mode),

plus the properties ``codebook_size`` and ``dim``. The public ``forward``/``encode``/``decode``
here check the input, switch autocast off (distances in bf16 pick wrong codes) and cast the result
back to the caller's dtype.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tokenkit.config import resolve_config
from tokenkit.ops import all_finite


@dataclass
class QuantizerConfig:
    """Base of every quantizer's config dataclass (JSON-serialisable fields only)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class QuantizerOutput:
    """What every quantizer's ``forward`` returns, whatever its flags.

    quantized: same shape as ``z``; gradients reach ``z`` (straight through or as the method says).
    indices:   ``LongTensor (..., N)``.
    loss:      scalar the caller adds to its objective (zero when the method has none).
    stats:     detached scalars, at least ``perplexity`` and ``usage``.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Quantizer(nn.Module, ABC):
    """Base class: validation, fp32 under autocast, and shared helpers.

    Build one from its config dataclass or keyword arguments::

        NearestQuantizer(NearestConfig(dim=64, codebook_size=1024))
        NearestQuantizer(dim=64, codebook_size=1024)
    """

    Config: ClassVar[type[QuantizerConfig]] = QuantizerConfig
    #: one line shown by ``tokenkit quantizers``
    description: ClassVar[str] = ""

    def __init__(self, config: QuantizerConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = resolve_config(self.Config, config, overrides, type(self).__name__)

    # -- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """K, the number of distinct codes."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """D, the size of each input latent vector."""

    @abstractmethod
    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        """The method's forward pass on validated float32 latents."""

    @abstractmethod
    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        """Indices for validated float32 latents, without side effects."""

    @abstractmethod
    def _decode(self, indices: Tensor) -> Tensor:
        """Code vectors for validated long indices."""

    def codebook(self) -> Tensor:
        """The ``(K, D)`` code vectors in input space (what ``decode`` returns for each index)."""
        return self.decode(torch.arange(self.codebook_size, device=self._device()))

    # -- public API ---------------------------------------------------------------------------
    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        self._check_latents(z)
        mask = self._check_mask(mask, z)
        with _fp32(z):
            out = self._quantize(z.float(), mask)
        out.quantized = out.quantized.to(z.dtype)
        return out

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Indices ``(..., N)`` of the codes ``z`` maps to (no state changes)."""
        self._check_latents(z)
        mask = self._check_mask(mask, z)
        with _fp32(z):
            return self._encode(z.float(), mask)

    def decode(self, indices: Tensor) -> Tensor:
        """Code vectors ``(..., N, D)`` for indices ``(..., N)``."""
        self._check_indices(indices)
        with _fp32(indices):
            return self._decode(indices.long())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())

    # -- input checks -------------------------------------------------------------------------
    def _check_latents(self, z: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(z, Tensor):
            raise TypeError(f"{name} expects a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"{name} expects floating-point latents, got {z.dtype}; call z.float()")
        if z.dim() < 2 or z.shape[-1] != self.dim:
            raise ValueError(
                f"{name} expects latents of shape (..., N, {self.dim}) (channel-last), got "
                f"{tuple(z.shape)}. For (B, C, H, W) feature maps use "
                f"tokenkit.quantizers.to_channel_last(x)."
            )
        if not all_finite(z):
            bad = int((~torch.isfinite(z)).sum())
            raise ValueError(
                f"{name} got {bad} NaN/inf values in its input latents; check the encoder output "
                f"(learning rate, bf16 overflow) before quantizing."
            )

    def _check_mask(self, mask: Tensor | None, z: Tensor) -> Tensor | None:
        if mask is None:
            return None
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = valid position), got {mask.dtype}")
        if tuple(mask.shape) != tuple(z.shape[:-1]):
            raise ValueError(
                f"mask must have shape {tuple(z.shape[:-1])} (the latents' shape without D), "
                f"got {tuple(mask.shape)}"
            )
        return mask.to(z.device)

    def _check_indices(self, indices: Tensor) -> None:
        if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError("indices must be an integer tensor (torch.long)")
        if indices.numel() == 0:
            return
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= self.codebook_size:
            raise IndexError(
                f"code indices must lie in [0, {self.codebook_size}) for this codebook, got values in "
                f"[{lo}, {hi}]. Were these tokens made by a tokenizer with a different codebook size?"
            )

    def _device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")


# -- helpers shared by the quantizers ------------------------------------------------------------
class _fp32:
    """Context manager: autocast off for the tensor's device type."""

    def __init__(self, like: Tensor) -> None:
        self._ctx = torch.autocast(device_type=like.device.type, enabled=False)

    def __enter__(self) -> None:
        self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x`` (shape ``(..., N, *)``) over the valid positions of ``mask`` ``(..., N)``."""
    if mask is None:
        return x.mean()
    m = mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim())).to(x.dtype)
    per_position = x.numel() // max(mask.numel(), 1)
    return (x * m).sum() / (m.sum() * per_position).clamp_min(1.0)


def code_histogram(indices: Tensor, codebook_size: int, mask: Tensor | None = None) -> Tensor:
    """Counts of each code over the valid positions (float, length ``codebook_size``)."""
    flat = indices.reshape(-1)
    if mask is not None:
        flat = flat[mask.reshape(-1)]
    return torch.bincount(flat, minlength=codebook_size).float()


def usage_stats(indices: Tensor, codebook_size: int, mask: Tensor | None = None) -> dict[str, Tensor]:
    """``perplexity`` = exp(entropy of the batch's code histogram); ``usage`` = fraction of codes used."""
    with torch.no_grad():
        counts = code_histogram(indices, codebook_size, mask)
        total = counts.sum().clamp_min(1.0)
        p = counts / total
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return {
            "perplexity": entropy.exp(),
            "usage": (counts > 0).float().sum() / codebook_size,
        }


def mixed_radix_basis(levels: list[int]) -> Tensor:
    """``[1, L_0, L_0 L_1, ...]``: index = sum_i digit_i basis_i (first dimension least significant);
    the implied-grid index of FSQ and FSP."""
    return torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.long)


def straight_through(z: Tensor, quantized: Tensor) -> Tensor:
    """Forward value ``quantized``, gradient of identity to ``z`` (Bengio et al. 2013)."""
    return z + (quantized - z).detach()


def to_channel_last(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)`` and ``(B, C, T)`` -> ``(B, T, C)``."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    if x.dim() == 3:
        return x.transpose(1, 2)
    raise ValueError(f"expected (B, C, H, W) or (B, C, T), got shape {tuple(x.shape)}")


def from_channel_last(z: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_channel_last`: ``(B, N, C)`` -> ``(B, C, *spatial)``."""
    if math.prod(spatial) != z.shape[1]:
        raise ValueError(f"cannot fold {z.shape[1]} positions into spatial shape {spatial}")
    return z.transpose(1, 2).reshape(z.shape[0], z.shape[2], *spatial)
