"""The training loop: plain, in one function, for one process or many under ``torchrun``.

Per step: next batch -> (bf16 autocast) ``loss = model(x, mask).loss`` -> backward -> clip the global
gradient norm -> AdamW step. Every ``log_every`` steps a line goes to ``log.jsonl`` and the progress
bar; every ``eval_every`` steps the model is scored on the eval split (reconstruction loss, PSNR for
images, code usage and perplexity over all eval tokens) and a reconstruction grid is drawn; every
``ckpt_every`` steps (and at the end) ``checkpoint.safetensors`` is written.

Exact resume. A checkpoint holds the model, AdamW's moments, the step, the data position (epoch
and batch within it) and every rank's torch/numpy/python RNG state. The data order depends only
on ``(seed, epoch)`` (``DistributedSampler``), and each item is loaded under its own seed derived
from ``(seed, epoch, index)``, so random crops do not depend on workers or on where a run started.
Evaluation runs under a forked RNG, so it never changes the training stream. Hence ``k`` steps,
resume, ``k`` more steps ends with the same weights as ``2k`` steps in one go.

Data parallel (``torchrun --nproc_per_node=N``): gloo on CPU, nccl on GPU, ``DistributedSampler``
shards, DDP with ``broadcast_buffers=False``: the quantizers all-reduce their own statistics (EMA
sums, initialisation) so their buffers agree on every rank, and rank 0's buffers must not overwrite
them before each forward. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from tokenkit import pictures
from tokenkit.files import atomic_write
from tokenkit.metrics.image import psnr
from tokenkit.models import Tokenizer
from tokenkit.ops import distributed as tkdist
from tokenkit.train import checkpoint as ckpt
from tokenkit.train.config import RunConfig, TrainSection, load_config

CHECKPOINT = "checkpoint.safetensors"
LOG = "log.jsonl"
#: one bar per code: beyond this the histogram takes longer to draw than it is worth reading
USAGE_PLOT_MAX_CODES = 16384


# -- processes and devices -------------------------------------------------------------------
@dataclass
class Processes:
    rank: int
    world_size: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_processes(device: str) -> Processes:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError('train.device = "cuda" but no CUDA device is visible; use "cpu" or "auto"')
    initialized_here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        initialized_here = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return Processes(rank, world, dev, initialized_here)


# -- data order -----------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def item_seeds(seed: int, epoch: int, indices: list[int]) -> list[int]:
    """One 63-bit seed per ``(seed, epoch, index)``, independent of order, rank and workers."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([seed * 1_000_003 + epoch], dtype=np.uint64))
        mixed = _splitmix64(base ^ np.asarray(indices, dtype=np.uint64))
    return [int(s >> np.uint64(1)) for s in mixed]


