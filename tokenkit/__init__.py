"""tokenkit: discrete tokenizers for images and audio."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenkit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
