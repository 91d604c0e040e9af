"""Tokenizer architectures by name, through the entry point group ``tokenkit.tokenizers``.

A tokenizer's config.json names its class (``"architecture": "ImageTokenizer"``); this registry
turns that name back into the class. A plugin package declares::

    [project.entry-points."tokenkit.tokenizers"]
    MyTokenizer = "my_package.models:MyTokenizer"
"""

from __future__ import annotations

from tokenkit.models.base import Tokenizer
from tokenkit.registry import EntryPointRegistry

GROUP = "tokenkit.tokenizers"
registry = EntryPointRegistry(GROUP, kind="tokenizer architecture", base=Tokenizer)


def available() -> list[str]:
    """Names of every installed tokenizer architecture."""
    return registry.names()


def get(name: str) -> type[Tokenizer]:
    """The tokenizer class registered as ``name``."""
    return registry.get(name)


def register(name: str, cls: type[Tokenizer]) -> None:
    """Register an architecture for this process only (a plugin uses an entry point instead)."""
    registry.register(name, cls)
