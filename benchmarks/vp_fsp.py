"""VP-VAE and FSP against nearest-neighbour VQ, EMA VQ and FSQ on Fashion-MNIST.

One small convolutional autoencoder (28x28 -> 7x7 latents of width 64 -> 28x28), identical for
every quantizer and trained from the same seed on the same batches; only the quantizer differs.
K = 1024 everywhere (FSQ/FSP levels [8, 5, 5, 5], VP d = 4). The models are trained side by side,
one step each in turn, so the step times are measured under the same machine load.

After training, VP's codebook is fitted by k-means++ over encoder outputs of training images (the
paper; ``--vp-codebook queue`` for the authors' code variant). Then on the 10,000 test images:
PSNR and SSIM (images in [-1, 1]) and CVU = exp(entropy of code usage)/K over all test tokens.

    python benchmarks/vp_fsp.py                  # small default: a few minutes on 2 CPU cores
    python benchmarks/vp_fsp.py --steps 3000     # the run for the note
    python benchmarks/vp_fsp.py --knn-only       # VP's kNN: addmm tiles vs kd-tree
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import tokenkit.quantizers as tq
from tokenkit.data.fashion_mnist import load_fashion_mnist
from tokenkit.metrics import code_counts, cvu, perplexity, psnr, ssim
from tokenkit.quantizers import from_channel_last, to_channel_last

WIDTH = 64  # channels of the latent the quantizers receive
K = 1024
LEVELS = [8, 5, 5, 5]
METHODS = ("nearest", "ema", "fsq", "fsp", "vp")
#: every built-in quantizer at the same budget (gumbel: straight-through, tau = 1; matching: 49 <= K)
ALL_METHODS = ("nearest", "ema", "gumbel", "fsq", "fsp", "vp", "matching")


def quantizer(name: str, args: argparse.Namespace) -> tq.Quantizer:
    if name in ("nearest", "ema"):
        return tq.create(name, dim=WIDTH, codebook_size=K)
    if name == "gumbel":
        return tq.create("gumbel", dim=WIDTH, codebook_size=K, hard=True)
    if name == "matching":  # each image's 49 latents take 49 distinct codes of the K
        return tq.create("matching", dim=WIDTH, codebook_size=K, solver_threads=torch.get_num_threads())
    if name in ("fsq", "fsp"):
        return tq.create(name, dim=WIDTH, levels=LEVELS)
    if name == "vp":
        return tq.create(
            "vp", dim=WIDTH, latent_dim=len(LEVELS), codebook_size=K, knn_method=args.knn,
            queue_size=args.vp_queue_size,
        )
    raise ValueError(f"unknown quantizer {name!r}; choose from {ALL_METHODS}")


class AutoEncoder(nn.Module):
    """Conv encoder (28 -> 14 -> 7), quantizer on the 49 latents, mirrored conv decoder."""

    def __init__(self, q: tq.Quantizer) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1), nn.GELU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.GELU(),
            nn.Conv2d(64, WIDTH, 3, 1, 1),
        )
        self.quantizer = q
        self.decoder = nn.Sequential(
            nn.Conv2d(WIDTH, 64, 3, 1, 1), nn.GELU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.GELU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1),
        )

    def latents(self, x: Tensor) -> Tensor:
        return to_channel_last(self.encoder(x))

    def forward(self, x: Tensor) -> tuple[Tensor, tq.QuantizerOutput]:
        out = self.quantizer(self.latents(x))
        return self.decoder(from_channel_last(out.quantized, (7, 7))), out


def images(split: str, limit: int | None = None) -> Tensor:
    data, _ = load_fashion_mnist(split)
    x = torch.from_numpy(data[:limit]).float().div_(127.5).sub_(1.0)
    return x[:, None]


@torch.no_grad()
def evaluate(model: AutoEncoder, test: Tensor, batch: int = 500) -> dict[str, float]:
    model.eval()
    counts = torch.zeros(K, dtype=torch.long)
    p, s = [], []
    for start in range(0, len(test), batch):
        x = test[start : start + batch]
        recon, out = model(x)
        recon = recon.clamp(-1, 1)
        p.append(psnr(recon, x, reduction="none"))
        s.append(ssim(recon, x, reduction="none"))
        counts += code_counts(out.indices, K)
    usage = counts.double()
    return {"psnr": float(torch.cat(p).mean()), "ssim": float(torch.cat(s).mean()),
            "cvu": cvu(usage, K, counts=True), "perplexity": perplexity(usage, K, counts=True)}


@torch.no_grad()
def training_latents(model: AutoEncoder, train: Tensor, count: int) -> Tensor:
    """Encoder outputs ``(count, 49, WIDTH)`` of ``count`` random training images (fixed seed)."""
    subset = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:count]]
    return torch.cat([model.latents(subset[i : i + 500]) for i in range(0, len(subset), 500)])


@torch.no_grad()
def fit_vp_codebook(model: AutoEncoder, train: Tensor, args: argparse.Namespace) -> None:
    q = model.quantizer
    if args.vp_codebook == "queue":
        q.fit_codebook_from_queue()
        return
    # the encoder has no dropout or batch norm; collect latents before eval(), which would otherwise
    # fit an automatic codebook on the queue first
    q.fit_codebook(training_latents(model, train, args.fit_images))


def knn_table(args: argparse.Namespace) -> None:
    """VP's kNN query at the benchmark's shape (queue K * 16 d, ranks k=8 and M=64), backends side by side."""
    from tokenkit.ops.knn import KNNIndex

    g = torch.Generator().manual_seed(args.seed)
    d = len(LEVELS)
    queue = torch.randn(K * 16 * d, d, generator=g)
    z = torch.randn(args.batch * 49, d, generator=g)
    ranks = [8, 64]
    want = None
    timings = {}
    for method in ("tiled", "kdtree"):
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            got = KNNIndex(queue, method=method).query(z, ranks)
            runs.append(time.perf_counter() - start)
        want = got if want is None else want
        timings[method] = (1e3 * statistics.median(runs), float((got - want).abs().max()))
    threads = torch.get_num_threads()
    print(f"kNN: {len(z)} queries, queue {len(queue)} x {d}, ranks {ranks}, threads {threads}")
    print(f"{'backend':<8} {'ms (build + query)':>19} {'vs tiled':>9} {'max |diff|':>11}")
    for method, (ms, diff) in timings.items():
        print(f"{method:<8} {ms:19.1f} {timings['tiled'][0] / ms:8.1f}x {diff:11.2e}")


@torch.no_grad()
def refit_fsp_centroids(model: AutoEncoder, train: Tensor, args: argparse.Namespace) -> None:
    model.quantizer.fit_centroids(training_latents(model, train, args.fit_images))


def train_side_by_side(
    names: list[str], args: argparse.Namespace, train: Tensor, on_step: Callable[[int], None] | None = None
) -> tuple[dict[str, AutoEncoder], dict[str, list[float]]]:
    """Train one autoencoder per quantizer, round robin on the same batches; models and step times (s)."""
    models, optimizers, times = {}, {}, {}
    for name in names:
        torch.manual_seed(args.seed)  # identical autoencoder weights for every quantizer
        model = AutoEncoder(quantizer(name, args))
        models[name] = model
        optimizers[name] = torch.optim.Adam(model.parameters(), lr=args.lr)
        times[name] = []

    order = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        x = train[torch.randint(len(train), (args.batch,), generator=order)]
        for name in names:  # round robin: every model sees the same batch under the same load
            model, opt = models[name], optimizers[name]
            model.train()
            torch.manual_seed(args.seed + step)
            start = time.perf_counter()
            recon, out = model(x)
            loss = (recon - x).abs().mean() + out.loss  # L1 reconstruction (the paper's, without LPIPS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times[name].append(time.perf_counter() - start)
        if on_step is not None:
            on_step(step)
    return models, times


def compare(
    models: dict[str, AutoEncoder], times: dict[str, list[float]], args: argparse.Namespace,
    train: Tensor, test: Tensor,
) -> list[tuple[str, dict[str, float], float]]:
    """Rows ``(quantizer, metrics, median step ms)`` after the post-training fits (VP codebook, FSP refit)."""
    rows = []
    for name, model in models.items():
        if name == "vp":
            fit_vp_codebook(model, train, args)
        metrics = evaluate(model, test)
        step_ms = 1e3 * statistics.median(times[name][min(10, args.steps - 1):])
        rows.append((name, metrics, step_ms))
        if name == "fsp":  # the same trained model, centroids refitted by Lloyd-Max (beyond the paper)
            refit_fsp_centroids(model, train, args)
            rows.append(("fsp+refit", evaluate(model, test), step_ms))
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (also the defaults that benchmarks/report.py starts from)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps per quantizer")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=ALL_METHODS)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--vp-codebook", choices=("train", "queue"), default="train",
                        help="k-means over training-set latents (paper) or over the queue (code)")
    parser.add_argument("--fit-images", type=int, default=2000,
                        help="training images whose 49 latents each feed VP's k-means (paper variant) "
                        "and FSP's Lloyd-Max refit (row fsp+refit)")
    parser.add_argument("--knn", choices=("auto", "tiled", "kdtree"), default="auto", help="VP's kNN backend")
    parser.add_argument("--vp-queue-size", type=int, default=None,
                        help="VP's |S| (default K * 4 d = 16,384: M = 16 neighbours per code; "
                        "the authors' code: K * 16 d = 65,536)")
    parser.add_argument("--knn-only", action="store_true", help="only time VP's kNN backends, side by side")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.knn_only:
        knn_table(args)
        return

    train, test = images("train"), images("test", args.test_images)

    def report_step(step: int) -> None:
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"step {step + 1}/{args.steps}", flush=True)

    models, times = train_side_by_side(args.methods, args, train, report_step)
    rows = compare(models, times, args, train, test)
    reference = dict((n, ms) for n, _, ms in rows).get("fsq")

    print(f"\nFashion-MNIST, K={K}, {args.steps} steps of batch {args.batch}, seed {args.seed}, "
          f"{len(test)} test images, torch threads {torch.get_num_threads()}, "
          f"VP codebook: {args.vp_codebook}, VP queue: {args.vp_queue_size or 'K * 4 d'}")
    print(f"{'quantizer':<10} {'PSNR':>8} {'SSIM':>8} {'CVU':>8} {'step ms':>9} {'vs fsq':>7}")
    for name, m, ms in rows:
        ratio = f"{ms / reference:7.2f}" if reference else "    n/a"
        print(f"{name:<10} {m['psnr']:8.3f} {m['ssim']:8.4f} {m['cvu']:8.4f} {ms:9.1f} {ratio}")


if __name__ == "__main__":
    main()
