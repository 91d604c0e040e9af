"""Waveform tokenizer at 16 kHz in the SEANet layout (Tagliasacchi et al. 2020, "SEANet: A
Multi-modal Speech Enhancement Network"; the encoder/decoder of SoundStream, Zeghidour et al. 2021,
and EnCodec, Defossez et al. 2022), small, with any quantizer by name.

Encoder: a 7-tap conv to ``base_width`` channels, then for each stride ``s`` residual units
``x + conv1(ELU(conv3_dilated(ELU(x))))`` followed by ``ELU`` and a strided conv (kernel ``2s``,
stride ``s``) that doubles the width; a 3-tap conv to ``latent_dim``. A waveform of ``T`` samples
becomes ``T' = ceil(T / hop)`` latents, ``hop = prod(strides)`` (``(2, 4, 5)``: 400 tokens per
second). The decoder mirrors it with transposed convs.

Variable lengths: a batch carries a bool mask ``(B, T)`` of valid samples (a prefix of each row).
Each item is treated as if it were zero-padded to a multiple of ``hop`` on its own: after every
layer the activations are multiplied by the mask at that layer's rate, so the padding of a batch
behaves exactly like the convolutions' zero padding of a single item, and the quantizer gets the
token mask (padded tokens add nothing to its loss or statistics). Hence a batch gives the same
tokens and reconstructions as its items one at a time.

Objective: ``L = L1(x, x_hat) + lambda_stft * L_stft + L_quantizer`` with the multi-resolution STFT
loss of Yamamoto et al. 2020 ("Parallel WaveGAN", Eq. 4-6): for each resolution, spectral
convergence ``|| |S| - |S_hat| ||_F / || |S| ||_F`` plus the mean absolute difference of log
magnitudes, averaged over the resolutions; every term counts valid samples/frames only.
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


@dataclass
class AudioTokenizerConfig(TokenizerConfig):
    sample_rate: int = 16000  # Hz; inputs must already be at this rate
    base_width: int = 32  # channels after the first conv; doubled by every strided conv
    strides: tuple[int, ...] = (2, 4, 5)  # downsampling per stage; hop = prod(strides) samples per token
    dilations: tuple[int, ...] = (1, 3)  # one residual unit per dilation, in every stage
    latent_dim: int = 64  # D, the size of each latent vector (the quantizer's dim)
    stft_weight: float = 1.0  # lambda_stft; 0 disables the spectral loss
    stft_sizes: tuple[int, ...] = (256, 512, 1024)  # FFT sizes of the multi-resolution STFT loss

    def __post_init__(self) -> None:
        if not self.strides or any(s < 2 for s in self.strides):
            raise ValueError(f"strides must be a non-empty tuple of integers >= 2, got {self.strides}")
        if any(d < 1 for d in self.dilations):
            raise ValueError(f"dilations must be >= 1, got {self.dilations}")
        for name in ("sample_rate", "base_width", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stft_weight < 0 or any(n < 8 for n in self.stft_sizes):
            raise ValueError("stft_weight must be >= 0 and every stft size >= 8")

    @property
    def hop(self) -> int:
        """Samples per token."""
        return math.prod(self.strides)


def _masked(x: Tensor, m: Tensor | None) -> Tensor:
    return x if m is None else x * m


class ResidualUnit(nn.Module):
    """``x + conv1x1(ELU(conv3_dilated(ELU(x))))``, masked after every conv."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor, m: Tensor | None) -> Tensor:
        h = _masked(self.conv(F.elu(x)), m)
        return x + _masked(self.proj(F.elu(h)), m)


