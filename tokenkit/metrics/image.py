"""Full-reference image metrics on ``(B, C, H, W)`` tensors (tokenkit images are in [-1, 1]).

PSNR, per image:  ``PSNR = 10 log10(L^2 / MSE)`` with ``L = data_range`` (2 for [-1, 1]).

SSIM (Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 2004), eq. 13, with local statistics under an 11x11 Gaussian
window (sigma 1.5), ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``, ``K1 = 0.01``, ``K2 = 0.03``::

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

computed per channel over the "valid" window positions (as the authors' reference code), then
averaged over positions and channels to one number per image. Computed in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "none")


def _check_pair(x: Tensor, y: Tensor, reduction: str) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            "expected two image batches of the same shape (B, C, H, W), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(per_image: Tensor, reduction: str) -> Tensor:
    return per_image.mean() if reduction == "mean" else per_image


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0, reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB: per image (``reduction="none"``, shape (B,)) or their mean.

    Identical images give ``inf``.
    """
    _check_pair(x, y, reduction)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    per_image = 10.0 * torch.log10(data_range**2 / mse)
    return _reduce(per_image.float(), reduction)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> Tensor:
    """The normalised 1-D Gaussian ``(size,)`` whose outer product is the SSIM window."""
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter, per channel, "valid" positions only."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 2.0,
    reduction: str = "mean",
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity (Wang et al. 2004): per image (``reduction="none"``) or the mean."""
    _check_pair(x, y, reduction)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(
            f"SSIM needs images of at least {window_size}x{window_size} pixels (the window), got "
            f"{tuple(x.shape[-2:])}; pass a smaller window_size"
        )
    x, y = x.double(), y.double()
    g = gaussian_window(window_size, sigma, device=x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    var_x = _blur(x * x, g) - mu_x**2
    var_y = _blur(y * y, g) - mu_y**2
    cov = _blur(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _reduce(ssim_map.flatten(1).mean(1).float(), reduction)
