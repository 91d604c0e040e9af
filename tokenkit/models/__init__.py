"""Tokenizers: encoder -> any registered quantizer -> decoder.

>>> from tokenkit.models import ImageTokenizer
>>> tok = ImageTokenizer(quantizer="fsq", latent_dim=4)
>>> tokens = tok.encode(images)          # (B, h, w)
>>> images_hat = tok.decode(tokens)      # (B, C, H, W) in [-1, 1]

Architectures are imported lazily (through the ``tokenkit.tokenizers`` registry), so importing
the contract does not import every model.
"""

from __future__ import annotations

from typing import Any

from tokenkit.models.base import Latents, Tokenizer, TokenizerConfig, TokenizerOutput
from tokenkit.models.registry import available, get, register, registry

__all__ = [
    "Latents",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerOutput",
    "available",
    "get",
    "register",
    "registry",
]

_LAZY = {
    "ImageTokenizer": "tokenkit.models.image",
    "ImageTokenizerConfig": "tokenkit.models.image",
    "AudioTokenizer": "tokenkit.models.audio",
    "AudioTokenizerConfig": "tokenkit.models.audio",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in registry:  # e.g. PIVQTokenizer, or a plugin's architecture
        return get(name)
    raise AttributeError(f"module 'tokenkit.models' has no attribute {name!r}")
