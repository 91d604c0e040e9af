"""Config dataclass helpers shared by quantizers and tokenizers."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C")


def resolve_config(config_cls: type[C], config: C | None, overrides: dict[str, Any], owner: str) -> C:
    """The config an object is built with: ``config`` with ``overrides`` applied, or one from overrides.

    ``owner`` names the class being built, for the error when ``config`` is of the wrong type.
    """
    if config is None:
        return config_cls(**overrides)
    if not isinstance(config, config_cls):
        raise TypeError(f"{owner} takes a {config_cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides) if overrides else config
