"""Checkpoints: one safetensors file holding everything a run needs to continue exactly.

Tensors: ``model/<name>`` (the tokenizer's state dict, quantizer buffers included),
``optim/<param index>/<key>`` (AdamW moments and step counts), and the random number generator
state of every rank (``rng/<rank>/torch``, ``rng/<rank>/cuda``, ``rng/<rank>/numpy``,
``rng/<rank>/python``). JSON in the safetensors metadata: the step, the data position (epoch, batch),
the tokenizer's config dict, the recipe and the small parts of the RNG states. No pickle anywhere.

The file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from tokenkit.files import atomic_write
from tokenkit.models import Tokenizer

FORMAT = "tokenkit-checkpoint-1"


@dataclass
class TrainState:
    """Where a run is: completed steps and the position in the data order."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# -- random number generators ------------------------------------------------------------------
def rng_state() -> dict[str, Tensor]:
    """This process's torch, CUDA, numpy and python RNG states as fixed-shape tensors."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    if np_name != "MT19937":
        raise RuntimeError(f"unexpected numpy RNG {np_name!r}")
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_extra": torch.tensor([py_version, py_gauss is not None], dtype=torch.int64),
        "python_gauss": torch.tensor([py_gauss or 0.0], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Tensor]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    pos, has_gauss = (int(v) for v in state["numpy_extra"])
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, float(state["numpy_gauss"][0]))
    )
    version, has_py_gauss = (int(v) for v in state["python_extra"])
    py_gauss = float(state["python_gauss"][0]) if has_py_gauss else None
    random.setstate((version, tuple(int(v) for v in state["python"]), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8))


# -- saving --------------------------------------------------------------------------------------
def _tensor_dict(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    # clone: safetensors refuses tensors that share storage (views, tied weights)
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for index, param_state in optimizer.state_dict()["state"].items():
        for key, value in param_state.items():
            if not isinstance(value, Tensor):
                value = torch.tensor(value)
            out[f"{index}/{key}"] = value
    return out


def save_checkpoint(
    path: str | Path,
    model: Tokenizer,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    rng_states: list[dict[str, Tensor]],
    recipe: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + ``os.replace``); ``rng_states``: one per rank."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _tensor_dict("model/", model.state_dict())
    tensors.update(_tensor_dict("optim/", optimizer_tensors(optimizer)))
    for rank, rng in enumerate(rng_states):
        tensors.update(_tensor_dict(f"rng/{rank}/", rng))
    metadata = {
        "format": FORMAT,
        "state": json.dumps(
            {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, **state.extra}
        ),
        "model_config": json.dumps(model.config_dict()),
        "recipe": json.dumps(recipe or {}),
        "world_size": str(len(rng_states)),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


# -- loading -------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint read back: tensors by section, and the JSON metadata."""

    model: dict[str, Tensor]
    optim: dict[str, Tensor]
    rng: list[dict[str, Tensor]]
    state: TrainState
    model_config: dict[str, Any]
    recipe: dict[str, Any]


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    model: dict[str, Tensor] = {}
    optim: dict[str, Tensor] = {}
    rng: dict[int, dict[str, Tensor]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tokenkit training checkpoint (format {meta.get('format')!r})")
        for key in f.keys():
            section, _, rest = key.partition("/")
            if section == "model":
                model[rest] = f.get_tensor(key)
            elif section == "optim":
                optim[rest] = f.get_tensor(key)
            elif section == "rng":
                rank, _, name = rest.partition("/")
                rng.setdefault(int(rank), {})[name] = f.get_tensor(key)
    s = json.loads(meta["state"])
    state = TrainState(s.pop("step"), s.pop("epoch"), s.pop("batch_in_epoch"), s)
    return Checkpoint(
        model=model,
        optim=optim,
        rng=[rng[r] for r in sorted(rng)],
        state=state,
        model_config=json.loads(meta["model_config"]),
        recipe=json.loads(meta["recipe"]),
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Restore AdamW moments into an optimizer built with the same parameters and hyperparameters."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition("/")
        state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> Tokenizer:
    """The tokenizer a training checkpoint holds (architecture from its config), in eval mode."""
    ckpt = read_checkpoint(path)
    model = Tokenizer.from_config_dict(ckpt.model_config)
    load_weights(model, ckpt.model)
    return model.to(map_location).eval()


def load_weights(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Strict load with an error that names missing and unexpected keys."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit this model: missing {sorted(missing)[:8]}, unexpected "
            f"{sorted(unexpected)[:8]}. Was it written for a different architecture or quantizer?"
        )
