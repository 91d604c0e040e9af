"""Training recipes: a TOML file with three tables, loaded into dataclasses.

```toml
[model]                      # exactly a tokenizer's config.json: architecture + its config fields
architecture = "ImageTokenizer"
quantizer = "fsq"
channels = 1
latent_dim = 4
[model.quantizer_config]     # keyword arguments of the quantizer's Config
levels = [8, 5, 5, 5]

[data]                       # passed to tokenkit.data.build_dataset(data, split)
name = "fashion-mnist"

[train]                      # TrainSection below
steps = 2000
batch_size = 64
```

``--set key=value`` overrides any entry by its dotted path (``train.lr=1e-3``,
``model.quantizer_config.codebook_size=512``); the value is read as TOML (``[8, 5, 5]``,
``true``, ``"text"``), or kept as a string when it is not valid TOML.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SECTIONS = ("model", "data", "train")
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A training recipe is malformed; the message names the key and the fix."""


@dataclass
class TrainSection:
    steps: int = 1000  # optimizer steps in total (a resumed run continues up to this number)
    batch_size: int = 32  # per process; the global batch is batch_size * world_size
    lr: float = 2e-4  # peak AdamW learning rate
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    schedule: str = "constant"  # "constant" or "cosine" (decay to min_lr_ratio * lr after warm-up)
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.1
    bf16: bool = False  # bf16 autocast for the encoder/decoder (quantizers stay fp32)
    seed: int = 0
    eval_every: int = 500  # steps between evaluations on the eval split; 0: only at the end
    eval_batches: int = 8  # batches per evaluation (0: the whole split)
    eval_split: str = "val"
    ckpt_every: int = 500  # steps between checkpoints; a last one is always written at the end
    log_every: int = 50  # steps between lines in log.jsonl (and the progress bar's refresh)
    out_dir: str = "runs/default"
    num_workers: int = 0  # DataLoader workers per process
    threads: int = 0  # torch CPU threads per process (0: torch's default; 1 on a busy shared machine)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step
    progress: bool = True  # tqdm bar on rank 0
    pictures: bool = True  # reconstruction grids at each evaluation (when tokenkit.pictures exists)
    # after the last step: quantizer methods called with encoder outputs of the training data, when
    # the quantizer has them (VP-VAE's fit_codebook; add "fit_centroids" for FSP's Lloyd-Max refit)
    post_fit: list[str] = field(default_factory=lambda: ["fit_codebook"])
    post_fit_batches: int = 16  # training batches (per process) whose latents the post-fit sees
    export: bool = True  # save the final tokenizer to out_dir/tokenizer (config.json + safetensors)

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_batches", "ckpt_every", "num_workers", "warmup_steps", "threads",
                     "post_fit_batches"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("train.lr must be > 0, train.grad_clip and train.weight_decay >= 0")
        if self.device not in DEVICES:
            raise ConfigError(f"train.device must be one of {DEVICES}, got {self.device!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if isinstance(self.post_fit, str) or not all(isinstance(m, str) for m in self.post_fit):
            raise ConfigError(f"train.post_fit must be a list of method names, got {self.post_fit!r}")
        self.post_fit = list(self.post_fit)


@dataclass
class RunConfig:
    """A whole recipe: the tokenizer (its config.json dict), the data options and the loop."""

    model: dict[str, Any]
    data: dict[str, Any]
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self) -> None:
        if not isinstance(self.model, dict) or "architecture" not in self.model:
            raise ConfigError('[model] needs an "architecture" key, e.g. architecture = "ImageTokenizer"')
        if not isinstance(self.data, dict) or "name" not in self.data:
            raise ConfigError('[data] needs a "name" key, e.g. name = "fashion-mnist"')
        if isinstance(self.train, dict):
            self.train = train_section(self.train)

    def to_dict(self) -> dict[str, Any]:
        train = dataclasses.asdict(self.train)
        train["betas"] = list(train["betas"])
        return {"model": self.model, "data": self.data, "train": train}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown table(s) {unknown} in the recipe; the tables are {list(SECTIONS)}")
        missing = [s for s in ("model", "data") if s not in d]
        if missing:
            raise ConfigError(f"the recipe has no [{missing[0]}] table; it needs [model] and [data]")
        return cls(model=dict(d["model"]), data=dict(d["data"]), train=train_section(d.get("train", {})))


def train_section(d: dict[str, Any]) -> TrainSection:
    names = {f.name for f in dataclasses.fields(TrainSection)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"[train] has no key(s) {unknown}; it takes {sorted(names)}")
    d = dict(d)
    if "betas" in d:
        d["betas"] = tuple(d["betas"])
    return TrainSection(**d)


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML when it parses (numbers, bools, arrays, quoted strings), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings to a nested dict (a copy is returned)."""
    out = _deep_copy(d)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. train.lr=1e-3), got {item!r}")
        path = key.strip().split(".")
        if path[0] not in SECTIONS:
            raise ConfigError(f"--set {item!r}: the key must start with one of {list(SECTIONS)}")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a table")
        node[path[-1]] = parse_value(text.strip())
    return out


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML recipe, apply ``--set`` overrides, and check it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no training recipe at {path}; see configs/ for examples")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return RunConfig.from_dict(apply_overrides(d, overrides or []))