class DownStage(nn.Module):
    """Residual units at width ``c``, then ELU + conv(kernel 2s, stride s) to width ``2c``."""

    def __init__(self, c: int, stride: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.units = nn.ModuleList(ResidualUnit(c, d) for d in dilations)
        # padding ceil(s/2) makes a length n*s input exactly n outputs long
        self.down = nn.Conv1d(c, 2 * c, 2 * stride, stride=stride, padding=(stride + 1) // 2)

    def forward(self, x: Tensor, m_in: Tensor | None, m_out: Tensor | None) -> Tensor:
        for unit in self.units:
            x = unit(x, m_in)
        return _masked(self.down(F.elu(x)), m_out)


class UpStage(nn.Module):
    """ELU + transposed conv(kernel 2s, stride s) from width ``2c`` to ``c``, then residual units."""

    def __init__(self, c: int, stride: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        pad = (stride + 1) // 2
        self.up = nn.ConvTranspose1d(
            2 * c, c, 2 * stride, stride=stride, padding=pad, output_padding=2 * pad - stride
        )
        self.units = nn.ModuleList(ResidualUnit(c, d) for d in dilations)

    def forward(self, x: Tensor, m_out: Tensor | None) -> Tensor:
        x = _masked(self.up(F.elu(x)), m_out)
        for unit in self.units:
            x = unit(x, m_out)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: AudioTokenizerConfig) -> None:
        super().__init__()
        c = cfg.base_width
        self.conv_in = nn.Conv1d(1, c, 7, padding=3)
        self.stages = nn.ModuleList()
        for s in cfg.strides:
            self.stages.append(DownStage(c, s, cfg.dilations))
            c *= 2
        self.conv_out = nn.Conv1d(c, cfg.latent_dim, 3, padding=1)

    def forward(self, x: Tensor, masks: list[Tensor | None]) -> Tensor:
        """``masks[i]``: the mask at the rate after ``i`` strided convs (``masks[0]``: samples)."""
        h = _masked(self.conv_in(x), masks[0])
        for i, stage in enumerate(self.stages):
            h = stage(h, masks[i], masks[i + 1])
        return _masked(self.conv_out(F.elu(h)), masks[-1])


class Decoder(nn.Module):
    def __init__(self, cfg: AudioTokenizerConfig) -> None:
        super().__init__()
        c = cfg.base_width * 2 ** len(cfg.strides)
        self.conv_in = nn.Conv1d(cfg.latent_dim, c, 7, padding=3)
        self.stages = nn.ModuleList()
        for s in reversed(cfg.strides):
            c //= 2
            self.stages.append(UpStage(c, s, cfg.dilations))
        self.conv_out = nn.Conv1d(c, 1, 7, padding=3)

    def forward(self, z: Tensor, masks: list[Tensor | None]) -> Tensor:
        h = _masked(self.conv_in(z), masks[-1])
        for i, stage in enumerate(self.stages):
            h = stage(h, masks[len(masks) - 2 - i])
        return _masked(self.conv_out(F.elu(h)), masks[0])


#: magnitudes below this count as silence in the log term (a full-scale sine peaks near n_fft / 4)
MAGNITUDE_FLOOR = 1e-3


def stft_loss(x: Tensor, x_hat: Tensor, mask: Tensor | None, n_fft: int) -> Tensor:
    """Spectral convergence + log-magnitude L1 at one resolution (Yamamoto et al. 2020, Eq. 4-5).

    x, x_hat: ``(B, T)``, already zero in the padding; a frame counts when it starts on a valid sample.
    """
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=x.device)

    def magnitude(s: Tensor) -> Tensor:
        spec = torch.stft(s, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
        return spec.abs().clamp_min(MAGNITUDE_FLOOR)  # (B, F, frames)

    mag, mag_hat = magnitude(x), magnitude(x_hat)
    frames = mag.shape[-1]
    if mask is None:
        fmask = torch.ones(x.shape[0], 1, frames, device=x.device)
    else:
        lengths = mask.sum(-1, keepdim=True)  # (B, 1)
        starts = torch.arange(frames, device=x.device) * hop
        fmask = (starts < lengths).float().unsqueeze(1)  # (B, 1, frames)
    diff = (mag - mag_hat) * fmask
    convergence = diff.square().sum().sqrt() / (mag * fmask).square().sum().sqrt().clamp_min(1e-7)
    log_l1 = ((mag.log() - mag_hat.log()).abs() * fmask).sum() / (fmask.sum() * mag.shape[1]).clamp_min(1)
    return convergence + log_l1


class AudioTokenizer(Tokenizer):
    """Waveforms ``(B, 1, T)`` in ``[-1, 1]`` at 16 kHz <-> tokens ``(B, ceil(T / hop))``."""

    Config = AudioTokenizerConfig
    modality = "audio"
    config: AudioTokenizerConfig

    def __init__(self, config: AudioTokenizerConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.check_quantizer_dim(self.config.latent_dim, "latent_dim")
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    @property
    def hop(self) -> int:
        return self.config.hop

    @property
    def tokens_per_second(self) -> float:
        return self.config.sample_rate / self.hop

    def quantizer_defaults(self) -> dict[str, Any]:
        return {"dim": self.config.latent_dim}

    # -- input and masks --------------------------------------------------------------------
    def check_input(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x, mask = super().check_input(x, mask)
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(
                f"AudioTokenizer expects mono waveforms (B, 1, T), got {tuple(x.shape)}; "
                f"for (B, T) use x.unsqueeze(1), for stereo average the channels"
            )
        if x.shape[-1] == 0:
            raise ValueError("AudioTokenizer got an empty waveform (T = 0)")
        if mask is None:
            return x, None
        if mask.dtype != torch.bool or tuple(mask.shape) != (x.shape[0], x.shape[-1]):
            raise ValueError(
                f"mask must be a bool tensor (B, T) = {(x.shape[0], x.shape[-1])} of valid samples, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        mask = mask.to(x.device)
        lengths = mask.sum(-1, keepdim=True)
        if not torch.equal(mask, torch.arange(x.shape[-1], device=x.device) < lengths):
            raise ValueError("mask must mark a prefix of each row as valid (padding at the end only)")
        if bool((lengths == 0).any()):
            raise ValueError("every item needs at least one valid sample; drop empty items from the batch")
        return x, mask

    def rate_masks(self, token_mask: Tensor | None) -> list[Tensor | None]:
        """Float masks ``(B, 1, T_i)`` at the rate after each strided conv (sample rate first)."""
        if token_mask is None:
            return [None] * (len(self.config.strides) + 1)
        masks: list[Tensor | None] = []
        rate = self.hop
        m = token_mask.float().unsqueeze(1)
        for s in (1, *self.config.strides):
            rate //= s
            masks.append(m.repeat_interleave(rate, dim=-1) if rate > 1 else m)
        return masks

    def token_mask(self, mask: Tensor | None) -> Tensor | None:
        """Sample mask ``(B, T)`` -> token mask ``(B, ceil(T / hop))``: token ``j`` is valid when its
        first sample is (an item of ``L`` samples has ``ceil(L / hop)`` tokens)."""
        if mask is None:
            return None
        lengths = mask.sum(-1, keepdim=True)
        num_tokens = -(-mask.shape[-1] // self.hop)
        return torch.arange(num_tokens, device=mask.device) * self.hop < lengths

    def pad_to_hop(self, x: Tensor) -> Tensor:
        """Right-pad with zeros to a multiple of ``hop`` samples."""
        return F.pad(x, (0, -x.shape[-1] % self.hop))

    # -- template -----------------------------------------------------------------------------
    def encode_latents(self, x: Tensor, mask: Tensor | None) -> Latents:
        token_mask = self.token_mask(mask)
        if mask is not None:
            x = x * mask.unsqueeze(1).to(x.dtype)
        x = self.pad_to_hop(x)
        z = self.encoder(x, self.rate_masks(token_mask))  # (B, D, T')
        return Latents(to_channel_last(z), token_mask, (z.shape[-1],))

    def decode_latents(self, quantized: Tensor, grid: tuple[int, ...], mask: Tensor | None) -> Tensor:
        if len(grid) != 1:
            raise ValueError(f"AudioTokenizer tokens are (B, T'), got a grid of {grid}")
        masks = self.rate_masks(mask)
        z = _masked(from_channel_last(quantized, grid), masks[-1])
        return self.decoder(z, masks)  # (B, 1, T' * hop)

    def fit_to_input(self, x_hat: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
        x_hat = x_hat[..., : x.shape[-1]]
        return x_hat if mask is None else x_hat * mask.unsqueeze(1).to(x_hat.dtype)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Waveforms ``(B, 1, T' * hop)`` in ``[-1, 1]`` from tokens ``(B, T')``."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"AudioTokenizer.decode expects tokens (B, T'), got {got}")
        return super().decode(tokens).clamp(-1.0, 1.0)

    def reconstruction_loss(
        self, x: Tensor, x_hat: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, x_hat = x.float()[:, 0], x_hat.float()[:, 0]
            if mask is not None:
                x = x * mask
            m = None if mask is None else mask.float()
            err = (x_hat - x).abs()
            l1 = err.mean() if m is None else (err * m).sum() / m.sum().clamp_min(1)
            stats = {"l1": l1.detach()}
            loss = l1
            if self.config.stft_weight > 0:
                spectral = sum(stft_loss(x, x_hat, mask, n) for n in self.config.stft_sizes)
                spectral = spectral / len(self.config.stft_sizes)
                stats["stft"] = spectral.detach()
                loss = loss + self.config.stft_weight * spectral
        return loss, stats
