"""One command that runs the benchmarks on Fashion-MNIST and writes a dated markdown report + plots.

Reuses the benchmark scripts next to it, with the same data and budget for every method:

1. ``vp_fsp.py``: the same small conv autoencoder trained side by side, one model per quantizer
   (every built-in quantizer at K = 1024), then PSNR / SSIM / CVU / perplexity on test images.
2. ``capacity.py``: effective capacity of matching vs nearest-neighbour assignment on the shipped
   ``pivq-fashion`` (same encoder latents, same codebook) and the PSNR of decoding each.
3. Precision / recall / density / coverage (k = 5, FID Inception features) against held-out test
   images of: real images (the ceiling at that set size), PI-VQ reconstructions, PI-VQ
   interpolation samples, ``vq-fashion`` reconstructions, and samples of a small causal
   transformer prior (``ar_prior.py``) trained on ``vq-fashion`` tokens of training images.

    python benchmarks/report.py                       # the default run (about 15-20 min, one thread)
    python benchmarks/report.py --steps 50 --num 60 --ar-steps 50 --out /tmp/r.md --image /tmp/r.png
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ar_prior
import capacity
import torch
import vp_fsp
from torch import Tensor
from tqdm.auto import tqdm

import tokenkit
from tokenkit.files import atomic_write
from tokenkit.pictures import pyplot, save_figure

PRDC_KEYS = ("precision", "recall", "density", "coverage")
#: PRDC sets in table order: key -> label (``held_out`` is the real set they are scored against)
PRDC_LABELS = {
    "references": "real test images (real vs real: the ceiling)",
    "reconstructions": "PI-VQ reconstructions (pivq-fashion)",
    "samples": "PI-VQ interpolation samples",
    "vq_reconstructions": "VQ reconstructions (vq-fashion)",
    "ar_samples": "VQ + AR prior samples",
}


@dataclass
class Report:
    """Everything the markdown and the plots show."""

    machine: dict[str, str]
    command: str
    comparison: list[dict[str, float | str]]
    comparison_setup: dict[str, int | str]
    capacity: dict[str, dict[str, float]]
    capacity_setup: dict[str, int | str]
    prdc: dict[str, dict[str, float]]
    prdc_setup: dict[str, int | str]
    ar: dict[str, float | int]
    seconds: dict[str, float] = field(default_factory=dict)
    #: figure links relative to the markdown file
    figures: list[str] = field(default_factory=list)


# -- machine ------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    """Date, CPU, cores, load at start, torch version and threads, as strings for the report."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "load": f"{load:.2f}",
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }


# -- the parts ----------------------------------------------------------------------------------


def comparison_args(steps: int, seed: int = 0, **overrides) -> argparse.Namespace:
    """vp_fsp.py's defaults with ``steps``, ``seed`` and any other option replaced."""
    args = vp_fsp.build_parser().parse_args([])
    args.steps, args.seed = steps, seed
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def run_comparison(
    names: list[str], args: argparse.Namespace, train: Tensor, test: Tensor, progress: bool = True
) -> list[dict[str, float | str]]:
    """Quantizers side by side (vp_fsp.py); one row per quantizer with bits/token and step ms."""
    bar = tqdm(total=args.steps, desc="quantizers", disable=not progress)
    models, times = vp_fsp.train_side_by_side(names, args, train, lambda step: bar.update())
    bar.close()
    rows = []
    for name, metrics, ms in vp_fsp.compare(models, times, args, train, test):
        size = models[name.split("+")[0]].quantizer.codebook_size
        rows.append({"quantizer": name, "codes": size, "bits": math.log2(size), **metrics, "ms": ms})
    return rows


def run_capacity(tok, images: Tensor) -> dict[str, dict[str, float]]:
    """capacity.py's matching vs nearest rows, plus ``ratio`` (matching / nearest capacity)."""
    rows = capacity.capacity(tok, images)
    rows["ratio"] = {"capacity": rows["matching"]["capacity"] / rows["nearest"]["capacity"]}
    return rows


