"""Training: recipes (TOML), the loop (one process or torchrun DDP), exact-resume checkpoints.

>>> from tokenkit.train import train
>>> summary = train("configs/fashion-mnist-fsq.toml")

Names are imported lazily, so ``tokenkit.train.cli`` (and ``tokenkit --help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ConfigError": "tokenkit.train.config",
    "RunConfig": "tokenkit.train.config",
    "TrainSection": "tokenkit.train.config",
    "load_config": "tokenkit.train.config",
    "load_model": "tokenkit.train.checkpoint",
    "read_checkpoint": "tokenkit.train.checkpoint",
    "save_checkpoint": "tokenkit.train.checkpoint",
    "fit": "tokenkit.train.loop",
    "train": "tokenkit.train.loop",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenkit.train' has no attribute {name!r}")
