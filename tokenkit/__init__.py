"""tokenkit: discrete tokenizers for images and audio."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenkit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "list_pretrained", "load"]

_LAZY = {"load": "tokenkit.hub", "list_pretrained": "tokenkit.hub"}


def __getattr__(name: str):
    """``tokenkit.load`` and ``tokenkit.list_pretrained`` import the Hub code on first use only."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenkit' has no attribute {name!r}")
