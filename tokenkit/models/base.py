"""The tokenizer contract: encoder -> any registered quantizer -> decoder.

A tokenizer turns an image ``(B, C, H, W)`` in ``[-1, 1]`` or a waveform ``(B, 1, T)`` in ``[-1, 1]``
(16 kHz, optional bool ``mask (B, T)`` of valid samples) into a ``LongTensor`` of tokens and back:

- ``encode(x, mask=None) -> tokens``: images ``(B, h, w)``, audio ``(B, T')``, set latents ``(B, M)``;
- ``decode(tokens) -> x_hat``: the same layout as the input;
- ``forward(x, mask=None) -> TokenizerOutput``: reconstruction, tokens, losses and statistics.

Its config is a dataclass that round-trips through JSON; ``config_dict()`` adds the architecture
name (the class name, registered in the entry point group ``tokenkit.tokenizers``) and the tokenkit
version, and ``Tokenizer.from_config_dict(d)`` builds the right class back from such a dict.

Subclasses can rely on the template here by providing three methods:

- ``encode_latents(x, mask) -> Latents``: channel-last latents ``(B, N, D)``, the token mask
  ``(B, N)`` (or ``None``) and the token grid of one item (``(h, w)``, ``(T',)``, ``(M,)``);
- ``decode_latents(quantized, grid, token_mask) -> x_hat`` from quantized latents ``(B, N, D)``;
- ``reconstruction_loss(x, x_hat, mask) -> (loss, stats)``;

plus, where needed, ``check_input`` (layout checks), ``quantizer_defaults`` (e.g.
``{"dim": latent_dim}``) and ``fit_to_input`` (audio crops the decoder's padding to the input
length); or override ``encode``/``decode``/``forward`` wholesale where the method needs it.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

import tokenkit
from tokenkit import quantizers
from tokenkit.config import resolve_config
from tokenkit.models.hub_mixin import HubMixin
from tokenkit.quantizers.base import Quantizer

#: keys ``config_dict`` adds next to the config's own fields
META_KEYS = ("architecture", "tokenkit_version")


def _is_tuple_field(f: dataclasses.Field, hints: dict[str, Any]) -> bool:
    hint = hints.get(f.name, f.type)
    return typing.get_origin(hint) is tuple or hint is tuple


@dataclass
class TokenizerConfig:
    """Base of every tokenizer config: the quantizer by name and its keyword arguments.

    Subclasses add their architecture's fields (JSON-serialisable: numbers, strings, bools,
    tuples, dicts). ``quantizer_config`` holds the keyword arguments of that quantizer's
    ``Config`` dataclass; a missing ``dim`` is filled in from the tokenizer's latent size.
    """

    quantizer: str = "nearest"
    quantizer_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that lists the known ones."""
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no field(s) {unknown}; it takes {sorted(fields)}. "
                f"Was this config written by a different tokenkit version or architecture?"
            )
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # unresolvable annotations in a plugin: fall back to the raw ones
            hints = {}
        kwargs = {}
        for name, value in d.items():
            if isinstance(value, list) and _is_tuple_field(fields[name], hints):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class TokenizerOutput:
    """What every tokenizer's ``forward`` returns.

    reconstruction: same layout as the input; tokens: ``LongTensor`` (the ``encode`` layout);
    loss = recon_loss + quantizer_loss (what training minimises); stats: detached scalars, the
    quantizer's (``perplexity``, ``usage``, ...) plus the reconstruction terms.
    """

    reconstruction: Tensor
    tokens: Tensor
    loss: Tensor
    recon_loss: Tensor
    quantizer_loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Latents(NamedTuple):
    """Encoder output, ready for the quantizer."""

    z: Tensor  # (B, N, D) channel-last
    mask: Tensor | None  # (B, N) bool, True = valid token; None = all valid
    grid: tuple[int, ...]  # token layout of one item, prod(grid) == N


