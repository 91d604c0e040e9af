"""Convolutional image tokenizer in the VQGAN layout (Esser et al. 2021, "Taming Transformers for
High-Resolution Image Synthesis"; the encoder/decoder of VQ-VAE, van den Oord et al. 2017), small.

Encoder ``E``: a 3x3 conv, then one level per entry of ``channel_mults`` with ``num_res_blocks``
residual blocks of width ``base_width * mult``, a stride-2 conv between levels, a middle residual
block and a 3x3 conv to ``latent_dim``. An image ``x (B, C, H, W)`` in ``[-1, 1]`` becomes latents
``z_e = E(x) (B, D, h, w)`` with ``h = H / f``, ``f = 2 ** (len(channel_mults) - 1)``; they are
flattened channel-last to ``(B, h*w, D)`` for the quantizer, whose indices are the tokens
``(B, h, w)``. The decoder ``G`` mirrors ``E`` (nearest-neighbour upsampling + 3x3 conv).

Objective: ``L = L_rec(x, G(z_q)) + L_quantizer`` with ``L_rec`` the mean absolute (``"l1"``) or
squared (``"mse"``) error over pixels; ``L_quantizer`` is whatever the quantizer returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenkit.models.base import Latents, Tokenizer, TokenizerConfig
from tokenkit.quantizers.base import from_channel_last, to_channel_last

RECON_LOSSES = ("l1", "mse")


@dataclass
class ImageTokenizerConfig(TokenizerConfig):
    channels: int = 3  # image channels (1 for Fashion-MNIST, 3 for RGB)
    base_width: int = 64  # conv width of the first level
    channel_mults: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; f = 2 ** (levels - 1)
    num_res_blocks: int = 1  # residual blocks per level
    latent_dim: int = 64  # D, the size of each latent vector (the quantizer's dim)
    recon_loss: str = "l1"  # "l1" or "mse" on [-1, 1] pixels

    def __post_init__(self) -> None:
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}")
        if not self.channel_mults:
            raise ValueError("channel_mults needs at least one level, e.g. (1, 2, 2)")
        for name in ("channels", "base_width", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")

    @property
    def downsample(self) -> int:
        """f, the side of the pixel patch one token covers."""
        return 2 ** (len(self.channel_mults) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))))))``, with a 1x1 shortcut when widths differ."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class Encoder(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig) -> None:
        super().__init__()
        widths = [cfg.base_width * m for m in cfg.channel_mults]
        self.conv_in = nn.Conv2d(cfg.channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        c = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, width))
                c = width
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = ResBlock(c, c)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.latent_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig) -> None:
        super().__init__()
        widths = [cfg.base_width * m for m in cfg.channel_mults][::-1]
        c = widths[0]
        self.conv_in = nn.Conv2d(cfg.latent_dim, c, 3, padding=1)
        self.mid = ResBlock(c, c)
        layers: list[nn.Module] = []
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, width))
                c = width
            if level < len(widths) - 1:
                layers.append(Upsample(c))
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class ImageTokenizer(Tokenizer):
    """Images ``(B, C, H, W)`` in ``[-1, 1]`` <-> tokens ``(B, H/f, W/f)``, any quantizer by name."""

    Config = ImageTokenizerConfig
    modality = "image"
    config: ImageTokenizerConfig

    def __init__(self, config: ImageTokenizerConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.check_quantizer_dim(self.config.latent_dim, "latent_dim")
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def quantizer_defaults(self) -> dict[str, Any]:
        return {"dim": self.config.latent_dim}

    def check_input(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x, mask = super().check_input(x, mask)
        c, f = self.config.channels, self.config.downsample
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"ImageTokenizer expects images (B, {c}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"image size {tuple(x.shape[2:])} is not divisible by the downsampling factor {f}; "
                f"resize or crop to a multiple of {f} (or use fewer channel_mults levels)"
            )
        if mask is not None:
            raise ValueError("ImageTokenizer takes no mask: every pixel of an image is valid")
        return x, None

    def encode_latents(self, x: Tensor, mask: Tensor | None) -> Latents:
        z = self.encoder(x)  # (B, D, h, w)
        return Latents(to_channel_last(z), None, tuple(z.shape[2:]))

    def decode_latents(self, quantized: Tensor, grid: tuple[int, ...], mask: Tensor | None) -> Tensor:
        if len(grid) != 2:
            raise ValueError(f"ImageTokenizer tokens are (B, h, w), got a grid of {grid}")
        return self.decoder(from_channel_last(quantized, grid))

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"ImageTokenizer.decode expects tokens (B, h, w), got {got}")
        return super().decode(tokens).clamp(-1.0, 1.0)

    def reconstruction_loss(
        self, x: Tensor, x_hat: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x_hat = x_hat.float()
        if self.config.recon_loss == "l1":
            loss = (x_hat - x).abs().mean()
        else:
            loss = (x_hat - x).square().mean()
        mse = (x_hat.detach() - x).square().mean()
        psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # peak-to-peak 2 on [-1, 1]
        return loss, {"mse": mse, "psnr": psnr}
