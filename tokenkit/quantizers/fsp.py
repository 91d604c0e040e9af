"""FSP, finite scalar perturbation (Zhai et al. 2026, "VP-VAE: Rethinking Vector Quantization via
Adaptive Vector Perturbation", arXiv 2602.17133, Sec. 3.3).

VP-VAE's perturbation specialised to a fixed scalar grid, as FSQ's counterpart:

- CDF-like activation: ``z = g(a)`` in [0, 1]^d with g a CDF (tanh: ``(tanh(a) + 1) / 2``, sigmoid,
  normal, Laplace). If ``a`` has CDF g, ``z`` is uniform (probability-integral transform);
- Eq. 14: the pre-activation regulariser ``lambda1 ||mu(a)||^2 + lambda2 ||sigma^2(a) - sigma_g^2||^2``
  with the variance of g's distribution: pi^2/12 (tanh), pi^2/3 (sigmoid), 1 (normal), 2 (Laplace);
- Eq. 15: Lloyd-Max centroids of a uniform source with L levels, ``c_l = (l + 1/2) / L`` (bin centres,
  not FSQ's bin edges); quantization ``l = clip(floor(L z), 0, L - 1)``, ``z~ = c_l``;
- Eq. 16-17: perturbation ``z' = z + u``, ``u_i ~ U(-eta / (2 L_i), eta / (2 L_i))``, accepted iff
  ``z'`` stays in [0, 1]^d (the MH step with a constant density), else ``z~ = z``; at eta = 1 this is
  exactly the error distribution of centroid quantization; a detached bias, gradients straight through;
- Eq. 18: each training forward perturbs with probability 1/2 and quantizes (straight-through)
  otherwise; eval always quantizes. Indices are mixed radix, the first dimension least significant.

The authors' code variants are options: ``mix="element"`` (the mix drawn per element, the code's
``quantize_rate``), ``quantize_rate=0`` (the code's default, always perturb), ``acceptance="element"``
(each coordinate accepted on its own), ``output`` "standardize" (the code's ``(q - 1/2) sqrt(12)``,
our default) / "unit" (the paper's [0, 1] values) / "inverse" (the code's inverse-CDF output).

What the paper leaves open: the uniform-prior centroids are optimal only if ``z`` is uniform.
:meth:`FSPQuantizer.fit_centroids` refits each dimension's centroids to the empirical distribution
of the trained encoder's latents by Lloyd-Max iterations (1-D k-means: boundaries at midpoints,
centroids at bin means); they are buffers, so they save and load with the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tokenkit.ops import distributed
from tokenkit.quantizers.base import (
    Quantizer,
    QuantizerConfig,
    QuantizerOutput,
    _fp32,
    masked_mean,
    mixed_radix_basis,
    straight_through,
    usage_stats,
)
from tokenkit.quantizers.vp import moment_loss

_EPS = 1e-6


def _laplace_cdf(a: Tensor) -> Tensor:
    return torch.where(a < 0, 0.5 * torch.exp(a.clamp(max=0)), 1 - 0.5 * torch.exp(-a.clamp(min=0)))


def _laplace_icdf(p: Tensor) -> Tensor:
    return torch.where(p < 0.5, torch.log(2 * p), -torch.log(2 * (1 - p)))


#: name -> (CDF g, its inverse, variance sigma_g^2 of the distribution g is the CDF of)
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], float]] = {
    "tanh": (lambda a: (torch.tanh(a) + 1) / 2, lambda p: torch.atanh(2 * p - 1), math.pi**2 / 12),
    "sigmoid": (torch.sigmoid, torch.logit, math.pi**2 / 3),
    "normal": (
        lambda a: 0.5 * (1 + torch.erf(a / math.sqrt(2))),
        lambda p: math.sqrt(2) * torch.erfinv(2 * p - 1),
        1.0,
    ),
    "laplace": (_laplace_cdf, _laplace_icdf, 2.0),
}
OUTPUTS = ("standardize", "unit", "inverse")


@dataclass
class FSPConfig(QuantizerConfig):
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # L_i; K = prod(levels)
    dim: int | None = None  # input width; None: len(levels), no projections
    activation: str = "tanh"  # the paper's experiments use tanh
    quantize_rate: float = 0.5  # Eq. 18: chance of centroid quantization instead of perturbation
    mix: str = "forward"  # "forward": one draw per forward pass (paper); "element": per element (code)
    acceptance: str = "vector"  # "vector": z' in [0, 1]^d (paper); "element": per coordinate
    eta: float = 1.0  # Eq. 16 perturbation width in bins (the code fixes 1)
    norm_mean_weight: float = 0.1  # lambda1 of Eq. 14
    norm_var_weight: float = 0.07  # lambda2 of Eq. 14
    norm_reduction: str = "mean"  # "mean" over d (code) or "sum" (the paper's squared norms)
    output: str = "standardize"  # "standardize" (q - 1/2) sqrt(12), "unit" [0, 1], "inverse" g^-1(q)

    def __post_init__(self) -> None:
        self.levels = [int(n) for n in self.levels]


def uniform_centroids(levels: list[int]) -> Tensor:
    """Eq. 15: ``c_l = (l + 1/2) / L`` per dimension, as a ``(d, max L)`` table padded with 1."""
    table = torch.ones(len(levels), max(levels))
    for i, n in enumerate(levels):
        table[i, :n] = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    return table


class FSPQuantizer(Quantizer):
    """FSP: CDF activation, uniform in-bin perturbation / Lloyd-Max centroid quantization."""

    Config = FSPConfig
    description = "FSP finite scalar perturbation: CDF activation, in-bin noise, Lloyd-Max centroids"

    def __init__(self, config: FSPConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        c = self.config
        self._check_config(c)
        d = len(c.levels)
        width = self.dim
        self.project_in = nn.Linear(width, d) if width != d else nn.Identity()
        self.project_out = nn.Linear(d, width) if width != d else nn.Identity()
        self.register_buffer("centroids", uniform_centroids(c.levels))
        levels = torch.tensor(c.levels, dtype=torch.long)
        self.register_buffer("_levels", levels, persistent=False)
        self.register_buffer("_basis", mixed_radix_basis(c.levels), persistent=False)
        inner = torch.arange(max(c.levels) - 1)[None, :] < (levels[:, None] - 1)
        self.register_buffer("_inner_boundary", inner, persistent=False)
        self._cdf, self._icdf, self.target_variance = ACTIVATIONS[c.activation]

    @staticmethod
    def _check_config(c: FSPConfig) -> None:
        if not c.levels or any(int(n) < 2 for n in c.levels):
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {c.levels}")
        if c.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {c.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= c.quantize_rate <= 1.0:
            raise ValueError(f"quantize_rate must lie in [0, 1], got {c.quantize_rate}")
        if c.mix not in ("forward", "element"):
            raise ValueError(f"mix must be 'forward' (paper) or 'element' (code), got {c.mix!r}")
        if c.acceptance not in ("vector", "element"):
            raise ValueError(f"acceptance must be 'vector' or 'element', got {c.acceptance!r}")
        if c.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {c.output!r}")
        if c.eta <= 0:
            raise ValueError(f"eta must be > 0, got {c.eta}")
        if c.dim is not None and c.dim < 1:
            raise ValueError(f"dim must be positive or None, got {c.dim}")

    @property
    def codebook_size(self) -> int:
        return math.prod(self.config.levels)

    @property
    def dim(self) -> int:
        return self.config.dim if self.config.dim is not None else len(self.config.levels)

    # -- the scalar grid -----------------------------------------------------------------------
    def boundaries(self) -> Tensor:
        """Decision thresholds ``(d, max L - 1)``: midpoints between neighbouring centroids (+inf pad)."""
        mids = (self.centroids[:, :-1] + self.centroids[:, 1:]) / 2
        return torch.where(self._inner_boundary, mids, torch.full_like(mids, math.inf))

    def bin_index(self, u: Tensor) -> Tensor:
        """Digits ``l_i`` of values ``u`` ``(..., d)`` in [0, 1]: the nearest centroid per dimension
        (for uniform centroids ``clip(floor(L_i u_i), 0, L_i - 1)``)."""
        flat = u.reshape(-1, u.shape[-1]).t().contiguous()
        digits = torch.searchsorted(self.boundaries().contiguous(), flat, right=True)
        return digits.t().reshape(u.shape)

    def centroid_values(self, digits: Tensor) -> Tensor:
        """Centroid ``c_{l_i}`` of each digit ``(..., d)``."""
        flat = digits.reshape(-1, digits.shape[-1]).t()
        return self.centroids.gather(1, flat).t().reshape(digits.shape)

    def digits_to_indices(self, digits: Tensor) -> Tensor:
        return (digits * self._basis).sum(-1)

    def indices_to_digits(self, indices: Tensor) -> Tensor:
        return (indices[..., None] // self._basis) % self._levels

    def _output(self, u: Tensor) -> Tensor:
        if self.config.output == "standardize":
            return (u - 0.5) * math.sqrt(12.0)
        if self.config.output == "inverse":
            return self._icdf(u.clamp(_EPS, 1 - _EPS))
        return u

    # -- Eq. 16-17 --------------------------------------------------------------------------------
    @torch.no_grad()
    def perturbation(self, u: Tensor) -> Tensor:
        """Accepted in-bin noise for ``u`` ``(..., d)`` in [0, 1]: ``U(+-eta / 2L_i)``, kept only where
        ``u + noise`` stays inside [0, 1] (whole vector, or per coordinate with acceptance="element")."""
        half_width = self.config.eta / (2 * self._levels.to(u.dtype))
        noise = (torch.rand_like(u) * 2 - 1) * half_width
        proposal = u + noise
        inside = (proposal >= 0) & (proposal <= 1)
        if self.config.acceptance == "vector":
            inside = inside.all(-1, keepdim=True)
        return noise * inside

    # -- Quantizer contract ----------------------------------------------------------------------
    def _unit(self, z: Tensor) -> tuple[Tensor, Tensor]:
        a = self.project_in(z)
        return a, self._cdf(a)

    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        _, u = self._unit(z)
        return self.digits_to_indices(self.bin_index(u))

    def _decode(self, indices: Tensor) -> Tensor:
        return self.project_out(self._output(self.centroid_values(self.indices_to_digits(indices))))

    def codebook(self) -> Tensor:
        with torch.no_grad():
            return self.decode(torch.arange(self.codebook_size, device=self.centroids.device))

    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        c = self.config
        a, u = self._unit(z)
        loss = moment_loss(
            a, mask, c.norm_mean_weight, c.norm_var_weight, self.target_variance, c.norm_reduction
        )
        digits = self.bin_index(u.detach())
        quantized = straight_through(u, self.centroid_values(digits))
        stats: dict[str, Tensor] = {"norm_loss": loss.detach()}
        if self.training and c.quantize_rate < 1.0:
            noise = self.perturbation(u.detach())
            perturbed = u + noise  # z~ = z + sg(u), Eq. 17
            if c.mix == "forward":
                take_quantized = torch.rand((), device=u.device) < c.quantize_rate
            else:
                take_quantized = torch.rand_like(u) < c.quantize_rate
            quantized = torch.where(take_quantized, quantized, perturbed)
            perturbed_share = (~take_quantized).float().expand_as(u)
            stats["perturbed"] = masked_mean(perturbed_share, mask).detach()
            stats["accept_rate"] = masked_mean((noise != 0).float(), mask).detach()
        indices = self.digits_to_indices(digits)
        stats.update(usage_stats(indices, self.codebook_size, mask))
        out = self.project_out(self._output(quantized))
        return QuantizerOutput(quantized=out, indices=indices, loss=loss, stats=stats)

    # -- Lloyd-Max refit (beyond the paper) --------------------------------------------------------
    @torch.no_grad()
    def fit_centroids(self, latents: Tensor, iters: int = 200, tol: float = 1e-7) -> Tensor:
        """Refit each dimension's centroids to the empirical distribution of ``latents`` (quantizer
        inputs ``(..., dim)``) by Lloyd-Max iterations, starting from the current centroids.

        Under torch.distributed the bin sums and counts are summed over ranks, so every rank gets
        the same centroids. Returns the ``(d, max L)`` centroid table (padded with 1).
        """
        if latents.dim() < 1 or latents.shape[-1] != self.dim:
            raise ValueError(f"fit_centroids expects latents (..., {self.dim}), got {tuple(latents.shape)}")
        latents = latents.detach().float().to(self.centroids.device)
        with _fp32(latents):
            _, u = self._unit(latents)
        u = u.reshape(-1, u.shape[-1])
        for i, n in enumerate(self.config.levels):
            start = self.centroids[i, :n].clone()
            self.centroids[i, :n] = _lloyd_max(u[:, i].contiguous(), start, iters, tol)
        return self.centroids.clone()

    @torch.no_grad()
    def reset_centroids(self) -> None:
        """Back to the uniform-source Lloyd-Max centroids ``(l + 1/2) / L`` (Eq. 15)."""
        self.centroids.copy_(uniform_centroids(self.config.levels).to(self.centroids.device))


def _lloyd_max(x: Tensor, centroids: Tensor, iters: int, tol: float) -> Tensor:
    """1-D Lloyd-Max on samples ``x``: thresholds at midpoints, centroids at conditional means.
    Empty bins keep their centroid. Sums and counts are all-reduced over ranks."""
    n = centroids.shape[0]
    for _ in range(iters):
        bins = torch.searchsorted((centroids[:-1] + centroids[1:]) / 2, x, right=True)
        sums = distributed.all_reduce_sum(torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(
            0, bins, x.double()))
        counts = distributed.all_reduce_sum(torch.bincount(bins, minlength=n).double())
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids.double()).float()
        updated, _ = updated.sort()
        shift = (updated - centroids).abs().max()
        centroids = updated
        if shift <= tol:
            break
    return centroids
