"""PI-VQ: a permutation-invariant image tokenizer (after arXiv 2604.01843, "PI-VQ").

The paper's public abstract fixes the idea: an image becomes a *set* of discrete codes that carry no
position, quantized by optimal bipartite matching (``tokenkit.quantizers.matching``), and new images
come from mixing the code sets of real images, decoded in one forward pass. Its method section was
not available, so the architecture below is our design (DESIGN.md §4, docs/pivq.md):

- Encoder: patches ``x_p`` of side ``patch_size``, linear embedding plus learned positional
  embeddings, ``depth`` pre-norm transformer blocks -> patch features ``h (B, P, width)``. ``M``
  learned queries cross-attend to ``h`` (one transformer decoder block, no causal mask) and are
  projected to the quantizer's dim: the set ``S = {s_1..s_M} (B, M, latent_dim)``.
- Quantizer: any registered one; ``"matching"`` by default (distinct codes per image).
- Decoder: the codes are embedded one by one (no positional embedding, nothing that depends on
  their order), ``P`` learned positional patch queries run ``depth`` transformer decoder blocks,
  each self-attention over the patch queries + cross-attention to the code set + MLP, then a linear
  head to pixels. Cross-attention sums over its keys, so ``G(pi S) = G(S)`` for every permutation
  ``pi`` of the codes.
- Objective: ``L = L_rec(x, G(z_q)) + L_quantizer`` (``"mse"`` or ``"l1"``). The paper also uses
  perceptual and adversarial losses; those need pretrained networks we do not ship (no LPIPS).
- Tokens: ``(B, M)``, an unordered set per image.
- Interpolation sampling (:meth:`PIVQTokenizer.sample`): each new image's set is a random subset of
  ``M`` codes from the union of the sets of ``parents`` random reference images, de-duplicated
  where the union allows; :meth:`PIVQTokenizer.interpolate` walks from one image's set to another's.
- :func:`effective_capacity`: mean distinct codes per image / M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tokenkit.models.base import Latents, Tokenizer, TokenizerConfig
from tokenkit.quantizers.matching import distinct_per_sample

RECON_LOSSES = ("mse", "l1")


@dataclass
class PIVQConfig(TokenizerConfig):
    quantizer: str = "matching"
    image_size: int = 32  # square images, H = W
    channels: int = 3
    patch_size: int = 4
    width: int = 128  # transformer width
    depth: int = 2  # transformer blocks in the encoder and in the decoder
    heads: int = 4
    mlp_ratio: float = 4.0
    num_latents: int = 32  # M, codes per image
    latent_dim: int = 32  # the quantizer's dim
    recon_loss: str = "mse"

    def __post_init__(self) -> None:
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}")
        for name in ("image_size", "channels", "patch_size", "width", "depth", "heads", "num_latents",
                     "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; "
                f"pick a patch size that divides the image size"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


def _encoder_block(cfg: PIVQConfig) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio), dropout=0.0, activation="gelu",
        batch_first=True, norm_first=True,
    )


def _cross_block(cfg: PIVQConfig) -> nn.TransformerDecoderLayer:
    """Self-attention over the queries, cross-attention to a memory, MLP (no masks anywhere)."""
    return nn.TransformerDecoderLayer(
        cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio), dropout=0.0, activation="gelu",
        batch_first=True, norm_first=True,
    )


class SetEncoder(nn.Module):
    """Image -> set of M latent vectors: patch transformer, then M queries cross-attending to it."""

    def __init__(self, cfg: PIVQConfig) -> None:
        super().__init__()
        p = cfg.grid**2
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, p, cfg.width) * 0.02)
        self.blocks = nn.TransformerEncoder(_encoder_block(cfg), cfg.depth, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(1, cfg.num_latents, cfg.width) * 0.02)
        self.pool = _cross_block(cfg)
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, P, width)
        h = self.blocks(h)
        s = self.pool(self.queries.expand(x.shape[0], -1, -1), h)  # (B, M, width)
        return self.proj(self.norm(s))


class SetDecoder(nn.Module):
    """Set of codes -> image; positional patch queries cross-attend to the codes (order-free)."""

    def __init__(self, cfg: PIVQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.grid**2
        self.code_embed = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.width), nn.LayerNorm(cfg.width))
        self.queries = nn.Parameter(torch.randn(1, p, cfg.width) * 0.02)
        self.blocks = nn.TransformerDecoder(_cross_block(cfg), cfg.depth)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.channels * cfg.patch_size**2)

    def forward(self, codes: Tensor) -> Tensor:
        memory = self.code_embed(codes)  # (B, M, width), per code: no position, no order
        h = self.blocks(self.queries.expand(codes.shape[0], -1, -1), memory)
        patches = self.head(self.norm(h))  # (B, P, C * p * p)
        return self._fold(patches)

    def _fold(self, patches: Tensor) -> Tensor:
        cfg, b = self.cfg, patches.shape[0]
        g, p, c = cfg.grid, cfg.patch_size, cfg.channels
        x = patches.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, g * p, g * p)


class PIVQTokenizer(Tokenizer):
    """Images ``(B, C, H, W)`` in ``[-1, 1]`` <-> an unordered set of tokens ``(B, M)``."""

    Config = PIVQConfig
    modality = "image"
    config: PIVQConfig

    def __init__(self, config: PIVQConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.check_quantizer_dim(self.config.latent_dim, "latent_dim")
        self.encoder = SetEncoder(self.config)
        self.decoder = SetDecoder(self.config)

    def quantizer_defaults(self) -> dict[str, Any]:
        return {"dim": self.config.latent_dim}

    # -- the template's three methods ----------------------------------------------------------
    def check_input(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x, mask = super().check_input(x, mask)
        c, s = self.config.channels, self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(
                f"PIVQTokenizer expects images (B, {c}, {s}, {s}) in [-1, 1], got {tuple(x.shape)}; "
                f"resize to image_size={s} or build the tokenizer with the image size you have"
            )
        if mask is not None:
            raise ValueError("PIVQTokenizer takes no mask: every pixel of an image is valid")
        return x, None

    def encode_latents(self, x: Tensor, mask: Tensor | None) -> Latents:
        return Latents(self.encoder(x), None, (self.config.num_latents,))

    def decode_latents(self, quantized: Tensor, grid: tuple[int, ...], mask: Tensor | None) -> Tensor:
        return self.decoder(quantized)

    def reconstruction_loss(
        self, x: Tensor, x_hat: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x_hat = x_hat.float()
        err = x_hat - x
        loss = err.square().mean() if self.config.recon_loss == "mse" else err.abs().mean()
        mse = err.detach().square().mean()
        psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # peak-to-peak 2 on [-1, 1]
        return loss, {"mse": mse, "psnr": psnr}

    # -- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def set_latents(self, x: Tensor) -> Tensor:
        """The encoder's set ``(B, M, latent_dim)`` before quantization."""
        x, _ = self.check_input(x, None)
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in ``[-1, 1]`` from token sets ``(B, M)`` (their order is irrelevant)."""
        self._check_tokens(tokens, "decode")
        return super().decode(tokens).clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample_tokens(
        self, n: int, references: Tensor, parents: int = 2, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` new code sets ``(n, M)``, each a random M-subset of the union of the code sets of
        ``parents`` random references (images ``(R, C, H, W)`` or tokens ``(R, M)``), distinct codes
        first; codes repeat only when the union has fewer than M distinct ones."""
        tokens = self._reference_tokens(references).cpu()
        r, m = tokens.shape
        if not 1 <= parents <= r:
            raise ValueError(f"parents must lie in [1, {r}] (the number of references), got {parents}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out = torch.empty(n, m, dtype=torch.long)
        for i in range(n):
            chosen = torch.randperm(r, generator=generator)[:parents]
            out[i] = _random_subset(tokens[chosen].reshape(-1), m, generator)
        return out.to(self._device())

    @torch.no_grad()
    def sample(
        self, n: int, references: Tensor, parents: int = 2, generator: torch.Generator | None = None
    ) -> Tensor:
        """Interpolation sampling: ``n`` new images ``(n, C, H, W)`` from mixed code sets, one pass."""
        return self.decode(self.sample_tokens(n, references, parents, generator))

    @torch.no_grad()
    def interpolate_tokens(
        self, a: Tensor, b: Tensor, steps: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Code sets ``(steps, M)`` from ``a``'s to ``b``'s: step ``t`` in ``linspace(0, 1, steps)``
        takes ``round(t * M)`` codes of ``b`` and the rest from ``a``. The subsets are nested (a
        fixed random order of each set), and ``a``'s codes already taken from ``b`` go last."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2 (the two endpoints at least), got {steps}")
        ta = self._single_set(a, "a").cpu()
        tb = self._single_set(b, "b").cpu()
        m = ta.numel()
        order_a = ta[torch.randperm(m, generator=generator)]
        fresh = ~torch.isin(tb, ta)  # b's codes that a lacks come first: each step adds a new code
        new_codes = tb[fresh][torch.randperm(int(fresh.sum()), generator=generator)]
        order_b = torch.cat([new_codes, tb[~fresh]])
        out = torch.empty(steps, m, dtype=torch.long)
        for s, t in enumerate(torch.linspace(0.0, 1.0, steps).tolist()):
            k = int(round(t * m))
            from_b = order_b[:k]
            keep = ~torch.isin(order_a, from_b)
            from_a = torch.cat([order_a[keep], order_a[~keep]])[: m - k]
            out[s] = torch.cat([from_b, from_a])
        return out.to(self._device())

    @torch.no_grad()
    def interpolate(
        self, a: Tensor, b: Tensor, steps: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Images ``(steps, C, H, W)`` along :meth:`interpolate_tokens`, decoded in one pass. ``a`` and
        ``b`` are images ``(C, H, W)`` / ``(1, C, H, W)`` or code sets ``(M,)`` / ``(1, M)``."""
        return self.decode(self.interpolate_tokens(a, b, steps, generator))

    # -- helpers -------------------------------------------------------------------------------
    def _check_tokens(self, tokens: Tensor, what: str) -> None:
        m = self.config.num_latents
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.shape[1] != m:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"PIVQTokenizer.{what} expects token sets (B, {m}), got {got}")

    def _reference_tokens(self, references: Tensor) -> Tensor:
        if not isinstance(references, Tensor):
            got = type(references).__name__
            raise TypeError(f"references must be images (R, C, H, W) or tokens (R, M), got {got}")
        if references.is_floating_point():
            return self.encode(references)
        self._check_tokens(references, "sample")
        return references.long()

    def _single_set(self, x: Tensor, name: str) -> Tensor:
        if isinstance(x, Tensor) and x.is_floating_point() and x.dim() == 3:
            x = x.unsqueeze(0)
        elif isinstance(x, Tensor) and not x.is_floating_point() and x.dim() == 1:
            x = x.unsqueeze(0)
        if not isinstance(x, Tensor) or x.shape[0] != 1:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be one image (C, H, W) or one code set (M,), got {got}")
        return self._reference_tokens(x)[0]

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def _random_subset(pool: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """``m`` codes drawn from ``pool``: distinct ones in random order, then repeats if needed."""
    distinct = torch.unique(pool)
    distinct = distinct[torch.randperm(distinct.numel(), generator=generator)]
    if distinct.numel() >= m:
        return distinct[:m]
    extra = pool[torch.randint(pool.numel(), (m - distinct.numel(),), generator=generator)]
    return torch.cat([distinct, extra])


def effective_capacity(tokens: Tensor) -> float:
    """Mean number of distinct codes per image divided by M, for token sets ``(B, M)``."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"effective_capacity expects token sets (B, M), got {got}")
    return float(distinct_per_sample(tokens))
