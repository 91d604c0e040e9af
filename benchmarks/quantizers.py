"""Quantizer speed, measured side by side in one run (never run as a test).

1. forward+backward of tokenkit's ``nearest`` and ``ema`` against vector-quantize-pytorch's
   ``VectorQuantize(dim=64, codebook_size=1024)`` on x of shape (64, 256, 64);
2. nearest-neighbour lookup throughput (``tokenkit.ops.nearest_code``) against the plain GEMM of the
   same shape (``torch.mm`` into a preallocated output: the ceiling) and ``torch.cdist`` + argmin.

Timings interleave the methods round by round and report medians, so machine noise hits all of them
alike. Run: ``bash scripts/bench.sh quantizers`` (installs vector-quantize-pytorch with --no-deps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from tokenkit import quantizers
from tokenkit.ops.nearest import nearest_code


def interleaved_medians(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (ms) of each function, the functions taking turns each round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def fwd_bwd(module: torch.nn.Module, x: torch.Tensor, kind: str) -> Callable[[], None]:
    def step() -> None:
        z = x.detach().requires_grad_(True)
        if kind == "tokenkit":
            out = module(z)
            quantized, loss = out.quantized, out.loss
        else:
            quantized, _, loss = module(z)
        (quantized.square().mean() + loss).backward()
        module.zero_grad(set_to_none=True)

    return step


def bench_forward_backward(rounds: int) -> None:
    torch.manual_seed(0)
    b, n, d, k = 64, 256, 64, 1024
    x = torch.randn(b, n, d)
    fns: dict[str, Callable[[], None]] = {}
    nearest = quantizers.create("nearest", dim=d, codebook_size=k).train()
    fns["tokenkit nearest"] = fwd_bwd(nearest, x, "tokenkit")
    if "ema" in quantizers.available():
        try:
            ema = quantizers.create("ema", dim=d, codebook_size=k).train()
            fns["tokenkit ema"] = fwd_bwd(ema, x, "tokenkit")
        except Exception as exc:  # a half-installed tree still benchmarks the rest
            print(f"(ema skipped: {exc})")
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        print("vector-quantize-pytorch is not installed: run `bash scripts/bench.sh quantizers`")
        peer = None
    else:
        peer = "vector-quantize-pytorch VectorQuantize"
        fns[peer] = fwd_bwd(VectorQuantize(dim=d, codebook_size=k).train(), x, "peer")
    med = interleaved_medians(fns, rounds)
    threads = torch.get_num_threads()
    print(f"\nforward+backward, x=({b}, {n}, {d}), K={k}, {threads} threads, median of {rounds}")
    print(f"| method | ms | vectors/s | speed-up vs {peer or 'peer'} |")
    print("|---|---|---|---|")
    for name, ms in med.items():
        ratio = f"{med[peer] / ms:.1f}x" if peer else "n/a"
        print(f"| {name} | {ms:.1f} | {b * n / ms * 1e3:.2e} | {ratio} |")


def bench_lookup(rounds: int, ks: list[int]) -> None:
    torch.manual_seed(0)
    n, d = 65536, 64
    x = torch.randn(n, d)
    print(f"\nnearest-neighbour lookup, N={n}, D={d}, {torch.get_num_threads()} threads, median of {rounds}")
    print("| K | method | ms | vectors/s | GFLOP/s | share of GEMM |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        codes = torch.randn(k, d)
        gemm_out = torch.empty(n, k)
        fns = {
            "plain GEMM mm(x, c^T, out=)": lambda c=codes, o=gemm_out: torch.mm(x, c.t(), out=o),
            "tokenkit nearest_code": lambda c=codes: nearest_code(x, c),
            "torch.cdist + argmin": lambda c=codes: torch.cdist(x, c).argmin(1),
        }
        med = interleaved_medians(fns, rounds)
        reference = torch.cdist(x[:4096].double(), codes.double()).argmin(1)
        agree = torch.equal(nearest_code(x[:4096], codes), reference)
        gemm = med["plain GEMM mm(x, c^T, out=)"]
        for name, ms in med.items():
            gflops = 2 * n * k * d / ms / 1e6
            print(f"| {k} | {name} | {ms:.1f} | {n / ms * 1e3:.2e} | {gflops:.0f} | {gemm / ms:.0%} |")
        print(f"| {k} | (nearest_code agrees with float64 cdist argmin on 4096 rows: {agree}) | | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_forward_backward(args.rounds)
    bench_lookup(args.rounds, [512, 1024, 8192])


if __name__ == "__main__":
    main()