class Tokenizer(HubMixin, nn.Module, ABC):
    """Abstract tokenizer: encoder -> ``self.quantizer`` -> decoder.

    Build from a config or keyword overrides::

        ImageTokenizer(ImageTokenizerConfig(latent_dim=8), quantizer="fsq")
        ImageTokenizer(latent_dim=8, quantizer="ema", quantizer_config={"codebook_size": 256})
    """

    Config: ClassVar[type[TokenizerConfig]] = TokenizerConfig
    modality: ClassVar[str] = ""

    def __init__(self, config: TokenizerConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = resolve_config(self.Config, config, overrides, type(self).__name__)
        self.quantizer: Quantizer = self.build_quantizer()

    # -- the quantizer ----------------------------------------------------------------------
    def quantizer_defaults(self) -> dict[str, Any]:
        """Quantizer arguments the architecture fills in unless the config sets them (``dim``)."""
        return {}

    def build_quantizer(self) -> Quantizer:
        """``tokenkit.quantizers.create(config.quantizer, **defaults, **config.quantizer_config)``."""
        cls = quantizers.get(self.config.quantizer)
        accepted = set(cls.Config.__dataclass_fields__)
        kwargs = {k: v for k, v in self.quantizer_defaults().items() if k in accepted}
        kwargs.update(self.config.quantizer_config)
        return quantizers.create(self.config.quantizer, **kwargs)

    def check_quantizer_dim(self, latent_dim: int, field_name: str) -> None:
        """Clear error when the quantizer's ``dim`` is not the encoder's latent size."""
        if self.quantizer.dim != latent_dim:
            raise ValueError(
                f"quantizer {self.config.quantizer!r} takes latents of dim {self.quantizer.dim} (from "
                f"quantizer_config {self.config.quantizer_config}) but {field_name} = {latent_dim}; set "
                f"{field_name} = {self.quantizer.dim} or change the quantizer's config to match"
            )

    # -- what the template needs (override these, or encode/decode/forward) ------------------
    @abstractmethod
    def encode_latents(self, x: Tensor, mask: Tensor | None) -> Latents:
        """Checked input -> channel-last latents, token mask and token grid."""

    @abstractmethod
    def decode_latents(self, quantized: Tensor, grid: tuple[int, ...], mask: Tensor | None) -> Tensor:
        """Quantized latents ``(B, N, D)`` -> reconstruction in the input's layout."""

    @abstractmethod
    def reconstruction_loss(
        self, x: Tensor, x_hat: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar reconstruction loss (over valid samples) and its detached parts."""

    def fit_to_input(self, x_hat: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
        """Bring the decoder output to the input's shape (audio crops the padding); default: as is."""
        return x_hat

    def check_input(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Validate the input (subclasses check their layout); returns ``(x, mask)``."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a floating-point tensor in [-1, 1]")
        return x, mask

    # -- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Tokens for ``x`` (``LongTensor (B, *grid)``); no state changes."""
        x, mask = self.check_input(x, mask)
        lat = self.encode_latents(x, mask)
        indices = self.quantizer.encode(lat.z, lat.mask)
        return indices.reshape(x.shape[0], *lat.grid)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Reconstruction from tokens ``(B, *grid)``, values in ``[-1, 1]``."""
        if not isinstance(tokens, Tensor) or tokens.dim() < 2:
            raise ValueError(f"{type(self).__name__}.decode expects tokens (B, ...), got {_shape(tokens)}")
        grid = tuple(tokens.shape[1:])
        quantized = self.quantizer.decode(tokens.reshape(tokens.shape[0], -1))
        return self.decode_latents(quantized, grid, None)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> TokenizerOutput:
        x, mask = self.check_input(x, mask)
        lat = self.encode_latents(x, mask)
        q = self.quantizer(lat.z, lat.mask)
        x_hat = self.fit_to_input(self.decode_latents(q.quantized, lat.grid, lat.mask), x, mask)
        recon_loss, recon_stats = self.reconstruction_loss(x, x_hat, mask)
        stats = {**q.stats, **recon_stats, "recon_loss": recon_loss.detach()}
        return TokenizerOutput(
            reconstruction=x_hat,
            tokens=q.indices.reshape(x.shape[0], *lat.grid),
            loss=recon_loss + q.loss,
            recon_loss=recon_loss,
            quantizer_loss=q.loss,
            stats=stats,
        )

    # -- config / identity ------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        """The class name, also its entry point name in ``tokenkit.tokenizers``."""
        return type(self).__name__

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def config_dict(self) -> dict[str, Any]:
        """``{"architecture", "tokenkit_version", **config.to_dict()}`` (what config.json holds)."""
        return {
            "architecture": self.architecture,
            "tokenkit_version": tokenkit.__version__,
            **self.config.to_dict(),
        }

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Build the architecture ``d["architecture"]`` names (through the registry) from ``d``."""
        from tokenkit.models.registry import available, get

        if "architecture" not in d:
            raise ValueError(
                f"config has no 'architecture' key (keys: {sorted(d)}); a tokenizer config.json names "
                f"its class, e.g. \"architecture\": \"ImageTokenizer\". Installed: {available()}"
            )
        klass = get(d["architecture"])
        if not issubclass(klass, cls):
            raise TypeError(f"architecture {d['architecture']!r} is {klass.__name__}, not a {cls.__name__}")
        fields = {k: v for k, v in d.items() if k not in META_KEYS}
        return klass(klass.Config.from_dict(fields))

    def extra_repr(self) -> str:
        return f"modality={self.modality!r}, quantizer={self.config.quantizer!r}"


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