class SeededItems(Dataset):
    """Loads ``dataset[i]`` for a key ``(i, seed)`` with torch/numpy/python RNGs seeded by ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


def epoch_batches(
    dataset: Dataset, epoch: int, t: TrainSection, procs: Processes
) -> list[list[tuple[int, int]]]:
    """This rank's batches of ``(index, item seed)`` for ``epoch`` (full batches only)."""
    sampler = DistributedSampler(
        dataset, num_replicas=procs.world_size, rank=procs.rank, shuffle=True, seed=t.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    indices = list(sampler)
    keys = list(zip(indices, item_seeds(t.seed, epoch, indices), strict=True))
    b = t.batch_size
    return [keys[i : i + b] for i in range(0, len(keys) - b + 1, b)]


def collate_for(model: Tokenizer):
    if model.modality == "audio":
        from tokenkit.data import pad_collate

        return pad_collate
    return None


def make_loader(dataset: Dataset, batches: list, collate, num_workers: int) -> DataLoader:
    # a private generator: creating the iterator must not draw from the global torch RNG
    return DataLoader(
        SeededItems(dataset),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )


def train_stream(
    dataset: Dataset, state: ckpt.TrainState, t: TrainSection, procs: Processes, collate
) -> Iterator[Any]:
    """Batches from the data position in ``state`` onward; advances ``state.epoch/batch_in_epoch``."""
    while True:
        batches = epoch_batches(dataset, state.epoch, t, procs)
        if not batches:
            raise ValueError(
                f"the training split has {len(dataset)} items, fewer than one batch of {t.batch_size} per "
                f"process x {procs.world_size} processes; lower train.batch_size or use more data"
            )
        for batch in make_loader(dataset, batches[state.batch_in_epoch :], collate, t.num_workers):
            state.batch_in_epoch += 1
            yield batch
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


def split_batch(batch: Any, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """A loader batch -> ``(x, mask)`` on ``device`` (images: a tensor; audio: ``(x, mask)``)."""
    if isinstance(batch, (tuple, list)):
        x, mask = batch
        return x.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    return batch.to(device, non_blocking=True), None


# -- optimisation -----------------------------------------------------------------------------
def build_optimizer(model: Tokenizer, t: TrainSection) -> torch.optim.AdamW:
    """AdamW; weight decay on the encoder/decoder weight matrices only (not biases, norms, codebooks)."""
    quantizer_params = {id(p) for p in model.quantizer.parameters()}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in quantizer_params else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas)


def lr_at(step: int, t: TrainSection) -> float:
    """Learning rate for the step that follows ``step`` completed steps."""
    if t.schedule == "constant" and step >= t.warmup_steps:
        return t.lr
    return warmup_cosine_lr(step, t.steps, t.lr, t.warmup_steps, t.min_lr_ratio)


def warmup_cosine_lr(step: int, steps: int, peak: float, warmup: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``min_ratio * peak``
    at ``steps`` (for the step that follows ``step`` completed steps)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    floor = min_ratio * peak
    return floor + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (peak - floor)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


# -- evaluation -------------------------------------------------------------------------------
def eval_loader(dataset: Dataset, t: TrainSection, procs: Processes, collate) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=procs.world_size, rank=procs.rank, shuffle=False)
    return DataLoader(
        dataset, batch_size=t.batch_size, sampler=sampler, num_workers=t.num_workers, collate_fn=collate
    )


@torch.no_grad()
def evaluate(model: Tokenizer, loader: DataLoader, t: TrainSection, device: torch.device) -> dict[str, Any]:
    """Mean reconstruction loss, PSNR (images), code usage and perplexity over the eval tokens.

    Sums are all-reduced, so every rank returns the same numbers. Returns also the first batch
    (``"example"``: inputs and reconstructions) for pictures.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # items, recon*items, qloss*items, psnr sum
    counts = torch.zeros(model.codebook_size, dtype=torch.float64, device=device)
    example = None
    for i, batch in enumerate(loader):
        if t.eval_batches and i >= t.eval_batches:
            break
        x, mask = split_batch(batch, device)
        with autocast(device, t.bf16):
            out = model(x, mask)
        n = x.shape[0]
        sums[0] += n
        sums[1] += float(out.recon_loss) * n
        sums[2] += float(out.quantizer_loss) * n
        if model.modality == "image":
            sums[3] += _psnr(x, out.reconstruction.float().clamp(-1, 1)).sum()
        token_mask = model.token_mask(mask) if hasattr(model, "token_mask") else None
        flat = out.tokens.reshape(-1) if token_mask is None else out.tokens[token_mask]
        counts += torch.bincount(flat, minlength=model.codebook_size).to(counts)
        if example is None:
            example = (x.detach().cpu(), out.reconstruction.detach().float().cpu(), mask)
    tkdist.all_reduce_sum(sums)
    tkdist.all_reduce_sum(counts)
    if was_training:
        model.train()
    items = max(float(sums[0]), 1.0)
    p = counts / counts.sum().clamp_min(1.0)
    entropy = float(-(p * p.clamp_min(1e-30).log()).sum())
    result: dict[str, Any] = {
        "items": int(sums[0]),
        "recon_loss": float(sums[1]) / items,
        "quantizer_loss": float(sums[2]) / items,
        "usage": float((counts > 0).sum()) / model.codebook_size,
        "perplexity": math.exp(entropy),
    }
    if model.modality == "image":
        result["psnr"] = float(sums[3]) / items
    result["example"] = example
    result["counts"] = counts.cpu()
    return result


def _psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR on [-1, 1] (peak-to-peak 2), capped at 100 dB for exact reconstructions."""
    return psnr(x.float(), y, data_range=2.0, reduction="none").double().clamp_max(100.0)


def draw_pictures(example: tuple, counts: Tensor, out_dir: Path, step: int, modality: str) -> list[str]:
    """Reconstruction grid (images) or spectrogram comparison (audio), and the code-usage histogram."""
    x, x_hat, mask = example
    folder = out_dir / "pictures"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    recon = folder / f"recon_{step:07d}.png"
    if modality == "image":
        written.append(pictures.reconstruction_grid(x[:8], x_hat[:8].clamp(-1, 1), recon))
    elif modality == "audio":
        length = int(mask[0].sum()) if mask is not None else x.shape[-1]
        clip, clip_hat = x[0, 0, :length], x_hat[0, 0, :length].clamp(-1, 1)
        written.append(pictures.spectrogram_comparison(clip, clip_hat, recon))
    if counts.sum() > 0 and counts.numel() <= USAGE_PLOT_MAX_CODES:
        written.append(pictures.codebook_usage_plot(counts, folder / f"usage_{step:07d}.png"))
    return [str(p) for p in written]


# -- files ------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_log(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("step", 0) <= up_to_step]


def gather_rng_states() -> list[dict[str, Tensor]]:
    """Every rank's RNG state (a collective under DDP: call it on all ranks)."""
    mine = ckpt.rng_state()
    if not tkdist.is_distributed():
        return [mine]
    world = tkdist.world_size()
    gathered = {k: tkdist.all_gather_cat(v.unsqueeze(0)) for k, v in mine.items()}
    return [{k: v[r] for k, v in gathered.items()} for r in range(world)]


def _as_config(config: RunConfig | dict | str | os.PathLike) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return RunConfig.from_dict(config)
    return load_config(config)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# -- the loop -----------------------------------------------------------------------------------
def fit(
    config: RunConfig | dict | str | os.PathLike, resume: bool = False
) -> tuple[Tokenizer, dict[str, Any]]:
    """Train as the recipe says; returns the trained tokenizer (unwrapped) and the run summary."""
    from tokenkit.data import build_dataset

    cfg = _as_config(config)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    procs = setup_processes(t.device)
    try:
        return _fit(cfg, t, procs, resume, build_dataset)
    finally:
        if procs.initialized_here:
            dist.destroy_process_group()


def _fit(cfg: RunConfig, t: TrainSection, procs: Processes, resume: bool, build_dataset) -> tuple:
    out_dir = Path(t.out_dir)
    ckpt_path = out_dir / CHECKPOINT
    device = procs.device

    _seed_everything(t.seed)  # same initial weights on every rank
    model = Tokenizer.from_config_dict(cfg.model).to(device)
    optimizer = build_optimizer(model, t)
    state = ckpt.TrainState()
    records: list[dict[str, Any]] = []
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start")
        saved = ckpt.read_checkpoint(ckpt_path)
        if len(saved.rng) != procs.world_size:
            raise ValueError(
                f"{ckpt_path} was written by {len(saved.rng)} process(es); resume it with the same number "
                f"(this run has {procs.world_size}) to continue exactly"
            )
        ckpt.load_weights(model, {k: v.to(device) for k, v in saved.model.items()})
        ckpt.load_optimizer_state(optimizer, saved.optim)
        state = saved.state
        ckpt.set_rng_state(saved.rng[procs.rank])
        records = read_log(out_dir / LOG, state.step)
    else:
        _seed_everything(t.seed + procs.rank)  # each rank its own stream (Gumbel noise, dropout)

    train_set = build_dataset(cfg.data, "train")
    collate = collate_for(model)
    eval_set = build_dataset(cfg.data, t.eval_split)
    net: nn.Module = model
    if procs.world_size > 1:
        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=t.find_unused_parameters,
        )
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "recipe.json", json.dumps(cfg.to_dict(), indent=2))

    start_step = state.step
    losses: list[Tensor] = []
    started = time.perf_counter()
    show = t.progress and procs.is_main
    bar = tqdm(total=t.steps, initial=state.step, disable=not show, dynamic_ncols=True)
    stream = train_stream(train_set, state, t, procs, collate)
    model.train()
    while state.step < t.steps:
        x, mask = split_batch(next(stream), device)
        lr = lr_at(state.step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, t.bf16):
            out = net(x, mask)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip) if t.grad_clip else None
        optimizer.step()
        state.step += 1
        losses.append(out.loss.detach())
        bar.update(1)

        step = state.step
        if step % t.log_every == 0 or step == t.steps:
            record = _log_record(step, lr, out, grad_norm)
            bar.set_postfix(loss=f"{record['loss']:.4f}", usage=f"{record.get('usage', math.nan):.3f}",
                            ppl=f"{record.get('perplexity', math.nan):.1f}")
            records.append(record)
            if procs.is_main:
                write_atomic(out_dir / LOG, "".join(json.dumps(r) + "\n" for r in records))
        if t.eval_every and step % t.eval_every == 0 and step < t.steps:
            result = _eval_step(model, eval_set, t, procs, collate, out_dir, step)
            records.append({"step": step, "eval": result})
            if procs.is_main:
                write_atomic(out_dir / LOG, "".join(json.dumps(r) + "\n" for r in records))
        if (t.ckpt_every and step % t.ckpt_every == 0) or step == t.steps:
            rngs = gather_rng_states()
            if procs.is_main:
                ckpt.save_checkpoint(ckpt_path, model, optimizer, state, rngs, cfg.to_dict())
    bar.close()

    # The checkpoint keeps the training state; post-fit and the final evaluation work on a copy,
    # so a later --resume continues exactly as if this run had not stopped here.
    final = copy.deepcopy(model)
    fitted = post_fit(final, train_set, t, procs, collate)
    last_eval = _eval_step(final, eval_set, t, procs, collate, out_dir, state.step)
    if fitted:
        last_eval["post_fit"] = fitted
    records.append({"step": state.step, "eval": last_eval})
    exported = None
    if procs.is_main:
        write_atomic(out_dir / LOG, "".join(json.dumps(r) + "\n" for r in records))
        if t.export and hasattr(final, "save_pretrained"):
            exported = str(final.save_pretrained(out_dir / "tokenizer"))

    history = [float(v) for v in losses]
    summary = {
        "step": state.step,
        "rank": procs.rank,
        "start_step": start_step,
        "world_size": procs.world_size,
        "loss_history": history,
        "first_loss": history[0] if history else None,
        "final_loss": history[-1] if history else None,
        "eval": last_eval,
        "checkpoint": str(ckpt_path),
        "tokenizer": exported,
        "out_dir": str(out_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - started,
    }
    return final.eval(), summary


def _log_record(step: int, lr: float, out: Any, grad_norm: Tensor | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "step": step,
        "lr": lr,
        "loss": float(tkdist.all_reduce_mean(out.loss.detach().clone())),
        "recon_loss": float(out.recon_loss.detach()),
        "quantizer_loss": float(out.quantizer_loss.detach()),
    }
    for key, value in out.stats.items():
        record[key] = float(value)
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    return record


def post_fit(model: Tokenizer, dataset: Dataset, t: TrainSection, procs: Processes, collate) -> list[str]:
    """Call the quantizer's post-training fits (``t.post_fit`` methods it has) with encoder outputs.

    The latents come from the first ``post_fit_batches`` batches of epoch 0 on every rank (valid
    positions only), with the encoder/decoder in eval mode; the fits all-reduce across ranks.
    """
    methods = [m for m in t.post_fit if callable(getattr(model.quantizer, m, None))]
    if not methods:
        return []
    batches = epoch_batches(dataset, 0, t, procs)[: max(t.post_fit_batches, 1)]
    for child in model.children():
        if child is not model.quantizer:
            child.eval()
    parts = []
    with _forked_rng(procs.device), torch.no_grad():
        for batch in make_loader(dataset, batches, collate, t.num_workers):
            x, mask = model.check_input(*split_batch(batch, procs.device))
            with autocast(procs.device, t.bf16):
                lat = model.encode_latents(x, mask)
            z = lat.z.float()
            parts.append(z[lat.mask] if lat.mask is not None else z.reshape(-1, z.shape[-1]))
        latents = torch.cat(parts)
        for method in methods:
            getattr(model.quantizer, method)(latents)
    return methods


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Run a block without consuming the caller's torch/numpy/python random streams."""
    devices = [device] if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _eval_step(model, eval_set, t, procs, collate, out_dir: Path, step: int) -> dict[str, Any]:
    """Evaluate under a forked RNG (the training stream is untouched); rank 0 draws pictures."""
    with _forked_rng(procs.device):
        result = evaluate(model, eval_loader(eval_set, t, procs, collate), t, procs.device)
    example, counts = result.pop("example"), result.pop("counts")
    if procs.is_main and t.pictures and example is not None:
        result["pictures"] = draw_pictures(example, counts, out_dir, step, model.modality)
    return result


def train(config: RunConfig | dict | str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """Train from a recipe (a :class:`RunConfig`, its dict, or a TOML path); returns the run summary."""
    return fit(config, resume=resume)[1]
