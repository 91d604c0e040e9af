"""Quantizers: one module per method, all behind :class:`Quantizer`, all found by name.

>>> import tokenkit.quantizers as tq
>>> tq.available()                      # names from the entry point group "tokenkit.quantizers"
>>> vq = tq.create("nearest", dim=64, codebook_size=1024)
"""

from tokenkit.quantizers.base import (
    Quantizer,
    QuantizerConfig,
    QuantizerOutput,
    from_channel_last,
    to_channel_last,
)
from tokenkit.quantizers.registry import available, create, describe, get, register, registry

__all__ = [
    "Quantizer",
    "QuantizerConfig",
    "QuantizerOutput",
    "available",
    "create",
    "describe",
    "from_channel_last",
    "get",
    "register",
    "registry",
    "to_channel_last",
]