@torch.inference_mode()
def grid_tokens(tok, images: Tensor, batch_size: int = 500, progress: bool = True) -> Tensor:
    """A grid tokenizer's tokens of ``images``, flattened in raster order: ``(N, H' * W')``."""
    chunks = images.split(batch_size)
    out = [tok.encode(x).flatten(1) for x in tqdm(chunks, desc="VQ tokens", disable=not progress)]
    return torch.cat(out)


def run_ar_prior(
    tok,
    train_images: Tensor,
    test_images: Tensor,
    num: int,
    steps: int,
    config: dict | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, float | int], Tensor]:
    """Train the prior on ``tok``'s tokens of ``train_images``, sample and decode ``num`` images."""
    train_tokens = grid_tokens(tok, train_images, progress=progress)
    test_tokens = grid_tokens(tok, test_images, progress=progress)
    cfg = ar_prior.PriorConfig(vocab_size=tok.codebook_size, seq_len=train_tokens.shape[1], **(config or {}))
    prior = ar_prior.TokenPrior(cfg)
    start = time.perf_counter()
    losses = ar_prior.train_prior(prior, train_tokens, steps, seed=seed, progress=progress)
    train_seconds = time.perf_counter() - start
    tokens = prior.sample(num, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    side = math.isqrt(cfg.seq_len)
    with torch.inference_mode():
        images = tok.decode(tokens.view(num, side, side)).clamp(-1.0, 1.0)
    info = {
        "train_images": len(train_images),
        "steps": steps,
        "parameters": sum(p.numel() for p in prior.parameters()),
        "depth": cfg.depth,
        "width": cfg.width,
        "first_bits": losses[0] / math.log(2),
        "train_bits": ar_prior.nll_bits(prior, train_tokens[:5000]),
        "test_bits": ar_prior.nll_bits(prior, test_tokens),
        "test_images": len(test_images),
        "uniform_bits": math.log2(tok.codebook_size),
        "train_seconds": train_seconds,
    }
    return info, images


def run_prdc(
    sets: dict[str, Tensor], features: Callable[[Tensor], Tensor], chunk: int = 64, progress: bool = True
) -> dict[str, dict[str, float]]:
    """PRDC of every set but ``held_out`` against ``held_out``, on ``features`` (e.g. Inception)."""
    bar = tqdm(total=sum(len(x) for x in sets.values()), desc="features", disable=not progress)
    feats = {}
    for name, images in sets.items():
        parts = []
        for x in images.split(chunk):
            parts.append(features(x))
            bar.update(len(x))
        feats[name] = torch.cat(parts)
    bar.close()
    return capacity.prdc_rows(feats, [name for name in sets if name != "held_out"])


# -- markdown ------------------------------------------------------------------------------------


def comparison_table(report: Report) -> list[str]:
    lines = [
        "| quantizer | codes | bits/token | PSNR (dB) | SSIM | CVU | perplexity | ms/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.comparison:
        lines.append(
            f"| {r['quantizer']} | {r['codes']} | {r['bits']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} "
            f"| {r['cvu']:.4f} | {r['perplexity']:.1f} | {r['ms']:.1f} |"
        )
    return lines


def comparison_text(report: Report) -> str:
    rows, setup = report.comparison, report.comparison_setup
    best = max(rows, key=lambda r: r["psnr"])
    worst = min(rows, key=lambda r: r["psnr"])
    most = max(rows, key=lambda r: r["cvu"])
    least = min(rows, key=lambda r: r["cvu"])
    fast = min(rows, key=lambda r: r["ms"])
    slow = max(rows, key=lambda r: r["ms"])
    return (
        f"Every quantizer sits in the same conv autoencoder (7x7 = 49 latents of width 64), starts "
        f"from the same weights and sees the same {setup['steps']} batches of {setup['batch']} "
        f"training images; only the quantizer differs. Metrics are on the first {setup['test_images']} "
        f"test images. At this short budget {best['quantizer']} reconstructs best "
        f"({best['psnr']:.2f} dB) and {worst['quantizer']} worst ({worst['psnr']:.2f} dB). Code usage "
        f"(CVU = exp(entropy of code usage) / 1024 over all test tokens; perplexity = exp(entropy)) "
        f"ranges from {least['cvu']:.3f} ({least['quantizer']}) to {most['cvu']:.3f} "
        f"({most['quantizer']}). Steps took {fast['ms']:.0f} ms ({fast['quantizer']}) to "
        f"{slow['ms']:.0f} ms ({slow['quantizer']}) (median, one thread on a CPU shared with other "
        f"jobs: compare them with each other only). fsq and fsp have 1000 codes (levels 8,5,5,5), the "
        f"others 1024; fsp+refit is the trained fsp model with Lloyd-Max centroids refitted after "
        f"training; gumbel is straight-through at temperature 1. This is one seed and one short run: a "
        f"longer run can change the ranking (docs/vp_fsp.md has 1000-step numbers for five of them)."
    )


def capacity_table(report: Report) -> list[str]:
    m = report.capacity_setup["num_latents"]
    lines = [
        f"| assignment | distinct codes per image (of M = {m}) | effective capacity | PSNR (dB) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("matching", "nearest"):
        r = report.capacity[name]
        lines.append(f"| {name} | {r['distinct']:.2f} | {r['capacity']:.3f} | {r['psnr']:.2f} |")
    lines.append(f"| **ratio matching / nearest** | | **{report.capacity['ratio']['capacity']:.2f}x** | |")
    return lines


def capacity_text(report: Report) -> str:
    c, setup = report.capacity, report.capacity_setup
    ratio = c["ratio"]["capacity"]
    gap = c["matching"]["psnr"] - c["nearest"]["psnr"]
    return (
        f"On the shipped `{setup['name']}` and the first {setup['images']} test images, the same "
        f"encoder latents are assigned to the same codebook (K = {setup['codebook_size']}) in two ways. "
        f"Matching gives every latent of an image its own code; nearest-neighbour gives "
        f"{c['nearest']['distinct']:.2f} distinct codes of {setup['num_latents']} on average. The "
        f"capacity ratio is {ratio:.2f}x here, against the 3.5x the PI-VQ paper reports for its own "
        f"models. Decoding the matching tokens gives {abs(gap):.2f} dB "
        f"{'more' if gap >= 0 else 'less'} PSNR than decoding the nearest-neighbour ones. This model "
        f"was trained with matching; a model trained with nearest-neighbour quantization is not "
        f"part of this comparison."
    )


def prdc_table(report: Report) -> list[str]:
    lines = ["| set | precision | recall | density | coverage |", "|---|---:|---:|---:|---:|"]
    for name, label in PRDC_LABELS.items():
        if name in report.prdc:
            r = report.prdc[name]
            lines.append(f"| {label} | " + " | ".join(f"{r[k]:.3f}" for k in PRDC_KEYS) + " |")
    return lines


def prdc_text(report: Report) -> str:
    p, setup, ar = report.prdc, report.prdc_setup, report.ar
    real, pivq, arr = p["references"], p["samples"], p["ar_samples"]

    def versus(key: str) -> str:
        a, b = pivq[key], arr[key]
        word = "higher" if a > b else "lower" if a < b else "the same"
        return f"{key} {a:.3f} vs {b:.3f} ({word} for PI-VQ)"

    return (
        f"Each set has {setup['num']} images and is scored against {setup['num']} other held-out test "
        f"images (k = 5, FID Inception features of the 28x28 images enlarged to 299x299, so these "
        f"values only rank methods on this data and set size). The real-vs-real row is the ceiling at "
        f"this set size (precision {real['precision']:.3f}, coverage {real['coverage']:.3f}). PI-VQ "
        f"interpolation samples ({setup['parents']} parents from {setup['num']} test reference "
        f"images, one decoder pass) against VQ + AR prior samples (temperature 1, no reference images "
        f"needed): {versus('precision')}, {versus('recall')}, {versus('density')}, "
        f"{versus('coverage')}. The prior is small and briefly trained ({ar['depth']} layers, width "
        f"{ar['width']}, {ar['parameters']:,} parameters, {ar['steps']} steps of batch 64 on the "
        f"`vq-fashion` tokens of {ar['train_images']} training images): its final negative "
        f"log-likelihood is {ar['train_bits']:.3f} bits per token on training sequences and "
        f"{ar['test_bits']:.3f} on {ar['test_images']} test images (a uniform guess: "
        f"{ar['uniform_bits']:.0f} bits; first step: {ar['first_bits']:.3f}). The reconstruction rows show "
        f"how close each tokenizer's decoder, which also decodes its samples, gets to real images here. "
        f"Every row is one draw of {setup['num']} images with one seed and no error bars, so differences "
        f"of a few hundredths between rows are not established by this run."
    )


def render(report: Report) -> str:
    """The whole report as markdown."""
    m, s = report.machine, report.seconds
    took = ", ".join(f"{k} {v:.0f} s" for k, v in s.items() if k != "total")
    lines = [
        "# tokenkit benchmark report",
        "",
        f"- Date: {m['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores (load average {m['load']} at start), "
        f"torch {m['torch']}, {m['threads']} torch thread(s), Python {m['python']}",
        f"- Command: `{report.command}`",
        f"- Took {s.get('total', 0.0) / 60:.1f} min ({took})",
        "- Data: Fashion-MNIST (Debian package `dataset-fashion-mnist`), images in [-1, 1]",
        "",
        f"## 1. Quantizers at the same budget (K = 1024, {report.comparison_setup['steps']} steps)",
        "",
        *comparison_table(report),
        "",
        comparison_text(report),
        "",
        "## 2. Effective capacity: matching vs nearest-neighbour (pivq-fashion)",
        "",
        *capacity_table(report),
        "",
        capacity_text(report),
        "",
        "## 3. Precision / recall / density / coverage against held-out test images",
        "",
        *prdc_table(report),
        "",
        prdc_text(report),
        "",
    ]
    for link in report.figures:
        lines += [f"![{Path(link).stem}]({link})", ""]
    return "\n".join(lines)


def write_markdown(report: Report, path: str | os.PathLike) -> Path:
    text = render(report)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# -- plots ---------------------------------------------------------------------------------------


def _pyplot():
    plt = pyplot()
    if plt is None:
        raise RuntimeError("the report draws its figures with matplotlib: pip install matplotlib")
    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    return save_figure(fig, path, dpi=110)


def plot_report(report: Report, path: str | os.PathLike) -> Path:
    """Bars: PSNR and CVU per quantizer, capacity matching vs nearest, PRDC per set."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = [r["quantizer"] for r in report.comparison]
    axes[0, 0].bar(names, [r["psnr"] for r in report.comparison], color="tab:blue")
    axes[0, 0].set(title=f"PSNR after {report.comparison_setup['steps']} steps", ylabel="dB")
    axes[0, 1].bar(names, [r["cvu"] for r in report.comparison], color="tab:orange")
    axes[0, 1].set(title="codebook usage (CVU)", ylim=(0, 1))
    for ax in axes[0]:
        ax.tick_params(axis="x", labelrotation=30)
    cap = report.capacity
    bars = axes[1, 0].bar(
        ["matching", "nearest"],
        [cap[k]["capacity"] for k in ("matching", "nearest")],
        color=["tab:green", "tab:gray"],
    )
    for bar, key in zip(bars, ("matching", "nearest"), strict=True):
        axes[1, 0].annotate(
            f"{cap[key]['psnr']:.2f} dB",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
        )
    axes[1, 0].set(
        title=f"effective capacity, {report.capacity_setup['name']} (ratio {cap['ratio']['capacity']:.2f}x)",
        ylim=(0, 1.1),
    )
    sets = [k for k in PRDC_LABELS if k in report.prdc]
    width = 0.8 / len(sets)
    for i, name in enumerate(sets):
        xs = [j + (i - (len(sets) - 1) / 2) * width for j in range(len(PRDC_KEYS))]
        axes[1, 1].bar(xs, [report.prdc[name][k] for k in PRDC_KEYS], width, label=PRDC_LABELS[name])
    axes[1, 1].set_xticks(range(len(PRDC_KEYS)), PRDC_KEYS)
    axes[1, 1].set(title=f"PRDC vs {report.prdc_setup['num']} held-out images")
    axes[1, 1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.suptitle(f"tokenkit benchmark report, {report.machine['date']}")
    fig.tight_layout()
    return _save(fig, path)


def tile(images: Tensor, cols: int = 8) -> Tensor:
    """``(N, 1, H, W)`` images in [-1, 1] -> one ``(rows * H, cols * W)`` array in [0, 1]."""
    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = torch.ones(rows * cols, h, w)
    canvas[:n] = (images[:, 0].float() + 1.0) / 2.0
    return canvas.view(rows, cols, h, w).permute(0, 2, 1, 3).reshape(rows * h, cols * w).clamp(0, 1)


def plot_samples(groups: dict[str, Tensor], path: str | os.PathLike, count: int = 16) -> Path:
    """One panel of ``count`` images per group (e.g. held-out, PI-VQ samples, AR samples)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 2.4))
    for ax, (title, images) in zip(axes, groups.items(), strict=True):
        ax.imshow(tile(images[:count]).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


# -- main ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps per quantizer (same batches)")
    parser.add_argument("--methods", nargs="+", default=list(vp_fsp.ALL_METHODS), choices=vp_fsp.ALL_METHODS)
    parser.add_argument("--test-images", type=int, default=5000, help="test images for PSNR/SSIM/CVU")
    parser.add_argument("--capacity-num", type=int, default=1000, help="test images for the capacity")
    parser.add_argument("--num", type=int, default=300, help="images per PRDC set (samples and held-out)")
    parser.add_argument("--parents", type=int, default=2, help="references mixed per PI-VQ sample")
    parser.add_argument("--ar-steps", type=int, default=1500, help="training steps of the AR prior")
    parser.add_argument("--ar-train-images", type=int, default=20000, help="training images for the prior")
    parser.add_argument("--ar-depth", type=int, default=2)
    parser.add_argument("--ar-width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/report.md")
    parser.add_argument("--image", default="docs/images/report.png")
    parser.add_argument("--samples-image", default=None, help="default: IMAGE with -samples before .png")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    seconds = {}
    machine = machine_info()
    train = vp_fsp.images("train")
    test = vp_fsp.images("test", max(args.test_images, args.capacity_num, 2 * args.num))

    t0 = time.perf_counter()
    cargs = comparison_args(args.steps, args.seed)
    comparison = run_comparison(args.methods, cargs, train, test[: args.test_images])
    seconds["quantizers"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pivq = tokenkit.load("pivq-fashion")
    cap = run_capacity(pivq, test[: args.capacity_num])
    sets = capacity.interpolation_sets(pivq, test, args.num, args.parents, args.seed)
    seconds["capacity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vq = tokenkit.load("vq-fashion")
    ar_info, ar_images = run_ar_prior(
        vq,
        train[: args.ar_train_images],
        test[: args.capacity_num],
        args.num,
        args.ar_steps,
        {"depth": args.ar_depth, "width": args.ar_width},
        args.seed,
    )
    with torch.inference_mode():
        sets["vq_reconstructions"] = vq.decode(vq.encode(sets["references"])).clamp(-1.0, 1.0)
    sets["ar_samples"] = ar_images
    seconds["AR prior"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from tokenkit.metrics import InceptionFeatures

    prdc = run_prdc(sets, InceptionFeatures())
    seconds["PRDC"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start

    report = Report(
        machine=machine,
        command="python " + shlex.join(sys.argv),
        comparison=comparison,
        comparison_setup={"steps": args.steps, "batch": cargs.batch, "test_images": args.test_images},
        capacity=cap,
        capacity_setup={
            "name": "pivq-fashion",
            "images": args.capacity_num,
            "num_latents": pivq.config.num_latents,
            "codebook_size": pivq.codebook_size,
        },
        prdc=prdc,
        prdc_setup={"num": args.num, "parents": args.parents},
        ar=ar_info,
        seconds=seconds,
    )
    samples_image = args.samples_image or str(
        Path(args.image).with_name(Path(args.image).stem + "-samples.png")
    )
    report.figures = [os.path.relpath(p, Path(args.out).parent) for p in (args.image, samples_image)]
    plot_report(report, args.image)
    plot_samples(
        {
            "held-out test images": sets["held_out"],
            "PI-VQ interpolation samples": sets["samples"],
            "VQ + AR prior samples": sets["ar_samples"],
        },
        samples_image,
    )
    write_markdown(report, args.out)
    print(render(report))
    print(f"wrote {args.out}, {args.image}, {samples_image} in {seconds['total'] / 60:.1f} min")


if __name__ == "__main__":
    main()
